"""Health through the kubernetes driver (real API server; rollouts simulated through the status subresource, since
no kube-controller-manager runs) and the engine reconciling environments on Kubernetes targets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.state import Health
from reconciler.drivers.k8s_api import MERGE_PATCH, KubeApi
from reconciler.drivers.k8s_health import assess
from reconciler.drivers.kubernetes import KubernetesDriver
from tests.drivers import k8s_support, wait_until
from tests.drivers.k8s_support import (
    cm_path,
    configmap,
    crd,
    deployment,
    driver_for,
    unit,
)
from tests.engine import ENVIRONMENTS, Fleet
from tests.support.kube import KubeServer

api = k8s_support.api  # fixture
driver = k8s_support.driver  # fixture
ns = k8s_support.ns  # fixture


def set_status(api: KubeApi, path: str, status: dict[str, Any]) -> None:
    api.request("PATCH", f"{path}/status", body={"status": status}, content_type=MERGE_PATCH)


def rolled_out(api: KubeApi, path: str, replicas: int) -> None:
    generation = (api.get(path) or {})["metadata"]["generation"]
    counts = {k: replicas for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")}
    set_status(api, path, {"observedGeneration": generation, **counts,
                           "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]})  # fmt: skip


def test_deployment_health_progressing_healthy_degraded(driver: KubernetesDriver, api: KubeApi, ns: str) -> None:
    assert driver.health(ns, "shop") == driver.health(ns, "shop") and driver.health(ns, "shop").status is Health.MISSING
    driver.apply(unit(ns, {"a.yaml": configmap("settings", x="1") + b"---\n" + deployment("web", replicas=3)}))
    report = driver.health(ns, "shop")
    assert report.status is Health.PROGRESSING
    assert report.message == f"Deployment/{ns}/web: waiting for the rollout to be observed"
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/web"
    rolled_out(api, path, 1)
    assert driver.health(ns, "shop").message == f"Deployment/{ns}/web: 1 of 3 replicas updated"
    rolled_out(api, path, 3)
    assert driver.health(ns, "shop").status is Health.HEALTHY
    deadline = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "web-5d4f" has timed out progressing.'}  # fmt: skip
    set_status(api, path, {"conditions": [deadline]})
    report = driver.health(ns, "shop")
    assert report.status is Health.DEGRADED and "progress deadline" in report.message and "timed out" in report.message
    api.request("DELETE", cm_path(ns, "settings"))
    report = driver.health(ns, "shop")
    assert report.status is Health.DEGRADED and f"ConfigMap/{ns}/settings: missing" in report.message


def test_progressing_past_the_health_timeout_is_degraded(kube_server: KubeServer, api: KubeApi, ns: str) -> None:
    driver = driver_for(kube_server, healthTimeout="1s")
    driver.apply(unit(ns, {"d.yaml": deployment("web")}))
    assert driver.health(ns, "shop").status is Health.PROGRESSING
    wait_until(lambda: driver.health(ns, "shop").status is Health.DEGRADED, timeout=15, what="Degraded")
    message = driver.health(ns, "shop").message
    assert "after apply (healthTimeout)" in message and "waiting for the rollout to be observed" in message
    restarted = driver_for(kube_server, healthTimeout="1s")  # the apply time is in the inventory
    assert restarted.health(ns, "shop").status is Health.DEGRADED
    rolled_out(api, f"/apis/apps/v1/namespaces/{ns}/deployments/web", 2)
    assert restarted.health(ns, "shop").status is Health.HEALTHY


def test_job_and_crd_health(driver: KubernetesDriver, api: KubeApi, ns: str) -> None:
    job = b"""apiVersion: batch/v1
