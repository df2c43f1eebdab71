"""The pure parts of findings 2 and 3 of issue 14 (see ``test_kubernetes_ownership`` for the real API server):
a driver's identity folded into the fingerprint, the ``reconciler.io/adopt`` annotation, the inventory's
``adopted`` flag and the ``adopt`` component field of the Application manifest.
"""

from __future__ import annotations

from typing import Any

from reconciler.core.desired import DesiredUnit, with_identity
from reconciler.core.loader import load_repo
from reconciler.core.tree import MemoryTree
from reconciler.drivers.base import ApplyResult, identified
from reconciler.drivers.k8s_objects import Entry, Inventory, Owner, Ref, decode_record, wants_adoption
from reconciler.drivers.memory import MemoryDriver
from reconciler.engine.reconcile import EnvOutcome, Job, RenderMemo, reconcile_environment
from reconciler.engine.targets import DriverPool
from tests.drivers import make_unit
from tests.drivers.test_kubernetes_ownership import CONFIG, SETTINGS, repo_files


class _Identifies:
    kind, target = "fake", "t"

    def identity(self, unit: DesiredUnit) -> str:
        return str(unit.parameters.get("namespace", ""))


def test_a_drivers_identity_is_folded_into_the_fingerprint() -> None:
    one = make_unit({"api": {"a.yaml": b"x"}}, parameters={"namespace": "ns1"})
    two = make_unit({"api": {"a.yaml": b"x"}}, parameters={"namespace": "ns2"})
    assert one.fingerprint == two.fingerprint  # the rendered files alone do not tell them apart
    fake: Any = _Identifies()
    assert identified(fake, one).fingerprint != identified(fake, two).fingerprint
    assert identified(fake, one).fingerprint == identified(fake, one).fingerprint
    assert with_identity(one, "") is one  # nothing added: the fingerprint stays as it was
    plain: Any = object()  # a driver without an identity
    assert identified(plain, one) is one


def test_the_adopt_annotation_and_the_inventory_flag() -> None:
    assert wants_adoption({"metadata": {"annotations": {"reconciler.io/adopt": "true"}}})
    assert wants_adoption({"metadata": {"annotations": {"reconciler.io/adopt": True}}})
    assert not wants_adoption({"metadata": {"annotations": {"reconciler.io/adopt": "false"}}})
    assert not wants_adoption({"metadata": {}})
    owner = Owner("t", "e", "a")
    record = Inventory(owner, "1", "f", 0.0, (Entry(Ref("v1", "ConfigMap", "n", "x"), "api", "d", "s", True),
                                            Entry(Ref("v1", "ConfigMap", "n", "y"), "api", "d", "s")))  # fmt: skip
    assert decode_record(record.text(), owner, "test") == record
    assert '"adopted"' not in Inventory(owner, "1", "f", 0.0, record.entries[1:]).text()  # old format unchanged
    assert ApplyResult(True).adopted == ()


def test_adopt_is_a_validated_component_field() -> None:
    files = repo_files("e1", "ns1", {"shop": SETTINGS.decode()}, adopt={"shop"})
    loaded = load_repo(MemoryTree(files))
    assert loaded.repo is not None, loaded.problems
    assert loaded.repo.applications["shop"].components[0].adopt
    bad = dict(files)
    bad["applications/shop/application.yaml"] = files["applications/shop/application.yaml"].replace(
        b"adopt: true", b"adopt: 'yes'"
    )
    refused = load_repo(MemoryTree(bad))
    assert refused.repo is None or any("adopt" in str(p) for p in refused.problems)
    assert any("applications/shop/application.yaml" in str(p) for p in refused.problems), refused.problems


class _NamespacedMemory(MemoryDriver):
    """The in-memory twin, adding what the kubernetes driver adds: the ``namespace`` parameter."""

    def identity(self, unit: DesiredUnit) -> str:
        return f"ns={unit.parameters.get('namespace')}"


def test_the_engine_compares_identified_fingerprints_also_from_its_render_memo() -> None:
    """Through the driver pool (the instrumented wrapper forwards ``identity``) and the render memo (which keeps
    the identified fingerprint, so an unchanged unit is not re-applied every cycle); a namespace change applies."""
    driver = _NamespacedMemory("k8s-test")
    pool = DriverPool(CONFIG, factory=lambda target: driver)
    memo = RenderMemo()

    def run(namespace: str, token: str) -> EnvOutcome:
        tree = MemoryTree(repo_files("e1", namespace, {"shop": SETTINGS.decode()}))
        repo = load_repo(tree).repo
        assert repo is not None
        job = Job(env=repo.environments["e1"], repo=repo, tree=tree, revision=token, memo=memo,
                  render_tokens={"shop": token})  # fmt: skip
        return reconcile_environment(job, pool)

    assert [e["action"] for e in run("ns1", "t1").audit] == ["create"]
    again = run("ns1", "t1")  # the memo's stub: no render, same identified fingerprint
    assert again.phase == "Synced" and not again.audit and driver.calls.count(("apply", "e1", "shop")) == 1
    moved = run("ns2", "t2")  # the controller's token covers the parameters: a new token
    assert [e["action"] for e in moved.audit] == ["update"], moved.message
    assert driver.units[("e1", "shop")].parameters["namespace"] == "ns2"
