"""Findings 2 and 3 of issue 14 against a real kube-apiserver, through the engine (``reconcile_environment``).

Finding 2, "Synced while nothing was applied": the objects of an application take the environment's ``namespace``
parameter (the driver defaults it, the templates name no namespace); changing only that parameter must move the
objects (created in the new namespace, pruned from the old one, one audit entry) before the environment reports
Synced. Finding 3, "someone else's object is adopted, then deleted with their data": an object that exists and
that the controller neither created nor was told to adopt is a conflict (a permanent error, nothing applied);
with the application's opt-in it is adopted (audited as ``adopt``), and when the application goes away the other
owner's object and fields stay. (The pure parts are tested in ``test_kubernetes_ownership_units``.) Imports
only what existed before the fix, so the file runs, and fails, against the old code.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.config import ControllerConfig
from reconciler.core.loader import load_repo
from reconciler.core.tree import MemoryTree
from reconciler.drivers.k8s_api import KubeApi
from reconciler.drivers.k8s_objects import LABEL_MANAGED_BY
from reconciler.drivers.kubernetes import KubernetesDriver
from reconciler.engine.reconcile import EnvOutcome, Job, reconcile_environment
from reconciler.engine.targets import DriverPool
from tests.drivers import k8s_support
from tests.drivers.k8s_support import (
    TARGET,
    Killed,
    cm_path,
    configmap,
    driver_for,
    edit,
    inventory_record,
    kill_after_applies,
    new_namespace,
)
from tests.engine import Fleet
from tests.source import Upstream
from tests.support.kube import KubeServer

api = k8s_support.api  # fixture
driver = k8s_support.driver  # fixture
ns = k8s_support.ns  # fixture

CONFIG = ControllerConfig(
    path="/etc/reconciler.yaml", source_url="unused", patterns=({"match": "*", "driver": "kubernetes"},)
)
# no namespace in the template: the driver gives the object the environment's ``namespace`` parameter
SETTINGS = (
    b'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ${app.name}-settings\ndata:\n  mode: "${params.mode}"\n'
)


def repo_files(env: str, namespace: str, apps: Mapping[str, str], adopt: Collection[str] = ()) -> dict[str, bytes]:
    """A releases repo: environment ``env`` (stage dev, parameters namespace + mode) deploying ``apps`` (name ->
    template); every application's component ``api`` goes to the kubernetes target, with ``adopt: true`` for the
    applications named in ``adopt``."""
    files: dict[str, bytes] = {}
    for app, template in apps.items():
        extra = ", adopt: true" if app in adopt else ""
        files[f"applications/{app}/application.yaml"] = (
            f"apiVersion: reconciler.io/v1\nkind: Application\nmetadata: {{name: {app}}}\nspec:\n  owner: t\n"
            f"  components:\n    - {{name: api, target: kubernetes, templates: [templates/cm.yaml]{extra}}}\n"
        ).encode()
        files[f"applications/{app}/templates/cm.yaml"] = template.encode()
        files[f"releases/{app}/1.0.yaml"] = (
            f"apiVersion: reconciler.io/v1\nkind: Release\nmetadata: {{name: {app}-1.0}}\n"
            f"spec: {{application: {app}, version: '1.0', components: {{api: {{image: r.example.org/{app}:1.0}}}}}}\n"
        ).encode()
    releases = ", ".join(f"{app}: '1.0'" for app in apps)
    files["stages/dev.yaml"] = (
        f"apiVersion: reconciler.io/v1\nkind: Stage\nmetadata: {{name: dev}}\nspec:\n  releases: {{{releases}}}\n".encode()
    )
    files["environments/env.yaml"] = (
        f"apiVersion: reconciler.io/v1\nkind: Environment\nmetadata: {{name: {env}}}\n"
        f"spec: {{stage: dev, targets: {{kubernetes: {TARGET}}}, parameters: {{namespace: {namespace}, mode: blue}},"
        " allowEmpty: true}\n"
    ).encode()
    return files


def reconcile(files: dict[str, bytes], env: str, pool: DriverPool, revision: str) -> EnvOutcome:
    tree = MemoryTree(files)
    loaded = load_repo(tree)
    repo = loaded.repo or pytest.fail(f"the test repo does not load: {loaded.problems}")
    return reconcile_environment(Job(env=repo.environments[env], repo=repo, tree=tree, revision=revision), pool)


@pytest.fixture
def pool(driver: KubernetesDriver) -> Iterator[DriverPool]:
    driver.store._ensure_namespace()
    yield DriverPool(CONFIG, factory=lambda target: driver)


def foreign_configmap(api: KubeApi, namespace: str, name: str, **data: str) -> dict[str, Any]:
    """A ConfigMap created by another team's tool (field manager ``other-team``), not by the controller."""
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
    created = api.request(
        "POST", f"/api/v1/namespaces/{namespace}/configmaps", query=[("fieldManager", "other-team")], body=body
    )
    assert isinstance(created, dict)
    return created


