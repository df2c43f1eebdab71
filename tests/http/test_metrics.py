"""GET /metrics: valid for the real ``promtool``, scraped by a real Prometheus, following the fleet's phases, with
bounded label sets and no secrets."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from reconciler.core.plan import Phase
from reconciler.http.server import HttpServer
from reconciler.observability.metrics import PrometheusMetrics
from tests.engine import ENVIRONMENTS, Fleet
from tests.http import Served, poll, request, sample, served, switchable_agent
from tests.source import free_port

ALLOWED_LABELS = {"environment", "stage", "phase", "driver", "operation", "result", "reason", "revision", "le"}


def tool(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        pytest.fail(f"{name} is not installed: run ./dev deps (Debian package prometheus)")
    return found


def promtool_check(exposition: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([tool("promtool"), "check", "metrics"], input=exposition, capture_output=True, timeout=60)


def broken_fleet(fleet: Fleet) -> Path:
    """The fleet with its ``aix-lille`` host behind a switchable agent; returns the flag file that breaks it."""
    script, flag = switchable_agent(fleet)
    fleet.write_config(targetPatterns=[
        {"match": "aix-lille", "driver": "script", "timeout": "20s", "command": [str(script), "--root",
                                                                                  str(fleet.targets / "aix-lille")]},
        {"match": "*", "driver": "local", "path": str(fleet.targets / "${target}")},
    ])  # fmt: skip
    return flag


def phase_of(s: Served, env: str) -> dict[str, float | None]:
    text = s.get("/metrics").text
    stage = env.rsplit("-", 1)[1]
    return {
        str(p): sample(text, "reconciler_environment_phase", environment=env, stage=stage, phase=str(p)) for p in Phase
    }


def test_metrics_pass_promtool_and_follow_the_phases(fleet: Fleet) -> None:
    flag = broken_fleet(fleet)
    with served(fleet) as s:
        before = s.get("/metrics")
        assert before.status == 200 and before.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert promtool_check(before.body).returncode == 0
        s.controller.cycle()
        synced = phase_of(s, "lille-dev")
        assert synced["Synced"] == 1 and sum(v or 0 for v in synced.values()) == 1
        flag.touch()
        s.controller.cycle()
        failed = phase_of(s, "lille-dev")
        assert failed["Failed"] == 1 and failed["Synced"] == 0 and sum(v or 0 for v in failed.values()) == 1
        assert phase_of(s, "rennes-dev")["Synced"] == 1  # the others are untouched
        resp = s.get("/metrics")
        done = promtool_check(resp.body)
        assert done.returncode == 0, done.stdout + done.stderr
        text = resp.text
        head = fleet.upstream.head()
        assert sample(text, "reconciler_source_info", revision=head) == 1
        assert sample(text, "reconciler_source_revision_valid") == 1
        assert sample(text, "reconciler_reconciles_total", environment="lille-dev", result="Synced") == 1
        assert sample(text, "reconciler_reconciles_total", environment="lille-dev", result="Failed") == 1
        assert sample(text, "reconciler_reconcile_duration_seconds_count", environment="lille-dev") == 2
        assert sample(text, "reconciler_environments_blocked", reason="backoff") == 2  # lille-dev and -production
        assert sample(text, "reconciler_environments_blocked", reason="freeze") == 0
        assert sample(text, "reconciler_environments_blocked", reason="policy") == 0
        failures = sample(
            text, "reconciler_driver_operations_total", driver="script", operation="list", result="failure"
        )
        assert failures and failures >= 2
        assert (sample(text, "reconciler_driver_operations_total", driver="local", operation="apply", result="success")
                or 0) >= 5  # fmt: skip
        assert sample(text, "reconciler_git_fetches_total", result="success") == 2
        assert sample(text, "reconciler_git_fetch_duration_seconds_count") == 2
        assert sample(text, "reconciler_cycle_duration_seconds_count") == 2
        assert sample(text, "reconciler_status_pushes_total", result="success") == 2
        assert sample(text, "reconciler_commit_to_live_seconds_count", stage="dev") == 2  # lille-dev, rennes-dev
        assert sample(text, "reconciler_environment_drifted_applications", environment="rennes-dev") == 0
        applied = sample(text, "reconciler_environment_last_applied_timestamp_seconds", environment="rennes-dev")
        assert applied and applied > 1.7e9
        compressed = s.get("/metrics", headers={"Accept-Encoding": "gzip"})
        assert compressed.headers["content-encoding"] == "gzip"
        assert len(compressed.body) < len(resp.body) / 4
        assert gzip.decompress(compressed.body).count(b"\n") == resp.body.count(b"\n")


def test_drift_and_an_invalid_revision_show(fleet: Fleet) -> None:
    with served(fleet) as s:
        s.controller.cycle()
        good = fleet.upstream.head()
        deployed = fleet.targets / "k8s-ouest" / "rennes-production" / "ref" / "api" / "deployment.yaml"
        deployed.write_text(deployed.read_text() + "# hand edit\n")
        bad = fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: [3.10", "broken yaml")
        s.controller.cycle()
        text = s.get("/metrics").text
        assert sample(text, "reconciler_source_info", revision=bad) == 1
        assert sample(text, "reconciler_source_info", revision=good) is None  # one series: the old one is gone
        assert sample(text, "reconciler_source_revision_valid") == 0
        assert sample(text, "reconciler_environment_drifted_applications", environment="rennes-production") == 1
        fixed = fleet.edit("stages/dev.yaml", "ref: [3.10", "ref: 3.10", "fix")
        s.controller.cycle()
        text = s.get("/metrics").text
        assert sample(text, "reconciler_source_info", revision=fixed) == 1
        assert sample(text, "reconciler_source_revision_valid") == 1
        assert len([line for line in text.splitlines() if line.startswith("reconciler_source_info{")]) == 1


def test_labels_are_bounded_and_series_scale_with_environments(fleet: Fleet) -> None:
    with served(fleet) as s:
        s.controller.cycle()
        s.controller.cycle()
        text = s.get("/metrics").text
    names = set()
    per_environment: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("reconciler_"), family.name
        names.add(family.name)
        for found in family.samples:
            assert set(found.labels) <= ALLOWED_LABELS, (found.name, found.labels)
            if "environment" in found.labels:
                per_environment[found.labels["environment"]] = per_environment.get(found.labels["environment"], 0) + 1
    assert sorted(per_environment) == ENVIRONMENTS
    assert max(per_environment.values()) <= 30  # phases (7) + duration histogram (14) + results + gauges
    assert {"reconciler_environment_phase", "reconciler_commit_to_live_seconds", "reconciler_webhook_requests",
            "reconciler_driver_operations", "reconciler_source_info"} <= names  # fmt: skip


def test_series_of_a_removed_environment_go_away() -> None:
    from reconciler.engine.reconcile import EnvOutcome

    metrics = PrometheusMetrics()
    for name in ("a-dev", "b-dev"):
        metrics.environment(name, "dev", EnvOutcome(name, Phase.SYNCED, "", {}, duration=0.1))
    metrics.phases({"a-dev": ("dev", Phase.SYNCED), "b-dev": ("dev", Phase.SYNCED)}, {"b-dev": "unheard-of"})
    text = metrics.render().decode()
    assert sample(text, "reconciler_reconciles_total", environment="b-dev", result="Synced") == 1
    assert sample(text, "reconciler_environments_blocked", reason="policy") == 0  # an unknown reason adds nothing
    metrics.phases({"a-dev": ("dev", Phase.FAILED)}, {"a-dev": "backoff"})
    text = metrics.render().decode()
    assert "b-dev" not in text
    assert sample(text, "reconciler_environment_phase", environment="a-dev", stage="dev", phase="Failed") == 1
    assert sample(text, "reconciler_environments_blocked", reason="backoff") == 1
    metrics.revision("abc", True)
    metrics.revision(None, False)
    assert "reconciler_source_info{" not in metrics.render().decode()


def test_every_instance_has_its_own_registry(fleet: Fleet) -> None:
    first, second = PrometheusMetrics(), PrometheusMetrics()
    first.fetch(0.1, True)
    assert sample(first.render().decode(), "reconciler_git_fetches_total", result="success") == 1
    assert sample(second.render().decode(), "reconciler_git_fetches_total", result="success") == 0
    assert not [m for m in REGISTRY.collect() if m.name.startswith("reconciler_")]
    with served(fleet) as s:
        bare = HttpServer(s.controller, "127.0.0.1:0", metrics=None)
        bare.start()
        try:
            resp = request(bare.url, "/metrics")
            assert resp.status == 404 and resp.json() == {"error": "metrics are not enabled"}
        finally:
            bare.shutdown()


def test_a_real_prometheus_scrapes_the_phase_of_an_environment(fleet: Fleet, tmp_path: Path) -> None:
    flag = broken_fleet(fleet)
    prometheus = tool("prometheus")
    with served(fleet) as s:
        s.controller.cycle()
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "reconciler", "static_configs": [{"targets": [f"127.0.0.1:{s.server.address[1]}"]}]}],
        }))  # fmt: skip
        log = (tmp_path / "prometheus.log").open("wb")
        for _ in range(5):  # another process may take the free port first
            port = free_port()
            proc = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                     f"--web.listen-address=127.0.0.1:{port}"],
                                    stdout=log, stderr=log, start_new_session=True)  # fmt: skip
            url = f"http://127.0.0.1:{port}"

            def ready(proc: subprocess.Popen[bytes] = proc, url: str = url) -> bool | None:
                if proc.poll() is not None:
                    return None
                try:
                    return request(url, "/-/ready").status == 200
                except OSError:
                    return False

            try:
                poll(lambda: ready() is not False, "prometheus to start", timeout=60)
            except AssertionError:
                os.killpg(proc.pid, signal.SIGKILL)
                raise
            if proc.poll() is None:
                break
        else:
            pytest.fail((tmp_path / "prometheus.log").read_text()[-3000:])

        def value(phase: str) -> str | None:
            query = f'reconciler_environment_phase{{environment="lille-dev",phase="{phase}"}}'
            data = request(url, "/api/v1/query?" + urllib.parse.urlencode({"query": query})).json()
            result = data["data"]["result"]
            return result[0]["value"][1] if result else None

        try:
            poll(lambda: value("Synced") == "1", "prometheus to see lille-dev Synced", timeout=60)
            flag.touch()
            s.controller.cycle()
            poll(lambda: value("Failed") == "1" and value("Synced") == "0", "prometheus to see it Failed", timeout=60)
            targets = request(url, "/api/v1/targets").json()["data"]["activeTargets"]
            assert [t["health"] for t in targets] == ["up"], targets
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def test_the_fast_renderer_says_what_prometheus_client_says_and_scrapes_share_a_render(fleet: Fleet) -> None:
    from prometheus_client.exposition import generate_latest

    from reconciler.observability.metrics import render_text

    def families(text: bytes) -> list[tuple[str, str, str, list[tuple[str, tuple[tuple[str, str], ...], float]]]]:
        return sorted(
            (
                f.name,
                f.type,
                f.documentation,
                sorted((x.name, tuple(sorted(x.labels.items())), x.value) for x in f.samples),
            )
            for f in text_string_to_metric_families(text.decode())
        )

    flag = broken_fleet(fleet)
    with served(fleet) as s:
        s.controller.cycle()
        flag.touch()
        s.controller.cycle()
        s.metrics.revision('odd "revision"\\\nwith escapes', False)
        registry = s.metrics.registry
        assert families(render_text(registry)) == families(generate_latest(registry))
        first = s.metrics.render()
        assert s.metrics.render() is first  # concurrent or repeated scrapes within a second share one render
        s.metrics.driver_call("local", "apply", True, 0.1)
        assert s.metrics.render() is first  # driver calls show within cache_seconds...
        s.metrics.cycle(1.0)
        assert s.metrics.render() is not first  # ...and everything at the end of a cycle
        assert gzip.decompress(s.metrics.render(compressed=True)) == s.metrics.render()


def test_time_spent_degraded_and_since_when_a_phase_holds() -> None:
    """Issue 15: seconds each environment spent Degraded (a counter, valid for promtool) and when its current phase
    began; an environment removed from the releases repo loses its series."""
    now = [1_700_000_000.0]
    metrics = PrometheusMetrics(clock=lambda: now[0], cache_seconds=0)

    def at(seconds: float, phases: dict[str, Phase]) -> str:
        now[0] = 1_700_000_000.0 + seconds
        metrics.phases({name: (name.rsplit("-", 1)[1], phase) for name, phase in phases.items()}, {})
        body = metrics.render()
        assert promtool_check(body).returncode == 0
        return body.decode()

    def degraded(text: str, env: str) -> float | None:
        return sample(text, "reconciler_environment_degraded_seconds_total", environment=env)

    text = at(0, {"lille-dev": Phase.SYNCED, "rennes-dev": Phase.DEGRADED})
    assert degraded(text, "lille-dev") == 0 and degraded(text, "rennes-dev") == 0
    text = at(60, {"lille-dev": Phase.DEGRADED, "rennes-dev": Phase.DEGRADED})
    assert degraded(text, "rennes-dev") == 60 and degraded(text, "lille-dev") == 0
    assert sample(text, "reconciler_environment_phase_since_timestamp_seconds", environment="lille-dev") == now[0]
    assert sample(text, "reconciler_environment_phase_since_timestamp_seconds", environment="rennes-dev") == 1.7e9
    text = at(100, {"lille-dev": Phase.SYNCED, "rennes-dev": Phase.DEGRADED})
    assert degraded(text, "lille-dev") == 40 and degraded(text, "rennes-dev") == 100
    text = at(500, {"lille-dev": Phase.SYNCED})  # rennes-dev removed from the releases repo
    assert degraded(text, "lille-dev") == 40 and degraded(text, "rennes-dev") is None
