"""Flux's server-side-apply test data (fixtures/flux-ssa, copied from ``../shared/fixtures/kubernetes/flux-ssa/``)
through the kubernetes driver against the real kube-apiserver (1.20): every set applies (Synced, or Progressing for
workloads that need a controller-manager, which the test server does not run) or fails for a stated reason; the
second apply of the same unit sends no apply (PATCH) at all; removing the application deletes what it created but
never a Namespace.

The sets that do not apply, and why (``REFUSED``):
- test6: ``autoscaling/v2`` HorizontalPodAutoscaler, not served before Kubernetes 1.23: "not served by target".
- test11: its CRD is named ``webhooks.example.com`` while its plural and group make ``webhooks.webhooks.example.com``;
  the API server refuses it, so nothing of the set is applied (not even the Namespace written before it).
test9 and test13 put objects in a namespace they do not create (Flux's tests create it first): here too.
Before the driver normalised objects (k8s_normalize), test1 and test2 failed (Service port without protocol, CPU as
an integer) and test5 was written again on every apply (the CRD's ``status``).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.problems import PermanentError
from reconciler.core.state import Health
from reconciler.drivers.k8s_api import KubeApi
from reconciler.drivers.kubernetes import KubernetesDriver
from tests.drivers import k8s_support
from tests.drivers.k8s_support import get, new_namespace, unit

api = k8s_support.api  # fixture
driver = k8s_support.driver  # fixture

FIXTURES = Path(__file__).parent / "fixtures" / "flux-ssa"
SETS = sorted((p.stem for p in FIXTURES.glob("test*.yaml")), key=lambda s: int(s[4:]))
REFUSED = {
    "test6": r"HorizontalPodAutoscaler of autoscaling/v2 is not served by target k8s-test",
    "test11": r'must be spec.names.plural\+"."\+spec.group',
}
IN_EXISTING_NAMESPACE = {"test9", "test13"}
CLUSTER_SCOPED = {  # objects of cluster-scoped kinds written with a namespace: a StorageClass, a custom resource
    "test12": ("/apis/storage.k8s.io/v1/storageclasses/{}",),  # of a cluster-scoped CRD of the same set
    "test5": ("/apis/testing.fluxcd.io/v1/clustertests/{}",),
}


def _text(name: str, unique: str) -> bytes:
    return (FIXTURES / f"{name}.yaml").read_text().replace("%[1]s", unique).encode()


def _writes(driver: KubernetesDriver, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    sent: list[tuple[str, str]] = []
    request = driver.api.request

    def counting(method: str, path: str, **kw: Any) -> dict[str, Any]:
        if method != "GET" and "reconciler-inventory" not in path:
            sent.append((method, path))
        return request(method, path, **kw)

    monkeypatch.setattr(driver.api, "request", counting)
    return sent


def test_every_set_is_covered() -> None:
    assert [f"test{i}" for i in range(1, 15)] == SETS


@pytest.mark.parametrize("name", SETS)
def test_flux_set(name: str, driver: KubernetesDriver, api: KubeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    unique = new_namespace(api, "f") if name in IN_EXISTING_NAMESPACE else f"f-{uuid.uuid4().hex[:10]}"
    desired = unit(unique, {f"{name}.yaml": _text(name, unique)})
    writes = _writes(driver, monkeypatch)
    if name in REFUSED:
        with pytest.raises(PermanentError, match=REFUSED[name]):
            driver.apply(desired)
        assert get(api, f"/api/v1/namespaces/{unique}") is None  # nothing of the set was applied
        return
    first = driver.apply(desired)
    assert first.changed, first
    for path in CLUSTER_SCOPED.get(name, ()):  # a namespace written on a cluster-scoped object is not kept
        found = get(api, path.format(unique))
        assert found is not None and "namespace" not in found["metadata"], found
    health = driver.health(unique, "shop")
    assert health.status in (Health.HEALTHY, Health.PROGRESSING), health
    if health.status is Health.PROGRESSING:  # only what needs a controller-manager (rollouts, claims bound)
        assert "rollout" in health.message or "claim Pending" in health.message, health.message
    writes.clear()
    second = driver.apply(desired)
    assert not second.changed and writes == [], (second, writes)
    live = driver.observe(unique, "shop")
    assert live is not None and live.in_sync_with == desired.fingerprint, live
    driver.remove(unique, "shop")
    if b"kind: Namespace" in desired.files()[f"api/{name}.yaml"]:
        assert get(api, f"/api/v1/namespaces/{unique}") is not None  # a Namespace is never deleted
