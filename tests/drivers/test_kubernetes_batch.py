"""The kubernetes driver's inventory per (target, environment) and its cheap paths, against a real kube-apiserver.

Batches (one inventory write per environment, objects read by listing), crash safety of the pending scopes,
single-object applies without a dry-run, unchanged objects recognised without a dry-run, the ``uid`` precondition,
concurrent inventory writers and the migration of per-application inventories of earlier versions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.core.config import ControllerConfig
from reconciler.core.loader import load_repo
from reconciler.core.problems import PermanentError, TemporaryError
from reconciler.core.tree import MemoryTree
from reconciler.drivers import kubernetes
from reconciler.drivers.k8s_api import APPLY_PATCH, KubeApi
from reconciler.drivers.k8s_objects import (
    INVENTORY_KEY,
    LABEL_INVENTORY,
    Owner,
    legacy_inventory_name,
    mark,
    state_digest,
)
from reconciler.drivers.kubernetes import KubernetesDriver
from reconciler.engine.reconcile import Job, reconcile_environment
from reconciler.engine.targets import DriverPool
from tests.drivers import k8s_support
from tests.drivers.k8s_support import (
    TARGET,
    Killed,
    cm_path,
    configmap,
    deployment,
    driver_for,
    edit,
    inventory_path,
    inventory_record,
    kill_after_applies,
    unit,
)
from tests.support.kube import KubeServer

api = k8s_support.api  # fixture
driver = k8s_support.driver  # fixture
ns = k8s_support.ns  # fixture

Request = tuple[str, str, tuple[tuple[str, str], ...]]


@pytest.fixture
def requests(driver: KubernetesDriver, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Request]]:
    """Every request ``driver`` sends: (method, path, query)."""
    sent: list[Request] = []
    real = driver.api.request

    def request(method: str, path: str, **kw: Any) -> dict[str, Any]:
        sent.append((method, path, tuple(kw.get("query") or ())))
        return real(method, path, **kw)

    monkeypatch.setattr(driver.api, "request", request)
    yield sent


def dry_runs(sent: list[Request]) -> int:
    return sum(1 for _, _, query in sent if ("dryRun", "All") in query)


def header(api: KubeApi, ns: str) -> dict[str, Any]:
    return dict(json.loads((api.get(inventory_path(ns)) or {})["data"]["environment.json"]))


def test_a_batch_writes_the_inventory_once_and_reads_objects_by_listing(
    driver: KubernetesDriver, api: KubeApi, ns: str, requests: list[Request]
) -> None:
    driver.store._ensure_namespace()  # the inventory namespace, created on first use (first test of a session)
    requests.clear()
    apps = [f"app{i}" for i in range(4)]
    with driver.batch(ns):
        for app in apps:
            assert driver.apply(unit(ns, {"c.yaml": configmap(f"{app}-settings", x="1")}, app=app)).changed
        assert driver.owned_applications(ns) == apps
        before = len(requests)
        assert driver.health(ns, "app0").status.value == "Healthy"  # as just applied: no request
        assert (driver.observe(ns, "app1") or pytest.fail()).drifted == ()  # read from the listing
        assert len(requests) == before
    inventory_writes = [(m, p) for m, p, _ in requests if "reconciler-system" in p and m != "GET"]
    assert len(inventory_writes) == 2, requests  # the pending scope before the first creation, the records at the end
    applies = [p for m, p, q in requests if m == "PATCH" and "reconciler-system" not in p]
    assert len(applies) == len(apps) and dry_runs(requests) == 0  # one object per unit: applied directly
    object_reads = [p for m, p, _ in requests if m == "GET" and p.startswith(f"/api/v1/namespaces/{ns}/")]
    # a new environment (no inventory yet): one listing of the objects of a kind and namespace, from the first one
    assert object_reads == [f"/api/v1/namespaces/{ns}/configmaps"], object_reads
    assert header(api, ns)["pending"] == []
    for app in apps:
        record = inventory_record(api, ns, app) or pytest.fail(app)
        assert record["version"] == "1.0.0" and record["objects"][0]["state"]

    # unchanged: the inventory, two objects one by one, then one listing for the others of their kind and namespace;
    # nothing written (not even a dry-run)
    requests.clear()
    rv = (api.get(inventory_path(ns)) or {})["metadata"]["resourceVersion"]
    with driver.batch(ns):
        for app in apps:
            result = driver.apply(unit(ns, {"c.yaml": configmap(f"{app}-settings", x="1")}, app=app))
            assert not result.changed and result.message == "1 unchanged"
    assert [m for m, _, _ in requests] == ["GET"] * 4, requests
    object_reads = [p for m, p, _ in requests if m == "GET" and p.startswith(f"/api/v1/namespaces/{ns}/")]
    assert object_reads == [cm_path(ns, "app0-settings"), cm_path(ns, "app1-settings"),
                            f"/api/v1/namespaces/{ns}/configmaps"], object_reads  # fmt: skip
    assert (api.get(inventory_path(ns)) or {})["metadata"]["resourceVersion"] == rv


def test_observing_an_environment_reads_its_inventory_once_and_lists_objects(
    driver: KubernetesDriver, api: KubeApi, ns: str, requests: list[Request]
) -> None:
    """The engine's batch observe (``observe_environment``): the same answers as one ``observe`` per application."""
    apps = [f"app{i}" for i in range(4)]
    with driver.batch(ns):
        for app in apps:
            driver.apply(unit(ns, {"c.yaml": configmap(f"{app}-settings", x="1")}, app=app))
    edit(api, cm_path(ns, "app2-settings"), {"data": {"x": "hacked"}})
    requests.clear()
    found = driver.observe_environment(ns, ["app0", "missing"], True)
    assert [m for m, _, _ in requests] == ["GET"] * 4, requests  # the inventory, two objects, one listing
    assert sorted(found) == [*apps, "missing"] and found["missing"] is None
    assert found == {name: driver.observe(ns, name) for name in found}
    assert (found["app2"] or pytest.fail()).drifted == (
        f"ConfigMap/{ns}/app2-settings: managed fields changed by kubectl-edit",
    )
    assert all((found[a] or pytest.fail()).version == "1.0.0" for a in apps)
    requests.clear()
    assert driver.observe_environment(ns, [], False) == {a: driver.observe(ns, a, check_drift=False) for a in apps}
    assert [m for m, _, _ in requests][:1] == ["GET"] and len(requests) == 1 + len(apps)  # no object read