# -- finding 2: what the driver adds is part of what is compared ------------------------------------------------
def test_changing_only_the_namespace_parameter_moves_the_objects_before_synced(
    api: KubeApi, ns: str, pool: DriverPool
) -> None:
    ns2 = new_namespace(api)
    apps = {"shop": SETTINGS.decode()}
    first = reconcile(repo_files(ns, ns, apps), ns, pool, "r1")
    assert first.phase == "Synced" and len(first.audit) == 1, first.message
    assert api.get(cm_path(ns, "shop-settings")) is not None

    moved = reconcile(repo_files(ns, ns2, apps), ns, pool, "r2")  # only the namespace parameter changed
    assert moved.phase == "Synced", moved.message
    assert [(e["action"], e["result"], e["application"]) for e in moved.audit] == [("update", "succeeded", "shop")]
    assert moved.changed
    live = api.get(cm_path(ns2, "shop-settings")) or pytest.fail("nothing was applied in the new namespace")
    assert live["metadata"]["labels"][LABEL_MANAGED_BY] == "reconciler"
    assert api.get(cm_path(ns, "shop-settings")) is None  # ours: pruned from the old namespace
    record = inventory_record(api, ns) or pytest.fail("no inventory record")
    assert [o["namespace"] for o in record["objects"]] == [ns2]

    again = reconcile(repo_files(ns, ns2, apps), ns, pool, "r3")  # and it stays in sync: no apply loop
    assert again.phase == "Synced" and not again.audit and not again.changed, again.message


def test_a_change_of_the_targets_allowed_namespaces_is_a_change_of_the_desired_state(
    kube_server: KubeServer, api: KubeApi, ns: str
) -> None:
    """Target settings that decide what is written are part of the identity: narrowing ``namespaces`` so that the
    deployed objects are no longer allowed re-evaluates the unit (refused, Failed) instead of leaving it Synced."""
    ns_other = new_namespace(api)
    apps = {"shop": SETTINGS.decode()}
    wide = driver_for(kube_server, qps=1000, burst=1000, namespaces=[ns, ns_other])
    narrow = driver_for(kube_server, qps=1000, burst=1000, namespaces=[ns_other])
    try:
        wide.store._ensure_namespace()
        first = reconcile(repo_files(ns, ns, apps), ns, DriverPool(CONFIG, factory=lambda t: wide), "r1")
        assert first.phase == "Synced", first.message
        after = reconcile(repo_files(ns, ns, apps), ns, DriverPool(CONFIG, factory=lambda t: narrow), "r1")
        assert after.phase == "Failed" and f"namespace {ns} is not allowed" in after.message, after.message
        assert not after.transient
        assert api.get(cm_path(ns, "shop-settings")) is not None  # a refusal removes nothing
    finally:
        wide.close()
        narrow.close()


# -- finding 3: nothing that is not ours is taken or deleted ---------------------------------------------------
def test_an_existing_object_that_is_not_ours_is_a_conflict_not_adopted(api: KubeApi, ns: str, pool: DriverPool) -> None:
    before = foreign_configmap(api, ns, "shop-settings", owner="their-key")
    template = 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop-settings\ndata:\n  mode: "${params.mode}"\n'
    outcome = reconcile(repo_files(ns, ns, {"shop": template}), ns, pool, "r1")
    assert outcome.phase == "Failed" and not outcome.transient, outcome.message
    assert f"ConfigMap/{ns}/shop-settings exists, not managed by reconciler" in outcome.message
    assert outcome.applications["shop"].phase == "Failed"
    assert [(e["action"], e["result"]) for e in outcome.audit] == [("create", "failed")]
    after = api.get(cm_path(ns, "shop-settings")) or pytest.fail("the other team's ConfigMap is gone")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # not written at all
    assert after["data"] == {"owner": "their-key"} and not after["metadata"].get("labels")
    assert (inventory_record(api, ns) or {}).get("objects", []) == []  # not in our inventory: never pruned