kind: Job
metadata: {name: migrate}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: m, image: registry.example.org/migrate:1}]
"""
    driver.apply(unit(ns, {"crd.yaml": crd(f"{ns}.example.org"), "job.yaml": job}))
    assert driver.health(ns, "shop").message == f"Job/{ns}/migrate: job running"  # the CRD is Established
    path = f"/apis/batch/v1/namespaces/{ns}/jobs/migrate"
    set_status(api, path, {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]})
    report = driver.health(ns, "shop")
    assert report.status is Health.DEGRADED and "job failed: BackoffLimitExceeded" in report.message
    set_status(api, path, {"conditions": [{"type": "Complete", "status": "True"}]})
    assert driver.health(ns, "shop").status is Health.HEALTHY


def _cond(kind: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "status": status, **extra}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"generation": 2},
          "spec": {"replicas": 3}, "status": {"observedGeneration": 1}}, Health.PROGRESSING),
        ({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"generation": 1}, "spec": {"replicas": 2},
          "status": {"observedGeneration": 1, "updatedReplicas": 2, "readyReplicas": 1, "currentRevision": "a",
                     "updateRevision": "a"}}, Health.PROGRESSING),
        ({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"generation": 1}, "spec": {"replicas": 2},
          "status": {"observedGeneration": 1, "updatedReplicas": 2, "readyReplicas": 2, "currentRevision": "a",
                     "updateRevision": "a"}}, Health.HEALTHY),
        ({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"generation": 1},
          "status": {"observedGeneration": 1, "desiredNumberScheduled": 4, "updatedNumberScheduled": 4,
                     "numberAvailable": 3}}, Health.PROGRESSING),
        ({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"generation": 1},
          "status": {"observedGeneration": 1, "desiredNumberScheduled": 4, "updatedNumberScheduled": 4,
                     "numberAvailable": 4}}, Health.HEALTHY),
        ({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "status": {"phase": "Pending"}}, Health.PROGRESSING),
        ({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "status": {"phase": "Lost"}}, Health.DEGRADED),
        ({"apiVersion": "v1", "kind": "Pod", "status": {"phase": "Failed"}}, Health.DEGRADED),
        ({"apiVersion": "v1", "kind": "Pod", "status": {"phase": "Running", "conditions": [_cond("Ready", "True")]}},
         Health.HEALTHY),
        ({"apiVersion": "v1", "kind": "Service", "spec": {"type": "LoadBalancer"}}, Health.PROGRESSING),
        ({"apiVersion": "v1", "kind": "Service", "spec": {"type": "LoadBalancer"},
          "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}}, Health.HEALTHY),
        ({"apiVersion": "example.org/v1", "kind": "Db", "status": {"conditions": [_cond("Ready", "False")]}},
         Health.DEGRADED),
        ({"apiVersion": "example.org/v1", "kind": "Db", "status": {"conditions": [_cond("Stalled", "True")]}},
         Health.DEGRADED),
        ({"apiVersion": "example.org/v1", "kind": "Db", "status": {"conditions": [_cond("Reconciling", "True")]}},
         Health.PROGRESSING),
        ({"apiVersion": "example.org/v1", "kind": "Db", "status": {"conditions": [_cond("Available", "Unknown")]}},
         Health.PROGRESSING),
        ({"apiVersion": "example.org/v1", "kind": "Db", "metadata": {"generation": 3},
          "status": {"observedGeneration": 2, "conditions": [_cond("Ready", "True")]}}, Health.PROGRESSING),
        ({"apiVersion": "example.org/v1", "kind": "Db", "status": {"conditions": [_cond("Ready", "True")]}},
         Health.HEALTHY),
        ({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
          "status": {"conditions": [_cond("NamesAccepted", "False")]}}, Health.DEGRADED),
        ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"generation": 1}, "spec": {"paused": True},
          "status": {"observedGeneration": 1}}, Health.HEALTHY),
        ({"apiVersion": "v1", "kind": "ConfigMap"}, Health.HEALTHY),
    ],
)  # fmt: skip
def test_assess_reads_workload_status(obj: dict[str, Any], expected: Health) -> None:
    status, message = assess(obj)
    assert status is expected
    assert (message == "") == (status is Health.HEALTHY) or obj["kind"] == "Deployment"


def test_a_failing_environment_does_not_stop_the_others(kube_server: KubeServer, fleet: Fleet, api: KubeApi) -> None:
    """The small fleet with its ``k8s-*`` targets on the test API server; rennes-dev's namespace does not exist."""
    namespaces = {"lille-dev", "lille-production", "rennes-production", "shared"}
    existing = {i["metadata"]["name"] for i in api.request("GET", "/api/v1/namespaces")["items"]}
    for name in sorted(namespaces - existing):
        api.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})
    assert "rennes-dev" not in existing
    agent = Path(__file__).resolve().parents[2] / "examples" / "targets" / "aix-agent"
    fleet.write_config(targetPatterns=[
        {"match": "k8s-*", "driver": "kubernetes", "kubeconfig": str(kube_server.kubeconfig), "healthTimeout": "1m"},
        {"match": "aix-*", "driver": "script", "timeout": "20s",
         "command": [sys.executable, str(agent), "--root", str(fleet.targets / "${target}")]},
    ])  # fmt: skip
    assert fleet.once() == 1
    phases = {env: fleet.env_status(env)["phase"] for env in ENVIRONMENTS}
    assert phases == {env: "Failed" if env == "rennes-dev" else "Synced" for env in ENVIRONMENTS}, phases
    message = fleet.env_status("rennes-dev")["applications"]["ref"]["message"]
    assert "namespace rennes-dev does not exist on target k8s-ouest" in message, message
    assert (api.get(cm_path("lille-dev", "ref")) or {})["data"] == {"version": "3.10"}
    failed = [e for e in fleet.audit() if e["result"] == "failed"]
    assert [(e["environment"], e["application"]) for e in failed] == [("rennes-dev", "ref")]


def test_the_example_controller_sends_k8s_targets_to_the_cluster_of_kubeconfig(
    kube_server: KubeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``examples/kubernetes/controller.yaml``: ``k8s-*`` through the kubernetes driver, on ``$KUBECONFIG``."""
    from reconciler.commands.common import load_config
    from reconciler.engine.targets import build_driver

    config = load_config(str(Path(__file__).resolve().parents[2] / "examples" / "kubernetes" / "controller.yaml"))
    target = config.target("k8s-nord-dev")
    assert target is not None and target.driver == "kubernetes" and target.get("kubeconfig") is None
    local = config.target("aix-lille-dev")
    assert local is not None and local.driver == "local"
    assert local.get("path").endswith("/.reconciler-demo/k8s-targets/aix-lille-dev")
    monkeypatch.setenv("KUBECONFIG", str(kube_server.kubeconfig))
    driver = build_driver(target)
    assert isinstance(driver, KubernetesDriver) and driver.owned_applications("nowhere-dev") == []
    assert driver.api.limiter.qps == 50 and driver.health_timeout == 600
