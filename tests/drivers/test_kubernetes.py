"""The kubernetes driver against a real kube-apiserver: apply, update, prune, ownership, conflicts, drift, dry-run.

Health, API error handling and the engine on Kubernetes targets are in ``test_kubernetes_health.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from reconciler.core.problems import PermanentError
from reconciler.drivers.k8s_api import APPLY_PATCH, KubeApi
from reconciler.drivers.k8s_objects import (
    ANN_ENVIRONMENT,
    ANN_TARGET,
    ANN_VERSION,
    LABEL_APPLICATION,
    LABEL_ENVIRONMENT,
    LABEL_MANAGED_BY,
    label_value,
)
from reconciler.drivers.kubernetes import KubernetesDriver
from tests.drivers import k8s_support, wait_until
from tests.drivers.k8s_support import (
    TARGET,
    Killed,
    cm_path,
    configmap,
    crd,
    custom,
    deployment,
    driver_for,
    edit,
    inventory_path,
    inventory_record,
    kill_after_applies,
    service,
    unit,
)
from tests.support.kube import KubeServer

api = k8s_support.api  # fixture
driver = k8s_support.driver  # fixture
ns = k8s_support.ns  # fixture


def rv(api: KubeApi, path: str) -> str:
    obj = api.get(path)
    assert obj is not None, path
    return str(obj["metadata"]["resourceVersion"])


def inventory(api: KubeApi, ns: str, app: str = "shop") -> dict[str, Any] | None:
    return inventory_record(api, ns, app)


def test_apply_update_and_prune_a_multi_resource_application(
    kube_server: KubeServer, driver: KubernetesDriver, api: KubeApi, ns: str
) -> None:
    group = f"{ns}.example.org"
    files = {
        "crd.yaml": crd(group),
        "widget.yaml": custom(group, "w1", 3),
        "app.yaml": configmap("settings", LOG_LEVEL="info") + b"---\n" + deployment("web") + b"---\n" + service("web"),
    }
    result = driver.apply(unit(ns, files))
    assert result.changed and result.message == "5 created"
    cm = api.get(cm_path(ns, "settings"))
    assert cm is not None and cm["data"] == {"LOG_LEVEL": "info"}
    labels, annotations = cm["metadata"]["labels"], cm["metadata"]["annotations"]
    assert labels[LABEL_MANAGED_BY] == "reconciler" and labels[LABEL_ENVIRONMENT] == ns
    assert labels[LABEL_APPLICATION] == "shop" and annotations[ANN_TARGET] == TARGET
    assert annotations[ANN_VERSION] == "1.0.0" and annotations["reconciler.io/component"] == "api"
    widget = api.get(f"/apis/{group}/v1/namespaces/{ns}/widgets/w1")
    assert widget is not None and widget["spec"] == {"size": 3}
    live = driver.observe(ns, "shop")
    assert live is not None and live.version == "1.0.0" and live.drifted == ()
    assert driver.owned_applications(ns) == ["shop"]
    restarted = driver_for(kube_server)  # a new controller process: everything is read back from the cluster
    assert restarted.observe(ns, "shop") == live and restarted.owned_applications(ns) == ["shop"]
    assert {o["kind"] for o in (inventory(api, ns) or {})["objects"]} == {
        "CustomResourceDefinition", "Widget", "ConfigMap", "Deployment", "Service"}  # fmt: skip

    # update: a changed ConfigMap, the Service and the custom resource leave the desired set
    files2 = {
        "crd.yaml": crd(group),
        "app.yaml": configmap("settings", LOG_LEVEL="debug") + b"---\n" + deployment("web"),
    }
    result = driver.apply(unit(ns, files2, version="1.1.0"))
    assert result.changed and result.message == "3 configured, 2 pruned", result.message
    assert (api.get(cm_path(ns, "settings")) or {})["data"] == {"LOG_LEVEL": "debug"}
    assert api.get(f"/api/v1/namespaces/{ns}/services/web") is None
    assert api.get(f"/apis/{group}/v1/namespaces/{ns}/widgets/w1") is None
    assert (driver.observe(ns, "shop") or pytest.fail()).version == "1.1.0"

    # the CRD (and the ConfigMap) leave too: no custom resource remains, so the CRD is deleted
    result = driver.apply(unit(ns, {"app.yaml": deployment("web")}, version="1.2.0"))
    assert result.message == "1 configured, 2 pruned"
    crd_path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{group}"
    wait_until(lambda: "deletionTimestamp" in ((api.get(crd_path) or {"metadata": {"deletionTimestamp": 1}})["metadata"]),
               what="the CRD being deleted")  # fmt: skip

    result = driver.remove(ns, "shop")
    assert result.changed and result.message == "1 pruned"
    assert api.get(f"/apis/apps/v1/namespaces/{ns}/deployments/web") is None
    assert driver.owned_applications(ns) == [] and driver.observe(ns, "shop") is None
    assert driver.remove(ns, "shop").changed is False


def test_unchanged_desired_state_makes_no_write(driver: KubernetesDriver, api: KubeApi, ns: str) -> None:
    files = {"app.yaml": configmap("settings", A="1") + b"---\n" + deployment("web") + b"---\n" + service("web")}
    desired = unit(ns, files)
    driver.apply(desired)
    paths = [cm_path(ns, "settings"), f"/apis/apps/v1/namespaces/{ns}/deployments/web",
             f"/api/v1/namespaces/{ns}/services/web", inventory_path(ns)]  # fmt: skip
    before = {p: api.get(p) for p in paths}
    result = driver.apply(desired)
    assert not result.changed and result.message == "3 unchanged"
    after = {p: api.get(p) for p in paths}
    for path in paths:
        old, new = before[path] or {}, after[path] or {}
        assert new["metadata"]["resourceVersion"] == old["metadata"]["resourceVersion"], path
        assert new["metadata"].get("managedFields") == old["metadata"].get("managedFields"), path


def test_objects_that_are_not_ours_are_never_pruned(kube_server: KubeServer, api: KubeApi, ns: str) -> None:
    driver = driver_for(kube_server)
    driver.apply(unit(ns, {"a.yaml": configmap("a", x="1"), "b.yaml": configmap("b", x="1")}))
    ours = {LABEL_ENVIRONMENT: label_value(ns), LABEL_APPLICATION: "shop"}
    look_alikes = {
        "same-labels": {"labels": ours},  # our selector labels, without managed-by
        "other-target": {"labels": {**ours, LABEL_MANAGED_BY: "reconciler"},
                         "annotations": {ANN_TARGET: "k8s-other", ANN_ENVIRONMENT: ns,
                                         "reconciler.io/application-name": "shop"}},
    }  # fmt: skip
    for name, metadata in look_alikes.items():
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **metadata}, "data": {"x": "1"}}
        api.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=body)
    # "b" is taken over by hand: deleted and created again without our marks
    api.request("DELETE", cm_path(ns, "b"))
    api.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body={"metadata": {"name": "b"}, "data": {"y": "2"}})

    result = driver.apply(unit(ns, {"a.yaml": configmap("a", x="2")}, version="2"))
    assert "left ConfigMap/" in result.message and "b alone (not ours)" in result.message, result.message
    assert (api.get(cm_path(ns, "b")) or {})["data"] == {"y": "2"}
    driver.remove(ns, "shop")
    assert api.get(cm_path(ns, "a")) is None
    for name in ("b", "same-labels", "other-target"):
        assert api.get(cm_path(ns, name)) is not None, name


def test_a_field_of_another_manager_is_a_conflict_until_forced(
    kube_server: KubeServer, driver: KubernetesDriver, api: KubeApi, ns: str
) -> None:
    driver.apply(unit(ns, {"a.yaml": configmap("settings", mode="blue")}))
    theirs = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "green"}}
    api.request("PATCH", cm_path(ns, "settings"), query=[("fieldManager", "other-controller"), ("force", "true")],
                body=theirs, content_type=APPLY_PATCH)  # fmt: skip
    with pytest.raises(PermanentError) as caught:
        driver.apply(unit(ns, {"a.yaml": configmap("settings", mode="red")}, version="2"))
    message = str(caught.value)
    assert '"other-controller" (.data.mode)' in message and "forceConflicts" in message and "a.yaml" in message
    assert (api.get(cm_path(ns, "settings")) or {})["data"] == {"mode": "green"}  # nothing written

    forcing = driver_for(kube_server, forceConflicts=True)
    assert forcing.apply(unit(ns, {"a.yaml": configmap("settings", mode="red")}, version="2")).changed
    live = api.get(cm_path(ns, "settings")) or {}
    assert live["data"] == {"mode": "red"}
    owners = {e["manager"]: e.get("fieldsV1", {}) for e in live["metadata"]["managedFields"]}
    assert "f:mode" in json.dumps(owners["reconciler"]) and "f:mode" not in json.dumps(owners.get("other-controller"))


def test_an_object_of_another_application_is_refused(driver: KubernetesDriver, api: KubeApi, ns: str) -> None:
    driver.apply(unit(ns, {"a.yaml": configmap("shared", x="1")}, app="billing"))
    with pytest.raises(PermanentError, match=r"ConfigMap/.*/shared already belongs to environment .*billing"):
        driver.apply(unit(ns, {"a.yaml": configmap("shared", x="2")}, app="shop"))
    assert (api.get(cm_path(ns, "shared")) or {})["data"] == {"x": "1"}


def test_an_invalid_object_is_a_clear_error_and_nothing_is_applied(
    driver: KubernetesDriver, api: KubeApi, ns: str
) -> None:
    bad = deployment("web").replace(b"matchLabels: {app: web}", b"matchLabels: {app: other}")
    with pytest.raises(PermanentError) as caught:
        driver.apply(unit(ns, {"a.yaml": configmap("first", x="1"), "b.yaml": bad}))
    message = str(caught.value)
    assert "api/b.yaml:1" in message and "Deployment" in message and "is invalid" in message, message
    assert "selector" in message
    assert api.get(cm_path(ns, "first")) is None  # a first deployment: created, then deleted again at the refusal
    assert driver.observe(ns, "shop") is None


def test_an_invalid_object_in_an_update_is_refused_before_anything_is_written(
    driver: KubernetesDriver, api: KubeApi, ns: str
) -> None:
    """Existing objects cannot be put back by deleting them: an update is validated by a dry-run of each first."""
    driver.apply(unit(ns, {"a.yaml": configmap("first", x="1"), "b.yaml": deployment("web")}))
    bad = deployment("web").replace(b"matchLabels: {app: web}", b"matchLabels: {app: other}")
    with pytest.raises(PermanentError, match=r"api/b.yaml:1.*is invalid"):
        driver.apply(unit(ns, {"a.yaml": configmap("first", x="2"), "b.yaml": bad}, version="2"))
    assert (api.get(cm_path(ns, "first")) or {})["data"] == {"x": "1"}  # untouched
    live = driver.observe(ns, "shop")
    assert live is not None and live.version == "1.0.0" and live.drifted == ()


def test_an_immutable_field_change_is_a_clear_error(driver: KubernetesDriver, ns: str) -> None:
    driver.apply(unit(ns, {"d.yaml": deployment("web")}))
    changed = deployment("web").replace(b"app: web}}", b"app: web2}}")
    with pytest.raises(PermanentError, match=r"(?s)d.yaml.*Deployment/.*/web.*(immutable|invalid)"):
        driver.apply(unit(ns, {"d.yaml": changed}, version="2"))


def test_dry_run_changes_nothing(driver: KubernetesDriver, api: KubeApi, ns: str) -> None:
    files = {"a.yaml": configmap("a", x="1"), "b.yaml": configmap("b", x="1")}
    result = driver.apply(unit(ns, files), dry_run=True)
    assert result.changed and result.message.startswith("dry-run: would create 2 (ConfigMap/")
    assert api.get(cm_path(ns, "a")) is None and inventory(api, ns) is None
    driver.apply(unit(ns, files))
    before = {n: rv(api, cm_path(ns, n)) for n in ("a", "b")}
    result = driver.apply(unit(ns, {"a.yaml": configmap("a", x="2")}, version="2"), dry_run=True)
    assert result.message == f"dry-run: would configure 1 (ConfigMap/{ns}/a), prune 1 (ConfigMap/{ns}/b); 0 unchanged"
    assert driver.apply(unit(ns, files), dry_run=True).message == "dry-run: nothing would change; 2 unchanged"
    result = driver.remove(ns, "shop", dry_run=True)
    assert result.changed and "would remove 2" in result.message
    assert {n: rv(api, cm_path(ns, n)) for n in ("a", "b")} == before
    assert (inventory(api, ns) or {})["version"] == "1.0.0"


def test_drift_is_detected_by_observe_and_repaired_by_apply(driver: KubernetesDriver, api: KubeApi, ns: str) -> None:
    desired = unit(ns, {"a.yaml": configmap("settings", mode="blue") + b"---\n" + deployment("web", replicas=2)})
    driver.apply(desired)
    edit(api, cm_path(ns, "settings"), {"data": {"mode": "hacked"}})
    edit(api, f"/apis/apps/v1/namespaces/{ns}/deployments/web", {"spec": {"replicas": 5}}, manager="kubectl-scale")
    live = driver.observe(ns, "shop")
    assert live is not None and live.fingerprint == desired.fingerprint
    assert sorted(live.drifted) == [
        f"ConfigMap/{ns}/settings: managed fields changed by kubectl-edit",
        f"Deployment/{ns}/web: managed fields changed by kubectl-scale",
    ]
    assert (driver.observe(ns, "shop", check_drift=False) or pytest.fail()).drifted == ()
    result = driver.apply(desired)
    assert result.changed and result.message == "2 configured"
    assert (api.get(cm_path(ns, "settings")) or {})["data"] == {"mode": "blue"}
    assert (api.get(f"/apis/apps/v1/namespaces/{ns}/deployments/web") or {})["spec"]["replicas"] == 2
    assert (driver.observe(ns, "shop") or pytest.fail()).drifted == ()

    api.request("DELETE", cm_path(ns, "settings"))
    assert (driver.observe(ns, "shop") or pytest.fail()).drifted == (f"ConfigMap/{ns}/settings: missing",)
    assert driver.apply(desired).message == "1 created, 1 unchanged"
    assert (driver.observe(ns, "shop") or pytest.fail()).drifted == ()


def test_objects_of_an_interrupted_apply_stay_tracked(
    kube_server: KubeServer, driver: KubernetesDriver, api: KubeApi, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inventory names where new objects go before they are created: a crash half-way leaves none untracked."""
    v1 = unit(ns, {"a.yaml": configmap("a", x="1")})
    driver.apply(v1)
    v2 = unit(ns, {"a.yaml": configmap("a", x="2"), "b.yaml": configmap("b", x="2"), "c.yaml": configmap("c", x="2")},
              version="2")  # fmt: skip
    kill_after_applies(driver, monkeypatch, 2)  # the controller dies after writing a and b, before c
    with pytest.raises(Killed):
        driver.apply(v2)
    assert api.get(cm_path(ns, "b")) is not None and api.get(cm_path(ns, "c")) is None
    restarted = driver_for(kube_server)
    live = restarted.observe(ns, "shop")
    assert live is not None and live.version == "1.0.0" and live.fingerprint == v1.fingerprint
    assert live.drifted == (
        f"ConfigMap/{ns}/a: not at the applied fingerprint",
        f"ConfigMap/{ns}/b: not at the applied fingerprint",
    )
    result = restarted.remove(ns, "shop")
    assert result.message == "2 pruned"
    assert api.get(cm_path(ns, "a")) is None and api.get(cm_path(ns, "b")) is None
    assert api.get(inventory_path(ns)) is None  # the environment's last application: its inventory is deleted


def test_retries_of_a_refused_first_apply_write_no_inventory(
    driver: KubernetesDriver, api: KubeApi, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: each retry of a failing application created the environment's inventory (pending scope) and
    deleted it again. The pending scope written by the first attempt stays; retries send only the refused apply;
    the first success records the application and clears it."""
    writes: list[tuple[str, str]] = []
    request = driver.api.request

    def counting(method: str, path: str, **kw: Any) -> dict[str, Any]:
        if method != "GET":
            writes.append((method, path))
        return request(method, path, **kw)

    monkeypatch.setattr(driver.api, "request", counting)
    bad = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\ndata:\n  k: [1]\n"
    for _ in range(3):
        writes.clear()
        with pytest.raises(PermanentError, match=r"api/b.yaml:1: apply ConfigMap/.*/bad: .*expected string"):
            driver.apply(unit(ns, {"b.yaml": bad}))
    assert writes == [("PATCH", f"/api/v1/namespaces/{ns}/configmaps/bad")]
    driver.apply(unit(ns, {"b.yaml": configmap("bad", k="v")}))
    stored = driver.store.load(ns)
    assert stored is not None and not stored.pending and inventory(api, ns) is not None