def test_outside_a_batch_each_call_reads_and_writes_the_inventory(
    driver: KubernetesDriver, api: KubeApi, ns: str, requests: list[Request]
) -> None:
    driver.apply(unit(ns, {"c.yaml": configmap("settings", x="1")}))
    assert (inventory_record(api, ns) or pytest.fail())["version"] == "1.0.0"  # written before apply returned
    assert dry_runs(requests) == 0
    requests.clear()
    assert driver.apply(unit(ns, {"c.yaml": configmap("settings", x="1")})).message == "1 unchanged"
    assert [(m, p) for m, p, _ in requests] == [("GET", inventory_path(ns)), ("GET", cm_path(ns, "settings"))]


def test_a_crash_inside_a_batch_leaves_nothing_untracked(
    kube_server: KubeServer, driver: KubernetesDriver, api: KubeApi, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records of a batch are written at its end; a crash before that loses none of the created objects."""
    kill_after_applies(driver, monkeypatch, 3)  # "one", "two", the first object of "three", then the end
    three = unit(ns, {"a.yaml": configmap("three-a", x="1"), "b.yaml": configmap("three-b", x="1")}, app="three")
    with pytest.raises(Killed), driver.batch(ns):
        driver.apply(unit(ns, {"c.yaml": configmap("one", x="1")}, app="one"))
        driver.apply(unit(ns, {"c.yaml": configmap("two", x="1")}, app="two"))
        driver.apply(three)
    assert api.get(cm_path(ns, "three-a")) is not None and api.get(cm_path(ns, "three-b")) is None
    assert inventory_record(api, ns, "one") is None  # never written: only the pending scope was
    assert header(api, ns)["pending"] == [["v1", "ConfigMap", ns]]

    restarted = driver_for(kube_server)
    assert restarted.owned_applications(ns) == ["one", "three", "two"]  # found by their marks
    live = restarted.observe(ns, "one")
    assert (
        live is not None
        and live.version is None
        and live.drifted == (f"ConfigMap/{ns}/one: not at the applied fingerprint",)
    )
    # the engine re-applies what it finds unversioned: nothing is written again, the records are
    result = restarted.apply(unit(ns, {"c.yaml": configmap("one", x="1")}, app="one"))
    assert result.message == "1 unchanged" and not result.changed
    assert (inventory_record(api, ns, "one") or pytest.fail())["version"] == "1.0.0"
    assert header(api, ns)["pending"] == []
    assert restarted.remove(ns, "three").message == "1 pruned"  # the half-applied unit leaves no orphan
    assert api.get(cm_path(ns, "three-a")) is None
    assert restarted.owned_applications(ns) == ["one", "two"]


def test_records_of_a_batch_that_raises_are_still_written(driver: KubernetesDriver, api: KubeApi, ns: str) -> None:
    with pytest.raises(RuntimeError), driver.batch(ns):
        driver.apply(unit(ns, {"c.yaml": configmap("one", x="1")}, app="one"))
        raise RuntimeError("the engine failed after the apply")
    assert (inventory_record(api, ns, "one") or pytest.fail())["version"] == "1.0.0"
    assert header(api, ns)["pending"] == []


def test_a_refused_single_object_leaves_nothing(driver: KubernetesDriver, api: KubeApi, ns: str) -> None:
    """One object is applied without a dry-run: a refusal (422) writes nothing and records no application; the
    pending scope written before the attempt stays (so its retries write nothing: issue 17's retry churn)."""
    bad = deployment("web").replace(b"matchLabels: {app: web}", b"matchLabels: {app: other}")
    with pytest.raises(PermanentError) as caught:
        driver.apply(unit(ns, {"d.yaml": bad}))
    message = str(caught.value)
    assert "api/d.yaml:1" in message and "Deployment" in message and "is invalid" in message, message
    assert api.get(f"/apis/apps/v1/namespaces/{ns}/deployments/web") is None
    assert driver.observe(ns, "shop") is None and inventory_record(api, ns) is None
    assert header(api, ns)["pending"] == [["apps/v1", "Deployment", ns]]


def test_a_first_deployment_of_several_objects_sends_one_apply_each_and_no_dry_run(
    driver: KubernetesDriver, api: KubeApi, ns: str, requests: list[Request]
) -> None:
    """New objects only (a first deployment, a cold cycle): no dry-run of each before the applies."""
    files = {"a.yaml": configmap("a", x="1"), "b.yaml": configmap("b", x="1"), "d.yaml": deployment("web")}
    with driver.batch(ns):
        assert driver.apply(unit(ns, files)).message == "3 created"
    assert dry_runs(requests) == 0
    applies = [p for m, p, _ in requests if m == "PATCH" and "reconciler-system" not in p]
    assert len(applies) == 3, requests
    assert (inventory_record(api, ns) or pytest.fail())["version"] == "1.0.0"


def test_a_refused_first_deployment_deletes_what_it_created(
    driver: KubernetesDriver, api: KubeApi, ns: str, requests: list[Request]
) -> None:
    """The third object is refused (422) after two were created: they are deleted again (by uid, as ours) and no
    application is recorded; the next attempt with valid input creates everything."""
    bad = deployment("web").replace(b"matchLabels: {app: web}", b"matchLabels: {app: other}")
    files = {"a.yaml": configmap("a", x="1"), "b.yaml": configmap("b", x="1"), "d.yaml": bad}
    with pytest.raises(PermanentError, match=r"api/d.yaml:1.*is invalid"):
        driver.apply(unit(ns, files))
    deletes = sorted(p for m, p, _ in requests if m == "DELETE")
    assert deletes == [cm_path(ns, "a"), cm_path(ns, "b")]
    assert api.get(cm_path(ns, "a")) is None and api.get(cm_path(ns, "b")) is None
    assert driver.observe(ns, "shop") is None and inventory_record(api, ns) is None
    files["d.yaml"] = deployment("web")
    assert driver.apply(unit(ns, files)).message == "3 created"


def test_objects_a_refused_first_deployment_could_not_delete_stay_tracked(
    driver: KubernetesDriver, api: KubeApi, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When deleting them fails too, the refusal is what is reported and the created objects stay in the
    inventory, so a later apply or removal prunes them (nothing is left untracked)."""

    def unreachable(*_args: Any, **_kw: Any) -> Any:
        raise TemporaryError("kubernetes target: unreachable")

    bad = deployment("web").replace(b"matchLabels: {app: web}", b"matchLabels: {app: other}")
    with monkeypatch.context() as patched:
        patched.setattr(driver.store, "prune", unreachable)
        with pytest.raises(PermanentError, match=r"api/d.yaml:1.*is invalid"):
            driver.apply(unit(ns, {"a.yaml": configmap("a", x="1"), "d.yaml": bad}))
    assert api.get(cm_path(ns, "a")) is not None
    assert driver.owned_applications(ns) == ["shop"]
    assert driver.remove(ns, "shop").message == "1 pruned"
    assert api.get(cm_path(ns, "a")) is None


def test_an_object_changed_by_our_own_field_manager_is_not_taken_as_unchanged(
    driver: KubernetesDriver, api: KubeApi, ns: str
) -> None:
    """The fast path compares the values of the fields we own, not only which fields we own."""
    desired = unit(ns, {"c.yaml": configmap("settings", mode="blue")})
    driver.apply(desired)
    live = api.get(cm_path(ns, "settings")) or {}
    impostor = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"mode": "red"},
                "metadata": {k: live["metadata"][k] for k in ("name", "labels", "annotations")}}  # fmt: skip
    api.request("PATCH", cm_path(ns, "settings"), query=[("fieldManager", "reconciler")], body=impostor,
                content_type=APPLY_PATCH)  # fmt: skip
    result = driver.apply(desired)
    assert result.changed and result.message == "1 configured"
    assert (api.get(cm_path(ns, "settings")) or {})["data"] == {"mode": "blue"}
    assert driver.apply(desired).message == "1 unchanged"


def test_an_object_replaced_since_it_was_listed_is_not_written(
    driver: KubernetesDriver, api: KubeApi, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes to existing objects carry their uid: one deleted and created again by someone else is left alone."""
    monkeypatch.setattr(kubernetes, "LISTING_AFTER", 0)  # objects are read by listing from the first one on
    with driver.batch(ns):
        driver.apply(unit(ns, {"c.yaml": configmap("settings", x="1")}))
        api.request("DELETE", cm_path(ns, "settings"))
        api.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body={"metadata": {"name": "settings"},
                                                                          "data": {"theirs": "1"}})  # fmt: skip
        with pytest.raises(TemporaryError, match=r"settings was deleted or replaced while being applied"):
            driver.apply(unit(ns, {"c.yaml": configmap("settings", x="2")}, version="2"))
    assert (api.get(cm_path(ns, "settings")) or {})["data"] == {"theirs": "1"}
    assert (inventory_record(api, ns) or pytest.fail())["version"] == "1.0.0"


def test_concurrent_writers_of_one_inventory_keep_each_others_records(
    kube_server: KubeServer, driver: KubernetesDriver, api: KubeApi, ns: str
) -> None:
    other = driver_for(kube_server)  # another replica, say, during a lease hand-over
    with driver.batch(ns):
        driver.apply(unit(ns, {"c.yaml": configmap("one", x="1")}, app="one"))
        other.apply(unit(ns, {"c.yaml": configmap("two", x="1")}, app="two"))  # written first: ours gets a 409
    assert (inventory_record(api, ns, "one") or pytest.fail())["version"] == "1.0.0"
    assert (inventory_record(api, ns, "two") or pytest.fail())["version"] == "1.0.0"
    assert driver.owned_applications(ns) == other.owned_applications(ns) == ["one", "two"]
    assert header(api, ns)["pending"] == []


def test_inventories_of_earlier_versions_are_folded_into_the_environments(
    kube_server: KubeServer, driver: KubernetesDriver, api: KubeApi, ns: str
) -> None:
    """An upgraded controller finds what an earlier version recorded per application, and prunes by it."""
    v1 = unit(ns, {"a.yaml": configmap("a", x="1"), "b.yaml": configmap("b", x="1")})
    driver.apply(v1)
    record = inventory_record(api, ns) or pytest.fail()
    api.request("DELETE", inventory_path(ns))  # what an earlier version left: one ConfigMap per application
    owner = Owner(TARGET, ns, "shop")
    legacy = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": legacy_inventory_name(owner)},
              "data": {INVENTORY_KEY: json.dumps({k: v for k, v in record.items() if k != "state"}, indent=1)}}  # fmt: skip
    mark(legacy, owner, "", "1.0.0", v1.fingerprint)
    legacy["metadata"]["labels"][LABEL_INVENTORY] = "true"
    api.request("POST", "/api/v1/namespaces/reconciler-system/configmaps", body=legacy)

    upgraded = driver_for(kube_server)
    assert upgraded.owned_applications(ns) == ["shop"]
    live = upgraded.observe(ns, "shop")
    assert live is not None and live.version == "1.0.0" and live.drifted == ()
    result = upgraded.apply(unit(ns, {"a.yaml": configmap("a", x="2")}, version="2"))
    assert result.message == "1 configured, 1 pruned", result.message
    assert api.get(cm_path(ns, "b")) is None
    assert api.get(cm_path("reconciler-system", legacy_inventory_name(owner))) is None  # folded, then deleted
    assert (inventory_record(api, ns) or pytest.fail())["version"] == "2"
    assert driver_for(kube_server).owned_applications(ns) == ["shop"]


def test_the_state_digest_covers_the_values_of_owned_fields_only() -> None:
    """What the unchanged fast path compares: values at the paths our manager owns (keyed and set lists too)."""
    fields = {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
        'k:{"name":"web"}': {".": {}, "f:image": {}, "f:name": {}, "f:args": {}}},
        "f:finalizers": {'v:"a"': {}}}}}}  # fmt: skip
    managed = [{"manager": "reconciler", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": fields},
               {"manager": "kube-controller-manager", "operation": "Update", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": {}}}]  # fmt: skip

    def obj(image: str = "web:1", replicas: int = 2, status: int = 0, other: str = "x") -> dict[str, Any]:
        containers = [{"name": "side", "image": other}, {"name": "web", "image": image, "args": ["-v"]}]
        return {"metadata": {"managedFields": managed, "annotations": {"revision": str(status)}},
                "spec": {"replicas": replicas, "template": {"spec": {"containers": containers,
                                                                     "finalizers": ["a", "b"]}}},
                "status": {"replicas": status}}  # fmt: skip

    base = state_digest(obj(), "reconciler")
    assert base and state_digest(obj(status=3, other="y"), "reconciler") == base  # not ours: ignored
    assert state_digest(obj(image="web:2"), "reconciler") != base
    assert state_digest(obj(replicas=3), "reconciler") != base
    assert state_digest({"metadata": {}}, "reconciler") == ""  # nothing applied by us: no fast path


def fleet_of(ns: str, apps: list[str]) -> dict[str, bytes]:
    """A releases repo with one environment (named and namespaced ``ns``) of ``apps``, one ConfigMap each."""
    files: dict[str, bytes] = {}
    for app in apps:
        files[f"applications/{app}/application.yaml"] = (
            f"apiVersion: reconciler.io/v1\nkind: Application\nmetadata: {{name: {app}}}\nspec:\n  owner: t\n"
            "  components:\n    - {name: api, target: kubernetes, templates: [templates/cm.yaml]}\n"
        ).encode()
        files[f"applications/{app}/templates/cm.yaml"] = (
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ${app.name}-settings\n"
            b'  namespace: ${params.namespace}\ndata:\n  version: "${release.version}"\n'
        )
        files[f"releases/{app}/1.0.yaml"] = (
            f"apiVersion: reconciler.io/v1\nkind: Release\nmetadata: {{name: {app}-1.0}}\n"
            f"spec: {{application: {app}, version: '1.0', components: {{api: {{image: r.example.org/{app}:1.0}}}}}}\n"
        ).encode()
    releases = ", ".join(f"{app}: '1.0'" for app in apps)
    files["stages/dev.yaml"] = (
        f"apiVersion: reconciler.io/v1\nkind: Stage\nmetadata: {{name: dev}}\nspec:\n  releases: {{{releases}}}\n".encode()
    )
    files["environments/env.yaml"] = (
        f"apiVersion: reconciler.io/v1\nkind: Environment\nmetadata: {{name: {ns}}}\n"
        f"spec: {{stage: dev, targets: {{kubernetes: {TARGET}}}, parameters: {{namespace: {ns}}}}}\n"
    ).encode()
    return files


def test_the_engine_reconciles_an_environment_inside_one_batch(
    driver: KubernetesDriver, api: KubeApi, ns: str, requests: list[Request]
) -> None:
    """The engine enters ``batch``: one inventory read and (with creations) two writes per environment, not per
    application; an unchanged environment is read, never written."""
    driver.store._ensure_namespace()
    apps = [f"app{i}" for i in range(5)]
    tree = MemoryTree(fleet_of(ns, apps))
    repo = load_repo(tree).repo or pytest.fail("the test repo does not load")
    config = ControllerConfig(
        path="/etc/reconciler.yaml", source_url="unused", patterns=({"match": "*", "driver": "kubernetes"},)
    )
    pool = DriverPool(config, factory=lambda target: driver)
    job = Job(env=repo.environments[ns], repo=repo, tree=tree, revision="r1")
    requests.clear()
    outcome = reconcile_environment(job, pool)
    assert outcome.phase == "Synced" and outcome.changed, outcome.message
    writes = [m for m, p, _ in requests if "reconciler-system" in p and m != "GET"]
    assert len(writes) == 2, requests  # the pending scope before the first creation, the records at the end
    assert [p for m, p, _ in requests if m == "GET"].count(inventory_path(ns)) == 1, requests
    applies = [p for m, p, _ in requests if m == "PATCH" and "reconciler-system" not in p]
    assert len(applies) == len(apps) and dry_runs(requests) == 0
    for app in apps:
        assert (inventory_record(api, ns, app) or pytest.fail(app))["version"] == "1.0"

    requests.clear()
    outcome = reconcile_environment(job, pool)  # nothing changed: read the inventory and the objects, write nothing
    assert outcome.phase == "Synced" and not outcome.changed and not outcome.audit
    assert all(m == "GET" for m, _, _ in requests), requests
    assert [p for _, p, _ in requests].count(inventory_path(ns)) == 1, requests
