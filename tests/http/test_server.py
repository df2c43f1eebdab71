"""The HTTP server on loopback: probes, JSON API, routing, limits, the dashboard routes, logs, ``reconciler run``."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reconciler.http.server import HttpServer, parse_listen
from tests.engine import ENVIRONMENTS, Fleet
from tests.http import SECRETS, Response, configure, github_headers, loop, payload, poll, request, sample, served
from tests.source import free_port

SAFE_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}


def assert_safe_headers(resp: Response) -> None:
    assert {k: resp.headers.get(k) for k in SAFE_HEADERS} == SAFE_HEADERS, resp.headers


def test_healthz_and_the_security_headers_of_every_response(fleet: Fleet) -> None:
    with served(fleet) as s:
        resp = s.get("/healthz")
        assert (resp.status, resp.text, resp.headers["content-type"]) == (200, "ok\n", "text/plain; charset=utf-8")
        assert resp.headers["server"] == "reconciler"
        for method, path in [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/nope"), ("POST", "/metrics"),
                             ("GET", "/api/v1/environments"), ("GET", "/metrics"), ("POST", "/webhook"),
                             ("FOO", "/healthz"), ("HEAD", "/api/v1/environments")]:  # fmt: skip
            assert_safe_headers(request(s.url, path, method, b"" if method == "POST" else None))
        head = s.get("/api/v1/environments", method="HEAD")
        assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0


def test_readyz_says_why_it_is_not_ready(fleet: Fleet) -> None:
    configure(fleet, branch="main")
    with served(fleet) as s:
        resp = s.get("/readyz")
        assert resp.status == 503
        assert resp.text == "not ready: controller loop not running; source not fetched yet\n"
        s.controller.loop_running = True  # type: ignore[attr-defined]
        assert s.get("/readyz").text == "not ready: source not fetched yet\n"
        s.controller.loop_running = False  # type: ignore[attr-defined]
        with loop(s.controller):
            assert poll(lambda: s.get("/readyz").status == 200, "readiness")
            assert s.get("/readyz").text == "ok\n"
        resp = s.get("/readyz")
        assert (resp.status, resp.text) == (503, "not ready: controller loop not running\n")
        assert s.get("/healthz").status == 200  # alive though not ready


def test_the_api_lists_environments_with_the_revision_and_filters(fleet: Fleet) -> None:
    with served(fleet) as s:
        empty = s.get("/api/v1/environments").json()
        assert empty["environments"] == [] and empty["revision"] is None and empty["ready"] is False
        s.controller.cycle()
        resp = s.get("/api/v1/environments")
        assert resp.status == 200 and resp.headers["content-type"] == "application/json"
        data = resp.json()
        head = fleet.upstream.head()
        assert data["revision"] == head and data["lastGoodRevision"] == head and data["invalidRevision"] is None
        assert data["ready"] is True and data["cycles"] == 1 and data["count"] == 5
        assert sorted(e["name"] for e in data["environments"]) == ENVIRONMENTS
        lille = next(e for e in data["environments"] if e["name"] == "lille-dev")
        assert lille["phase"] == "Synced" and lille["stage"] == "dev" and lille["lastAppliedRevision"] == head
        assert lille["applications"]["ref"]["live"] == "3.10"

        def names(query: str) -> list[str]:
            return sorted(e["name"] for e in s.get(f"/api/v1/environments?{query}").json()["environments"])

        assert names("stage=dev") == ["lille-dev", "rennes-dev"]
        assert names("stage=dev&phase=Synced") == ["lille-dev", "rennes-dev"]
        assert names("phase=Failed") == [] and names("stage=nope") == []
        assert names("application=ref") == ENVIRONMENTS and names("application=nope") == []
        assert names("phase=Synced&unknown=1") == ENVIRONMENTS
        bad = s.get("/api/v1/environments?phase=Bogus")
        assert bad.status == 400 and "unknown phase 'Bogus'" in bad.json()["error"]
        too_many = s.get("/api/v1/environments?" + "&".join(f"k{i}=v" for i in range(60)))
        assert too_many.status == 400
        assert s.get("/api/v1/environments/").json()["count"] == 5


def test_one_environment_and_the_404s(fleet: Fleet) -> None:
    with served(fleet) as s:
        s.controller.cycle()
        env = s.get("/api/v1/environments/rennes-production")
        assert env.status == 200 and env.json()["name"] == "rennes-production" and env.json()["stage"] == "production"
        missing = s.get("/api/v1/environments/atlantis-dev")
        assert missing.status == 404 and missing.json() == {"error": "environment 'atlantis-dev' not found"}
        assert missing.headers["content-type"] == "application/json"
        assert s.get("/api/v1/environments/lille-dev/extra").status == 404
        assert s.get("/api/v1/environments/%2e%2e%2fmetrics").status == 404
        for path in ("/nope", "/api", "/api/v1", "/metrics/x", "/webhook/github", "/environments"):
            resp = s.get(path)
            assert resp.status == 404 and resp.json() == {"error": "not found"}, path


def test_wrong_methods_are_405_and_malformed_requests_400(fleet: Fleet) -> None:
    with served(fleet) as s:
        for method, path, allow in [("POST", "/metrics", "GET, HEAD"), ("DELETE", "/api/v1/environments", "GET, HEAD"),
                                    ("PUT", "/healthz", "GET, HEAD"), ("GET", "/webhook", "POST"),
                                    ("OPTIONS", "/", "GET, HEAD"), ("PATCH", "/environments/lille-dev", "GET, HEAD")]:  # fmt: skip
            resp = request(s.url, path, method, b"{}" if method in ("POST", "PUT", "PATCH") else None)
            assert resp.status == 405 and resp.headers["allow"] == allow, (method, path)
        assert request(s.url, "/healthz", "BREW").status == 501
        for raw in (
            b"GARBAGE\r\n\r\n",
            b"GET /healthz HTTP/9.9\r\n\r\n",
            b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        ):
            with socket.create_connection(s.server.address, timeout=10) as sock:
                sock.sendall(raw)
                answer = b"".join(iter(lambda: sock.recv(65536), b""))
            assert answer.split(b" ", 2)[1] in (b"200", b"400", b"414", b"505"), answer[:100]
            assert b"Cache-Control: no-store" in answer
        assert s.get("/healthz").status == 200


def test_a_slowloris_client_is_cut_off_while_reconciliation_goes_on(fleet: Fleet) -> None:
    with served(fleet, request_timeout=1.0) as s:
        result: dict[str, float] = {}

        def trickle() -> None:
            started = time.monotonic()
            with socket.create_connection(s.server.address, timeout=10) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                sent = 0
                while time.monotonic() - started < 15:
                    readable, _, _ = select.select([sock], [], [], 0.05)  # the client's pace: one byte per 50 ms
                    if readable:
                        try:
                            if not sock.recv(1024):
                                break
                        except ConnectionResetError:
                            break
                    try:
                        sock.send(b"X-Slow: " if sent % 8 == 0 else b"a")
                    except OSError:
                        break
                    sent += 1
            result["held"] = time.monotonic() - started

        client = threading.Thread(target=trickle)
        client.start()
        report = s.controller.cycle()  # not held up by the slow client
        assert set(report.outcomes) == set(ENVIRONMENTS)
        assert s.get("/healthz").status == 200
        client.join(timeout=30)
        assert 0.8 < result["held"] < 6.0, result  # the whole request is bounded, not each read


def test_connections_over_the_limit_are_refused_at_once(fleet: Fleet) -> None:
    with served(fleet, max_connections=2, request_timeout=5.0) as s:
        idle = [socket.create_connection(s.server.address, timeout=10) for _ in range(2)]
        try:
            started = time.monotonic()
            resp = s.get("/healthz")
            assert (resp.status, resp.text) == (503, "too many requests")
            assert_safe_headers(resp)
            assert time.monotonic() - started < 5
        finally:
            for sock in idle:
                sock.close()
        assert poll(lambda: s.get("/healthz").status == 200, "a free slot")


def test_the_dashboard_routes(fleet: Fleet) -> None:
    pytest.importorskip("reconciler.http.dashboard")
    with served(fleet) as s:
        s.controller.cycle()
        index = s.get("/?stage=dev")
        assert index.status == 200 and index.headers["content-type"] == "text/html; charset=utf-8"
        assert b"lille-dev" in index.body
        page = s.get("/environments/lille-dev")
        assert page.status == 200 and b"lille-dev" in page.body
        assert s.get("/environments/atlantis-dev").status == 404
        assert_safe_headers(page)
        stages = s.get("/stages")  # the stage view: applications x stages of the real controller
        assert stages.status == 200 and b'id="stages"' in stages.body and b'data-stage="production"' in stages.body
        api = s.get("/api/v1/environments").json()
        assert [x["name"] for x in api["stages"]] == ["dev", "production"] and api["commitUrl"] is None


def test_without_the_dashboard_the_rest_still_serves(fleet: Fleet) -> None:
    with served(fleet) as s:
        s.server.dashboard = None
        resp = s.get("/")
        assert resp.status == 503 and "/api/v1/environments" in resp.text
        assert s.get("/environments/lille-dev").status == 503 and s.get("/stages").status == 503
        assert s.get("/api/v1/environments").status == 200 and s.get("/metrics").status == 200


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":9000") == ("0.0.0.0", 9000)
    for bad in ("127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", "::1:80", ""):
        with pytest.raises(ValueError, match="invalid listen address"):
            parse_listen(bad)


def test_ipv6_loopback(fleet: Fleet) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with served(fleet) as s:
        server = HttpServer(s.controller, "[::1]:0", metrics=s.metrics)
        try:
            server.start()
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback: {exc}")
        try:
            assert server.url.startswith("http://[::1]:")
            conn = socket.create_connection(server.address, timeout=10)
            with conn:
                conn.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                assert b"".join(iter(lambda: conn.recv(4096), b"")).startswith(b"HTTP/1.0 200 ")
        finally:
            server.shutdown()


def test_secrets_never_reach_responses_metrics_or_logs(fleet: Fleet, http_logs: io.StringIO) -> None:
    password = "s3cr3t-t0ken-pw"
    fleet.write_config(source={"url": f"http://deploy:{password}@127.0.0.1:9/releases.git", "timeout": "5s"},
                       webhooks=dict(SECRETS))  # fmt: skip
    with served(fleet) as s:
        report = s.controller.cycle()
        assert report.source_error
        api = s.get("/api/v1/environments")
        assert api.json()["sourceError"] and "deploy:***@127.0.0.1" in api.json()["sourceError"]
        body = payload("gitlab-push.json")
        s.post("/webhook", body, {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRETS["gitlabToken"]})
        s.post("/webhook", body, {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRETS["gitlabToken"] + "x"})
        s.post("/webhook", body, github_headers(body))
        s.get(f"/api/v1/environments?token={SECRETS['githubSecret']}")
        s.get(f"/nope/{SECRETS['giteaSecret']}")
        pages = [s.get("/").body, s.get("/environments/lille-dev").body]  # the dashboard, when present
        everything = [api.body, *pages, s.get("/metrics").body, s.get("/readyz").body, http_logs.getvalue().encode()]
    for secret in (password, *SECRETS.values()):
        for text in everything:
            assert secret.encode() not in text, secret
    events = [json.loads(line) for line in http_logs.getvalue().splitlines()]
    assert any(e["event"] == "source fetch failed; serving the last good revision" for e in events)


def test_logs_carry_environment_revision_and_webhook_fields(fleet: Fleet, http_logs: io.StringIO) -> None:
    configure(fleet)
    with served(fleet) as s:
        s.controller.cycle()
        s.get("/api/v1/environments/lille-dev")
        body = payload("github-push-new-branch.json")
        s.post("/webhook", body, github_headers(body))
    events = [json.loads(line) for line in http_logs.getvalue().splitlines()]
    loaded = [e for e in events if e["event"] == "revision loaded"]
    assert loaded and loaded[0]["revision"] == fleet.upstream.head()[:12]
    access = [e for e in events if e["event"] == "http request"]
    env_hit = next(e for e in access if e["path"] == "/api/v1/environments/lille-dev")
    assert env_hit["environment"] == "lille-dev" and env_hit["status"] == 200 and env_hit["method"] == "GET"
    hook = next(e for e in events if e["event"] == "webhook")
    assert (hook["forge"], hook["webhook_event"], hook["result"], hook["status"]) == ("github", "push", "accepted", 202)
    assert all(isinstance(e["duration_ms"], float) and e["client"] == "127.0.0.1" for e in access)


def test_reconciler_run_serves_http_until_sigterm(fleet: Fleet) -> None:
    port = free_port()
    fleet.write_config(listen=f"127.0.0.1:{port}", webhooks=dict(SECRETS))
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "run", "--config", str(fleet.config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip

    def synced() -> bool:
        assert proc.poll() is None, proc.communicate()
        try:
            data = request(url, "/api/v1/environments").json()
        except OSError:
            return False
        return data["count"] == 5 and all(e["phase"] == "Synced" for e in data["environments"])

    try:
        poll(synced, "reconciler run to serve a synced fleet", timeout=60)
        phase = {"environment": "lille-dev", "stage": "dev", "phase": "Synced"}
        poll(lambda: sample(request(url, "/metrics").text, "reconciler_environment_phase", **phase), "phase metrics")
        ready = request(url, "/readyz")
        assert (ready.status, ready.text) == (200, "ok\n")
        body = payload("github-push-tag-deleted.json")
        assert request(url, "/webhook", "POST", body, github_headers(body)).status == 200
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert b"Traceback" not in err
    assert b"http server listening" in err and b"http server stopped" in err
    assert SECRETS["githubSecret"].encode() not in err


def test_reconciler_run_on_a_busy_port_fails_cleanly(fleet: Fleet, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        fleet.write_config(listen=f"127.0.0.1:{busy.getsockname()[1]}")
        done = subprocess.run([sys.executable, "-m", "reconciler", "run", "--config", str(fleet.config)],
                              capture_output=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert b"cannot listen on 127.0.0.1:" in done.stderr and b"Address already in use" in done.stderr
    assert b"choose another with `listen:` in the config, or --listen for the demo" in done.stderr  # issue 18
    assert b"Traceback" not in done.stderr


def test_large_pages_are_gzipped_for_clients_that_accept_it(fleet: Fleet) -> None:
    import gzip

    with served(fleet) as s:
        s.controller.cycle()
        plain = request(s.url, "/api/v1/environments")
        packed = request(s.url, "/api/v1/environments", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in plain.headers and len(plain.body) > 4096
    assert packed.headers["content-encoding"] == "gzip" and packed.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(packed.body) == plain.body and len(packed.body) < len(plain.body) / 3