def test_removing_an_application_never_deletes_an_object_it_did_not_create(
    api: KubeApi, ns: str, pool: DriverPool
) -> None:
    """The finding as seen by the other team: their ConfigMap (no field in common with ours) survives our
    application being deployed and then removed, with their data and without our marks."""
    foreign_configmap(api, ns, "shop-settings", owner="their-key")
    template = 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop-settings\ndata:\n  mode: "${params.mode}"\n'
    keep = SETTINGS.decode()
    reconcile(repo_files(ns, ns, {"shop": template, "keep": keep}), ns, pool, "r1")
    removed = reconcile(repo_files(ns, ns, {"keep": keep}), ns, pool, "r2")
    assert removed.phase == "Synced", removed.message
    kept = api.get(cm_path(ns, "shop-settings")) or pytest.fail("the other team's ConfigMap was deleted")
    assert kept["data"] == {"owner": "their-key"}
    assert LABEL_MANAGED_BY not in (kept["metadata"].get("labels") or {})


def test_an_adopted_object_is_audited_and_released_not_deleted_when_its_application_goes(
    api: KubeApi, ns: str, pool: DriverPool
) -> None:
    foreign_configmap(api, ns, "shop-settings", owner="their-key")
    template = 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop-settings\ndata:\n  mode: "${params.mode}"\n'
    keep = SETTINGS.decode()  # another application, so the desired set never becomes empty
    outcome = reconcile(repo_files(ns, ns, {"shop": template, "keep": keep}, adopt={"shop"}), ns, pool, "r1")
    assert outcome.phase == "Synced", outcome.message
    shop = [(e["action"], e["message"]) for e in outcome.audit if e["application"] == "shop"]
    assert [a for a, _ in shop] == ["create", "adopt"], shop
    assert shop[1][1] == f"adopted ConfigMap/{ns}/shop-settings"
    taken = api.get(cm_path(ns, "shop-settings")) or pytest.fail("gone")
    assert taken["data"] == {"owner": "their-key", "mode": "blue"}
    record = inventory_record(api, ns, "shop") or pytest.fail("no record")
    assert [o.get("adopted") for o in record["objects"]] == [True]

    settled = reconcile(repo_files(ns, ns, {"shop": template, "keep": keep}, adopt={"shop"}), ns, pool, "r1")
    assert settled.phase == "Synced" and not settled.audit, settled.message  # adopted once, not every cycle

    removed = reconcile(repo_files(ns, ns, {"keep": keep}), ns, pool, "r2")  # the application goes away
    assert removed.phase == "Synced", removed.message
    assert [(e["action"], e["application"]) for e in removed.audit] == [("remove", "shop")]
    assert f"released ConfigMap/{ns}/shop-settings (adopted" in removed.audit[0]["message"]
    kept = api.get(cm_path(ns, "shop-settings")) or pytest.fail("the other team's ConfigMap was deleted")
    assert kept["data"] == {"owner": "their-key"}  # their data stays, ours is gone
    assert LABEL_MANAGED_BY not in (kept["metadata"].get("labels") or {})
    assert inventory_record(api, ns, "shop") is None


def test_the_adopt_annotation_opts_one_object_in(api: KubeApi, ns: str, pool: DriverPool) -> None:
    foreign_configmap(api, ns, "shop-settings", owner="their-key")
    template = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop-settings\n"
        '  annotations: {reconciler.io/adopt: "true"}\ndata:\n  mode: "${params.mode}"\n'
    )
    outcome = reconcile(repo_files(ns, ns, {"shop": template}), ns, pool, "r1")
    assert outcome.phase == "Synced", outcome.message
    assert [e["action"] for e in outcome.audit] == ["create", "adopt"]


def test_objects_we_created_are_still_pruned(api: KubeApi, ns: str, pool: DriverPool) -> None:
    keep = SETTINGS.decode()
    reconcile(repo_files(ns, ns, {"shop": SETTINGS.decode(), "keep": keep}), ns, pool, "r1")
    assert api.get(cm_path(ns, "shop-settings")) is not None
    removed = reconcile(repo_files(ns, ns, {"keep": keep}), ns, pool, "r2")
    assert removed.phase == "Synced", removed.message
    assert api.get(cm_path(ns, "shop-settings")) is None


def test_a_dry_run_names_the_conflict_and_the_adoption(driver: KubernetesDriver, api: KubeApi, ns: str) -> None:
    foreign_configmap(api, ns, "shop-settings", owner="their-key")
    files = {"cm.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shop-settings}\ndata: {mode: x}\n"}
    plain = k8s_support.unit(ns, files)
    with pytest.raises(Exception, match="exists, not managed by reconciler"):
        driver.apply(plain, dry_run=True)
    adopting = k8s_support.unit(ns, {"cm.yaml": files["cm.yaml"].replace(b"metadata: {", b"metadata: {annotations: "
                                                                          b"{reconciler.io/adopt: 'true'}, ")})  # fmt: skip
    result = driver.apply(adopting, dry_run=True)
    assert f"adopt 1 (ConfigMap/{ns}/shop-settings)" in result.message and result.changed


