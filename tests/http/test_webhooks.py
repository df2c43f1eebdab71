"""POST /webhook on the real server with the forges' real payloads: authentication, triggering, limits, fuzzing."""

from __future__ import annotations

import io
import json
import random
import select
import socket
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from reconciler.http.webhooks import SecretError, WebhookSecrets, resolve_secret
from reconciler.observability import logging as logs
from tests.engine import Fleet
from tests.engine.test_controller import NEW_REF_RELEASE
from tests.http import (
    SECRETS,
    configure,
    gitea_headers,
    github_headers,
    gitlab_headers,
    loop,
    payload,
    poll,
    served,
)

MB = 1024 * 1024
PUSH = "github-push-new-branch.json"


def webhook_count(metrics: Any, result: str) -> float:
    value = metrics.registry.get_sample_value("reconciler_webhook_requests_total", {"result": result})
    return float(value or 0.0)


def raw_exchange(address: tuple[str, int], data: bytes, half_close: bool = True, timeout: float = 10.0) -> bytes:
    """Send raw bytes, optionally half-close, and read the whole response until the server closes."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def stream_until_answered(address: tuple[str, int], head: bytes, total: int, chunked: bool) -> tuple[bytes, int, float]:
    """Send ``head`` then up to ``total`` body bytes as fast as the server takes them, stopping as soon as an answer
    arrives. Returns (response, body bytes sent, seconds until the answer)."""
    started = time.monotonic()
    block = b"\0" * 65536
    frame = b"%x\r\n" % len(block) + block + b"\r\n" if chunked else block
    sent = 0
    response = b""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        deadline = started + 20
        pending = memoryview(frame)
        while time.monotonic() < deadline:
            want_write = [sock] if sent < total else []
            readable, writable, _ = select.select([sock], want_write, [], 0.5)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                response += data
                if not data or b"\r\n\r\n" in response:
                    break
            if writable:
                try:
                    n = sock.send(pending)
                except (BlockingIOError, InterruptedError):
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    want_write = []
                    continue
                sent += n
                pending = pending[n:] or memoryview(frame)
        elapsed = time.monotonic() - started
        sock.setblocking(True)
        sock.settimeout(5)
        try:
            while data := sock.recv(65536):
                response += data
        except OSError:
            pass
    return response, sent, elapsed


@pytest.mark.parametrize(
    ("name", "headers"),
    [
        ("github", lambda body: github_headers(body)),
        ("gitlab", lambda body: gitlab_headers()),
        ("gitea", lambda body: gitea_headers(body)),
        ("forgejo", lambda body: gitea_headers(body, forgejo=True)),
    ],
)
def test_a_signed_push_to_the_tracked_branch_triggers_a_fetch(fleet: Fleet, name: str, headers: Any) -> None:
    configure(fleet)
    body = payload({"github": PUSH, "gitlab": "gitlab-push.json"}.get(name, "gitea-push.json"))
    with served(fleet) as s:
        assert not s.controller.wake.is_set()
        resp = s.post("/webhook", body, headers(body))
        assert resp.status == 202, resp.body
        assert resp.json() == {"status": "accepted", "message": "fetch of refs/heads/master triggered"}
        assert s.controller.wake.is_set()  # only a trigger: nothing else of the payload is used
        assert s.controller.cycles == 0 and s.controller.head is None
        assert webhook_count(s.metrics, "accepted") == 1


def test_pushes_to_other_refs_events_and_pings_do_not_trigger(fleet: Fleet) -> None:
    configure(fleet, branch="main")
    with served(fleet) as s:
        push = payload(PUSH)  # refs/heads/master: not the tracked main
        resp = s.post("/webhook", push, github_headers(push))
        assert resp.status == 200 and resp.json()["status"] == "ignored"
        assert "'refs/heads/master' is not the tracked refs/heads/main" in resp.json()["message"]
        tag = payload("github-push-tag-deleted.json")
        resp = s.post("/webhook", tag, github_headers(tag))
        assert resp.status == 200 and "refs/tags/simple-tag" in resp.json()["message"]
        ping = payload("github-ping.json")
        resp = s.post("/webhook", ping, github_headers(ping, event="ping"))
        assert resp.status == 200 and resp.json() == {"status": "pong", "message": "pong"}
        resp = s.post("/webhook", push, github_headers(push, event="issues"))
        assert resp.status == 200 and "'issues' events do not trigger" in resp.json()["message"]
        gitlab = payload("gitlab-push.json")
        resp = s.post("/webhook", gitlab, {"X-Gitlab-Token": SECRETS["gitlabToken"]})  # no X-Gitlab-Event
        assert resp.status == 400 and "missing event header" in resp.json()["message"]
        assert not s.controller.wake.is_set()
        assert webhook_count(s.metrics, "ignored") == 3 and webhook_count(s.metrics, "ping") == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=zz"},
        {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=\u00e9\u00e8"},
        {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "gl-hook-token-567"},
        {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": ""},
        {"X-Gitea-Event": "push", "X-Gitea-Signature": "not-hex"},
        {"X-Forgejo-Event": "push", "X-Forgejo-Signature": ""},
    ],
    ids=["none", "wrong-hmac", "garbage", "non-ascii", "wrong-token", "empty-token", "gitea-garbage", "forgejo-empty"],
)
def test_a_missing_or_bad_signature_is_refused(fleet: Fleet, headers: dict[str, str]) -> None:
    configure(fleet)
    body = payload(PUSH)
    with served(fleet) as s:
        resp = s.post("/webhook", body, headers)
        assert resp.status == 401, resp.body
        assert resp.json()["status"] == "error"
        assert not any(secret.encode() in resp.body for secret in SECRETS.values())
        assert not s.controller.wake.is_set()
        assert webhook_count(s.metrics, "unauthorized") == 1


def test_a_signature_of_another_body_or_secret_is_refused(fleet: Fleet) -> None:
    configure(fleet)
    body = payload(PUSH)
    with served(fleet) as s:
        for headers in (
            github_headers(body + b" "),
            github_headers(body, secret=SECRETS["giteaSecret"]),
            gitea_headers(body, secret=SECRETS["githubSecret"]),
            gitea_headers(body.replace(b"master", b"main")),
        ):
            resp = s.post("/webhook", body, headers)
            assert resp.status == 401 and "invalid" in resp.json()["message"]
        assert not s.controller.wake.is_set()


def test_a_forge_without_a_configured_secret_is_refused(fleet: Fleet) -> None:
    configure(fleet, webhooks={"githubSecret": SECRETS["githubSecret"]})
    body = payload("gitlab-push.json")
    with served(fleet) as s:
        resp = s.post("/webhook", body, gitlab_headers())
        assert resp.status == 401
        assert resp.json()["message"] == "gitlab webhooks are not enabled (no webhooks.gitlabToken configured)"
        resp = s.post("/webhook", body, gitea_headers(body, secret=""))
        assert resp.status == 401 and "gitea webhooks are not enabled" in resp.json()["message"]
        assert not s.controller.wake.is_set()


def test_secrets_given_as_env_or_file_references_are_resolved_and_redacted(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_GITHUB_HOOK_SECRET", "from-the-environment-42")
    token = tmp_path / "gitlab-token"
    token.write_text("from-a-mounted-file-77\n")
    configure(fleet, webhooks={"githubSecret": "env:TEST_GITHUB_HOOK_SECRET", "gitlabToken": f"file:{token}"})
    body = payload(PUSH)
    with served(fleet) as s:
        assert s.post("/webhook", body, github_headers(body, secret="env:TEST_GITHUB_HOOK_SECRET")).status == 401
        assert s.post("/webhook", body, github_headers(body, secret="from-the-environment-42")).status == 202
        assert s.post("/webhook", body, gitlab_headers(token="from-a-mounted-file-77")).status == 202
    # build_controller registered the resolved values: they can never be logged
    redacted = logs.redact_text("from-the-environment-42 and from-a-mounted-file-77")
    assert redacted == "*** and ***"


def test_resolve_secret(tmp_path: Path) -> None:
    assert resolve_secret(None) is None and resolve_secret("") is None
    assert resolve_secret("plain-secret") == "plain-secret"
    assert resolve_secret("env:HOOK", {"HOOK": " s3cret \n"}) == "s3cret"
    with pytest.raises(SecretError, match="environment variable 'MISSING' is not set"):
        resolve_secret("env:MISSING", {})
    with pytest.raises(SecretError, match="environment variable '' is not set"):
        resolve_secret("env:", {})
    good = tmp_path / "secret"
    good.write_text("  file-secret\n")
    assert resolve_secret(f"file:{good}") == "file-secret"
    with pytest.raises(SecretError, match=r"cannot read secret file .*No such file"):
        resolve_secret(f"file:{tmp_path / 'absent'}")
    with pytest.raises(SecretError, match="cannot read secret file"):
        resolve_secret(f"file:{tmp_path}")  # a directory
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(SecretError, match="larger than"):
        resolve_secret(f"file:{big}")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe secret-bytes")
    with pytest.raises(SecretError, match="not UTF-8") as info:
        resolve_secret(f"file:{binary}")
    assert "secret-bytes" not in str(info.value)
    secrets = WebhookSecrets.from_config({"githubSecret": "env:NOPE", "gitlabToken": "tok-1234", "maxBodyBytes": 4096})
    assert secrets.values() == ["tok-1234"]
    assert secrets.problems == (
        "webhooks.githubSecret: environment variable 'NOPE' is not set; github webhooks are refused",
    )


def test_an_unresolvable_secret_refuses_that_forge_and_is_reported(fleet: Fleet, http_logs: io.StringIO) -> None:
    configure(fleet, webhooks={"githubSecret": "env:TEST_HOOK_NOT_SET", "gitlabToken": SECRETS["gitlabToken"]})
    body = payload(PUSH)
    with served(fleet) as s:
        assert s.post("/webhook", body, github_headers(body, secret="")).status == 401
        assert s.post("/webhook", payload("gitlab-push.json"), gitlab_headers()).status == 202
    events = [json.loads(line) for line in http_logs.getvalue().splitlines()]
    errors = [e for e in events if e["event"] == "webhook secret unavailable"]
    assert errors and "TEST_HOOK_NOT_SET" in errors[0]["problem"] and errors[0]["level"] == "error"


def test_the_configured_size_limit_applies(fleet: Fleet) -> None:
    configure(fleet, webhooks={**SECRETS, "maxBodyBytes": 4096})
    with served(fleet) as s:
        big = payload(PUSH)  # 8.8 kB
        resp = s.post("/webhook", big, github_headers(big))
        assert resp.status == 413 and "over the limit of 4096 bytes" in resp.json()["message"]
        small = payload("gitlab-push.json")  # 2.3 kB
        assert s.post("/webhook", small, gitlab_headers()).status == 202


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_100_mb_body_is_refused_quickly_with_bounded_memory(fleet: Fleet, chunked: bool) -> None:
    configure(fleet)
    total = 100 * MB
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    head = (
        f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}\r\nX-GitHub-Event: push\r\n"
        f"X-Hub-Signature-256: sha256={'0' * 64}\r\nContent-Type: application/json\r\n\r\n"
    ).encode()
    with served(fleet) as s:
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            response, sent, elapsed = stream_until_answered(s.server.address, head, total, chunked)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.startswith(b"HTTP/1.0 413 "), response[:200]
        assert b"no-store" in response and b"nosniff" in response
        print(f"100 MB ({'chunked' if chunked else 'Content-Length'}): 413 after {elapsed * 1000:.0f} ms, "
              f"{sent / MB:.1f} MB sent, tracemalloc peak {peak / MB:.2f} MB")  # fmt: skip
        assert elapsed < 5.0
        assert sent < 20 * MB  # the server stopped taking it long before 100 MB
        assert peak < 8 * MB  # never buffered: at most the 1 MiB limit plus a few read buffers
        assert s.get("/healthz").status == 200
        assert webhook_count(s.metrics, "too_large") == 1


RANDOM = random.Random(20240301)
VALID = payload(PUSH)
FUZZ: list[bytes] = [
    b"",
    b"   ",
    VALID[: len(VALID) // 2],
    VALID.rstrip()[:-1],
    VALID + b"}",
    VALID.replace(b"{", b"[", 1),
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"ref": ' + b"9" * 100_000 + b"}",
    b'{"ref": 1e999999}',
    b"null",
    b"[]",
    b'"refs/heads/master"',
    b"12345",
    b'{"ref": 5}',
    b'{"ref": ["refs/heads/master"]}',
    b'{"ref": null}',
    b'{"ref": {"name": "refs/heads/master"}}',
    b"{}",
    b'{"ref": "refs/heads/master"',
    b"\xff\xfe\x00{\x00}",
    b'{"ref": "refs/heads/\xff"}',
    b"\x00" * 1000,
    *(RANDOM.randbytes(n) for n in (1, 7, 64, 1000, 100_000)),
]


def test_fuzzed_payloads_are_answered_400_and_the_server_stays_up(fleet: Fleet) -> None:
    configure(fleet)
    with served(fleet) as s:
        for i, body in enumerate(FUZZ):
            resp = s.post("/webhook", body, github_headers(body))
            assert resp.status == 400, (i, body[:60], resp.body)
            assert resp.json()["status"] == "error" and resp.json()["message"]
        for body in FUZZ[:5]:  # the same through the other forges' paths
            assert s.post("/webhook", body, gitlab_headers()).status == 400
            assert s.post("/webhook", body, gitea_headers(body)).status == 400
        assert not s.controller.wake.is_set()
        assert s.get("/healthz").status == 200
        assert webhook_count(s.metrics, "bad_request") == len(FUZZ) + 10


def test_malformed_framing_is_answered_400(fleet: Fleet) -> None:
    configure(fleet)
    sig = github_headers(VALID)["X-Hub-Signature-256"]
    base = f"POST /webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-Hub-Signature-256: {sig}\r\n"
    with served(fleet) as s:
        cases = [
            ("Content-Length: abc", b""),
            ("Content-Length: -1", b""),
            ("Content-Length: 100", b"short"),  # the client closes before Content-Length bytes
            ("Transfer-Encoding: chunked", b"zz\r\nabc\r\n0\r\n\r\n"),
            ("Transfer-Encoding: chunked", b"3\r\nabcXY0\r\n\r\n"),
            ("Transfer-Encoding: chunked", b"0x3\r\nabc\r\n0\r\n\r\n"),
            ("Transfer-Encoding: chunked", b"3\r\nabc\r\n0\r\n" + b"X-Trailer: 1\r\n" * 40 + b"\r\n"),
        ]
        for framing, body in cases:
            response = raw_exchange(s.server.address, f"{base}{framing}\r\n\r\n".encode() + body)
            assert response.startswith(b"HTTP/1.0 400 "), (framing, body[:20], response[:300])
        chunked = b"".join(
            b"%x\r\n%s\r\n" % (len(VALID[i : i + 1000]), VALID[i : i + 1000]) for i in range(0, len(VALID), 1000)
        )
        response = raw_exchange(
            s.server.address, (base + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunked + b"0\r\nX-T: 1\r\n\r\n"
        )
        assert response.startswith(b"HTTP/1.0 202 "), response[:300]
        http10 = f"POST /webhook HTTP/1.0\r\nX-GitHub-Event: push\r\nX-Hub-Signature-256: {sig}\r\n\r\n".encode()
        assert raw_exchange(s.server.address, http10 + VALID).startswith(b"HTTP/1.0 202 ")  # body ends at close
        assert raw_exchange(s.server.address, http10 + b"x" * (MB + 1)).startswith(b"HTTP/1.0 413 ")
        assert s.get("/healthz").status == 200


def test_a_body_that_does_not_arrive_in_time_is_answered_408(fleet: Fleet) -> None:
    configure(fleet)
    sig = github_headers(VALID)["X-Hub-Signature-256"]
    with served(fleet, request_timeout=1.0) as s:
        started = time.monotonic()
        response = raw_exchange(
            s.server.address,
            f"POST /webhook HTTP/1.1\r\nContent-Length: 100\r\nX-GitHub-Event: push\r\nX-Hub-Signature-256: {sig}"
            "\r\n\r\n0123456789".encode(),
            half_close=False,
        )
        assert response.startswith(b"HTTP/1.0 408 "), response[:200]
        assert time.monotonic() - started < 5
        assert webhook_count(s.metrics, "timeout") == 1


def test_a_burst_of_webhooks_during_a_cycle_coalesces_into_one_fetch_and_none_is_lost(fleet: Fleet) -> None:
    configure(fleet)
    with served(fleet) as s:
        controller = s.controller
        fetches: list[float] = []
        gate = threading.Event()
        gate.set()
        real_fetch = controller.source.fetch

        def counted_fetch() -> str:
            assert gate.wait(60), "the test never released the fetch"
            fetches.append(time.monotonic())
            return real_fetch()

        controller.source.fetch = counted_fetch  # type: ignore[method-assign]
        idle = threading.Event()

        class Wake(threading.Event):  # tells when the loop sleeps, waiting for the next trigger
            def wait(self, timeout: float | None = None) -> bool:
                idle.set()
                try:
                    return super().wait(timeout)
                finally:
                    idle.clear()

        wake = Wake()
        controller.wake = wake
        with loop(controller, wake):
            poll(lambda: idle.is_set() and controller.cycles == 1, "the first cycle")
            assert s.get("/readyz").status == 200
            fleet.commit({"releases/ref/3.11.yaml": NEW_REF_RELEASE})
            fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: 3.11")
            fleet.upstream.push("master")
            head = fleet.upstream.head()
            before = len(fetches)
            gate.clear()  # the fetch the first webhook starts is held until every webhook is answered
            body = payload(PUSH)
            with ThreadPoolExecutor(max_workers=20) as pool:
                statuses = list(pool.map(lambda _: s.post("/webhook", body, github_headers(body)).status, range(20)))
            assert statuses == [202] * 20
            started = time.monotonic()
            assert s.get("/api/v1/environments").status == 200  # requests are served while a cycle runs
            assert time.monotonic() - started < 5
            gate.set()
            poll(lambda: idle.is_set() and not wake.is_set() and controller.head == head, "the burst to be consumed")
            triggered = len(fetches) - before
            assert 1 <= triggered <= 2, f"{triggered} fetches for one burst of 20 webhooks"
            env = s.get("/api/v1/environments/lille-dev").json()
            assert env["applications"]["ref"]["live"] == "3.11" and env["lastAppliedRevision"] == head
            assert webhook_count(s.metrics, "accepted") == 20
