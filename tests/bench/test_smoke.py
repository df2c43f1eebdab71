"""Smoke test of ``python -m bench.run --quick``: the harness runs end to end on a tiny fleet (65 environments of
5 applications, one run of each figure) and writes a complete JSON document and a Markdown table.

No timing is asserted: the figures depend on the machine; ``docs/performance.md`` holds the real measurements.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.k8s_throughput import settled
from bench.report import FIGURE_FIELDS, check_targets, k8s_summary, missing_fields
from reconciler.core.plan import Phase
from reconciler.engine.reconcile import EnvOutcome
from tests.support.kube import KubeServer

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_run_writes_every_field(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), "--workdir", str(work)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    doc = json.loads((out / "results.json").read_text())
    assert missing_fields(doc) == []
    assert doc["options"]["quick"] is True
    [size] = doc["sizes"]
    assert size["environments"] == 65
    assert size["applications"] == 5
    assert size["units"] > 0 and size["files"] > 0
    for name, fields in FIGURE_FIELDS.items():
        figure = size["figures"][name]
        for field in fields:
            if field.endswith("_s") or field.endswith("_mb") or field == "ratio":
                value = figure[field]
                assert value is not None, f"{name}.{field} is None"
                if isinstance(value, list):
                    assert value and all(v > 0 for v in value), f"{name}.{field}: {value}"
                else:
                    assert value > 0, f"{name}.{field}: {value}"
    latency = size["figures"]["latency"]
    assert len(latency["samples_s"]) == len(latency["status_samples_s"]) == 3
    assert {t["target"] for t in doc["targets"]} >= {"incremental cycle / its floor",
                                                     "commit-to-live p95 (the whole stage)"}  # fmt: skip
    assert doc["kubernetes"]["status"] == "skipped"
    assert doc["machine"]["nproc"] >= 1

    table = (out / "results.md").read_text()
    for row in ("load + validate", "cold cycle", "no-op cycle, no drift check", "commit-to-live", "peak RSS"):
        assert row in table
    assert not work.exists() or not any(work.glob("fleet-*")), "scratch fleets are removed"


@pytest.mark.kube
@pytest.mark.timeout(300)
def test_kubernetes_throughput_runs_both_shapes_through_the_engine(kube_server: KubeServer) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.k8s_throughput", "--kubeconfig", str(kube_server.kubeconfig),
         "--environments", "2", "--apps", "3", "--runs", "1"],
        cwd=PROJECT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["shapes"]) == {"configmap", "realistic"}
    for shape, figures in result["shapes"].items():
        assert figures["via"] == "engine" and figures["failures"] == [], (shape, figures["failures"])
        assert isinstance(figures["retried"], list)
        server = figures["server_cpu_ms_per_app"]  # read from /proc, by the pids beside the test server's kubeconfig
        assert set(server) == {"cold", "floor_cold", "warm", "floor_warm", "kubectl_cold", "kubectl_warm"}, server
        assert figures["collisions"] == 0 and figures["unchanged_reapply_wrote_nothing"] is True
        assert figures["cold_apps_per_s"] > 0 and figures["floor_cold_apps_per_s"] > 0
        # beside kubectl apply --server-side per environment (a real kubectl against the same server)
        assert figures["kubectl_cold_apps_per_s"] > 0 and figures["kubectl_noop_apps_per_s"] > 0
        assert figures["cold_vs_kubectl"] > 0 and figures["noop_vs_kubectl"] > 0
    server_ms = [ms for f in result["shapes"].values() for ms in f["server_cpu_ms_per_app"].values()]
    assert sum(server_ms) > 0, server_ms  # (clock ticks of 10 ms: summed over every phase of both shapes)
    assert result["shapes"]["configmap"]["applications"] == 6
    targets = {t["target"]: t for t in check_targets([], {}, {"status": "ok", "result": result})}
    assert set(targets) == {
        f"Kubernetes {shape}: {what}"
        for shape in ("configmap", "realistic")
        for what in ("cold cycle / kubectl apply --server-side loop", "no-op cycle / kubectl's no-op re-apply")
    }
    cold = targets["Kubernetes configmap: cold cycle / kubectl apply --server-side loop"]
    assert cold["value"] == result["shapes"]["configmap"]["cold_vs_kubectl"]
    assert cold["ok"] is (cold["value"] >= 1.0)
    assert "configmap (one ~2 KB ConfigMap per application)" in k8s_summary({"result": result})


def outcome(phase: Phase, transient: bool = False) -> EnvOutcome:
    return EnvOutcome("e1", phase, "observe failed: HTTP 500" if phase is Phase.FAILED else "", {}, transient=transient)


@pytest.mark.parametrize(
    ("first", "runs", "noted"),
    [
        (outcome(Phase.SYNCED), 1, []),
        (outcome(Phase.FAILED, transient=True), 2, ["e1: observe failed: HTTP 500"]),  # the next cycle's retry
        (outcome(Phase.FAILED), 1, []),  # a refusal: reported as it is
    ],
)
def test_the_throughput_bench_runs_an_environment_again_after_a_transient_failure(
    first: EnvOutcome, runs: int, noted: list[str]
) -> None:
    answers = [first, outcome(Phase.SYNCED)]
    retried: list[str] = []
    result = settled(lambda: answers.pop(0), retried)
    assert (len(answers), retried) == (2 - runs, noted)
    assert result.phase is (Phase.SYNCED if runs == 2 else first.phase)


def test_the_kustomize_bench_fleet_is_the_example_with_overlays(tmp_path: Path) -> None:
    """bench/kustomize_cycles.py: every templated Kubernetes component (not the SOPS-encrypted one) becomes a base
    and 5 overlays, and the fleet still loads and renders."""
    import shutil

    from bench.kustomize_cycles import kustomized
    from reconciler.core.desired import render_unit
    from reconciler.core.loader import load_repo
    from reconciler.source.fstree import DirectoryTree
    from reconciler.source.kustomize import KubectlKustomize

    work = tmp_path / "fleet"
    shutil.copytree(Path(__file__).resolve().parents[2] / "examples" / "releases-repo", work)
    apps = kustomized(work)
    assert len(apps) == 39 and "annuaire-agents" not in apps  # (annuaire-agents has its own overlays already)
    tree = DirectoryTree.scan(work)
    result = load_repo(tree)
    assert result.ok and result.repo is not None, result.all_problems()[:3]
    repo = result.repo
    env = repo.environments["lille-dev"]
    app = repo.applications["gateway-api"]
    release = repo.releases[("gateway-api", repo.desired_versions(env)["gateway-api"])]
    unit = render_unit(repo, env, app, release, env.targets["kubernetes"], tree.read, KubectlKustomize())
    text = unit.files()["api/dev.yaml"].decode()
    assert f"image: {release.components['api'].image}" in text and "${" not in text


def test_the_notification_bench_configures_every_sink_the_config_accepts(tmp_path: Path) -> None:
    from bench.notify_cycles import Counter, notifications
    from reconciler.commands.common import load_config

    hook, chat = Counter(), Counter()
    section = notifications(tmp_path, hook, chat, 2525, tmp_path / "ca.pem", "http://127.0.0.1:9/")
    config = tmp_path / "controller.yaml"
    config.write_text(yaml.safe_dump({"apiVersion": "reconciler.io/v1", "kind": "ControllerConfig",
                                      "source": {"url": str(tmp_path)}, "targets": {}, "notifications": section}))  # fmt: skip
    loaded = load_config(str(config))
    assert {s["type"] for s in loaded.notifications["sinks"].values()} == {"webhook", "slack", "email"}
    assert loaded.notifications["commitStatuses"]["forge"] == "github"
    hook.server.shutdown()
    chat.server.shutdown()