def test_an_adoption_interrupted_by_a_crash_is_still_known_as_an_adoption(
    kube_server: KubeServer, api: KubeApi, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller dies right after taking the object over, before its records are written: the restarted
    controller still knows the object was adopted, and removing the application leaves the other team's data."""
    foreign_configmap(api, ns, "shop-settings", owner="their-key")
    dying = driver_for(kube_server, qps=1000, burst=1000)
    dying.store._ensure_namespace()
    adopt = b'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop-settings\n  annotations: {reconciler.io/adopt: "true"}\ndata: {mode: x}\n'
    files = {"a.yaml": adopt, "b.yaml": configmap("shop-other", mode="x")}
    kill_after_applies(dying, monkeypatch, 1)  # the adoption is written, then the process dies
    with pytest.raises(Killed):
        dying.apply(k8s_support.unit(ns, files))
    dying.close()
    assert LABEL_MANAGED_BY in (api.get(cm_path(ns, "shop-settings")) or {})["metadata"]["labels"]

    restarted = driver_for(kube_server, qps=1000, burst=1000)
    try:
        restarted.remove(ns, "shop")
    finally:
        restarted.close()
    kept = api.get(cm_path(ns, "shop-settings")) or pytest.fail("the other team's ConfigMap was deleted")
    assert kept["data"] == {"owner": "their-key"}


def test_through_controller_cycles_a_namespace_change_is_applied_audited_and_only_then_synced(
    kube_server: KubeServer, api: KubeApi, ns: str, tmp_path: Path
) -> None:
    """Finding 2 as a user sees it: ``reconciler run --once`` on a real Git repository, then a commit that changes
    only the environment's ``namespace`` parameter, then another cycle."""
    ns2 = new_namespace(api)
    apps = {"shop": SETTINGS.decode()}
    fleet = Fleet(tmp_path, Upstream(tmp_path), tmp_path / "controller.yaml", tmp_path / "targets")
    fleet.upstream.commit(repo_files(ns, ns, apps), "initial")
    fleet.upstream.push()
    pattern = {"match": "k8s-*", "driver": "kubernetes", "kubeconfig": str(kube_server.kubeconfig), "qps": 1000}
    fleet.write_config(targetPatterns=[pattern])
    assert fleet.once() == 0
    assert fleet.env_status(ns)["phase"] == "Synced" and api.get(cm_path(ns, "shop-settings")) is not None
    before = len(fleet.audit())

    head = fleet.commit({"environments/env.yaml": repo_files(ns, ns2, apps)["environments/env.yaml"]}, "move")
    assert fleet.once() == 0
    status = fleet.env_status(ns)
    assert status["phase"] == "Synced" and status["lastAppliedRevision"] == head, status
    new = fleet.audit()[before:]
    assert [(e["action"], e["result"], e["revision"]) for e in new] == [("update", "succeeded", head)], new
    assert api.get(cm_path(ns2, "shop-settings")) is not None
    assert api.get(cm_path(ns, "shop-settings")) is None


def test_an_adoption_refused_for_a_shared_field_is_audited_when_it_finally_happens(
    api: KubeApi, ns: str, pool: DriverPool
) -> None:
    """Adopting an object whose field we also set is a field conflict (nothing written); once the other team
    drops that field, the retry adopts the object, and that adoption is audited like a first one."""
    foreign_configmap(api, ns, "shop-settings", owner="their-key", mode="theirs")
    template = 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop-settings\ndata:\n  mode: "${params.mode}"\n'
    files = repo_files(ns, ns, {"shop": template}, adopt={"shop"})
    refused = reconcile(files, ns, pool, "r1")
    assert refused.phase == "Failed" and "owned by another field manager" in refused.message, refused.message
    assert (api.get(cm_path(ns, "shop-settings")) or {})["data"] == {"owner": "their-key", "mode": "theirs"}

    edit(api, cm_path(ns, "shop-settings"), {"data": {"mode": None}}, manager="other-team")
    adopted = reconcile(files, ns, pool, "r1")
    assert adopted.phase == "Synced", adopted.message
    assert [e["action"] for e in adopted.audit] == ["update", "adopt"], adopted.audit
    assert (api.get(cm_path(ns, "shop-settings")) or {})["data"] == {"owner": "their-key", "mode": "blue"}
