"""One environment's reconcile against the in-memory driver twin: isolation of failures inside an environment,
dependency waits, the empty-set guard, dry-run. (Real drivers are exercised in tests/drivers and test_controller.)"""

from __future__ import annotations

from dataclasses import replace

from reconciler.core.config import ControllerConfig
from reconciler.core.loader import load_repo
from reconciler.core.plan import Phase
from reconciler.core.problems import PermanentError, TemporaryError
from reconciler.core.tree import MemoryTree
from reconciler.drivers.memory import MemoryDriver
from reconciler.engine.reconcile import EnvOutcome, Job, reconcile_environment
from reconciler.engine.targets import DriverPool
from tests.minirepo import minimal_repo

CONFIG = ControllerConfig(
    path="/etc/reconciler.yaml", source_url="unused", patterns=({"match": "*", "driver": "memory"},)
)


def setup() -> tuple[Job, dict[str, MemoryDriver], DriverPool]:
    tree = MemoryTree(minimal_repo())
    repo = load_repo(tree).repo
    assert repo is not None
    drivers: dict[str, MemoryDriver] = {}

    def factory(target):  # type: ignore[no-untyped-def]
        return drivers.setdefault(target.name, MemoryDriver(target.name))

    job = Job(env=repo.environments["lille-dev"], repo=repo, tree=tree, revision="r1")
    return job, drivers, DriverPool(CONFIG, factory=factory)


def test_everything_applied_in_dependency_order() -> None:
    job, _, pool = setup()
    outcome = reconcile_environment(job, pool)
    assert outcome.phase == "Synced" and outcome.changed
    order = [(e["application"], e["action"]) for e in outcome.audit]
    assert order == [("ref", "create"), ("famille", "create")]  # famille dependsOn/requires ref
    # the outcome keeps what the plans say, not the rendered files (they would pile up over a whole fleet)
    assert [(p.application, p.action, p.to_version) for p in outcome.plans] == [
        ("famille", "create", "2.4.0"),
        ("ref", "create", "3.10"),
    ]
    assert all(p.desired is not None and p.desired.components == () for p in outcome.plans)
    again = reconcile_environment(job, pool)
    assert again.phase == "Synced" and not again.changed
    assert again.plans == ()  # nothing to do: no plan kept (a fleet's unchanged units would pile up)


def test_a_failing_application_makes_its_dependents_wait_not_others() -> None:
    job, drivers, pool = setup()
    pool.get("k8s-nord")  # create the driver so we can make it fail
    drivers["k8s-nord"].fail_with[("lille-dev", "ref")] = TemporaryError("apiserver down")
    outcome = reconcile_environment(job, pool)
    assert outcome.phase == "Failed" and outcome.transient
    assert outcome.applications["ref"].phase == "Failed" and "apiserver down" in outcome.applications["ref"].message
    assert outcome.applications["famille"].phase == "Blocked"  # requires ref >= 3.2, which is not live
    assert ("lille-dev", "famille") not in drivers["aix-lille"].units


def test_an_empty_desired_set_prunes_nothing_unless_allowed() -> None:
    job, drivers, pool = setup()
    reconcile_environment(job, pool)
    emptied = replace(job.env, applications=())
    outcome = reconcile_environment(replace(job, env=emptied), pool)
    assert ("lille-dev", "ref") in drivers["k8s-nord"].units
    assert (
        outcome.applications["ref"].phase == "OutOfSync"
        and "allowEmpty is false" in outcome.applications["ref"].message
    )
    reconcile_environment(replace(job, env=replace(emptied, allow_empty=True)), pool)
    assert ("lille-dev", "ref") not in drivers["k8s-nord"].units


def test_dry_run_changes_nothing_and_reports_out_of_sync() -> None:
    job, drivers, pool = setup()
    outcome = reconcile_environment(replace(job, dry_run=True), pool)
    assert outcome.phase == "OutOfSync" and not outcome.changed and not outcome.audit
    assert all(not d.units for d in drivers.values())


FREEZE = """apiVersion: reconciler.io/v1
kind: FreezeWindow
metadata:
  name: release-night
spec:
  reason: Release night
  scope: {stages: [dev]}
  driftRepair: %s
  absolute:
    - {start: "2000-01-01T00:00:00Z", end: "2999-01-01T00:00:00Z"}
"""


def frozen_job(job: Job, drift_repair: bool) -> Job:
    files = dict(minimal_repo())
    files["freezes/night.yaml"] = (FREEZE % ("true" if drift_repair else "false")).encode()
    tree = MemoryTree(files)
    repo = load_repo(tree).repo
    assert repo is not None
    return replace(job, repo=repo, tree=tree, env=repo.environments[job.env.name])


def test_a_policy_hold_blocks_changes_but_allows_drift_repair() -> None:
    job, drivers, pool = setup()
    reconcile_environment(job, pool)
    drivers["k8s-nord"].drifted.add(("lille-dev", "ref"))
    outcome = reconcile_environment(frozen_job(job, drift_repair=True), pool)
    assert outcome.applications["ref"].phase == "Synced"  # drift repaired during the freeze
    assert [e["trigger"] for e in outcome.audit] == ["drift"]
    drivers["k8s-nord"].drifted.add(("lille-dev", "ref"))
    outcome = reconcile_environment(frozen_job(job, drift_repair=False), pool)
    assert outcome.applications["ref"].phase == "Blocked"
    assert outcome.applications["ref"].message.startswith("frozen until 2999-01-01T00:00+00:00 by release-night")


def test_each_target_is_inside_one_batch_from_observe_to_the_last_prune() -> None:
    job, drivers, pool = setup()
    reconcile_environment(job, pool)
    for driver in drivers.values():
        driver.calls.clear()
    reconcile_environment(replace(job, env=replace(job.env, applications=("ref",))), pool)  # famille is pruned
    for name, driver in drivers.items():
        assert driver.calls[0] == ("batch", "lille-dev", "begin"), name
        assert driver.calls[-1] == ("batch", "lille-dev", "end"), name
        assert driver.calls.count(("batch", "lille-dev", "begin")) == 1, name
    assert ("remove", "lille-dev", "famille") in drivers["aix-lille"].calls[1:-1]


def test_records_a_batch_cannot_write_fail_the_environment_and_keep_the_audit() -> None:
    job, drivers, pool = setup()
    pool.get("k8s-nord")
    drivers["k8s-nord"].fail_batch[("lille-dev", "end")] = TemporaryError("inventory write refused: 503")
    outcome = reconcile_environment(job, pool)
    assert outcome.phase == "Failed" and outcome.transient
    assert outcome.message == "records not written: inventory write refused: 503"
    assert [(e["application"], e["result"]) for e in outcome.audit] == [("ref", "succeeded"), ("famille", "succeeded")]
    drivers["k8s-nord"].fail_batch[("lille-dev", "end")] = PermanentError("inventory is not ours")
    outcome = reconcile_environment(job, pool)
    assert outcome.phase == "Failed" and not outcome.transient and "inventory is not ours" in outcome.message


def test_a_batch_that_cannot_begin_is_an_observe_failure_and_nothing_is_applied() -> None:
    job, drivers, pool = setup()
    pool.get("k8s-nord")
    drivers["k8s-nord"].fail_batch[("lille-dev", "begin")] = TemporaryError("inventory unreadable")
    outcome = reconcile_environment(job, pool)
    assert outcome.phase == "Failed" and outcome.transient
    assert outcome.message == "observe failed: inventory unreadable" and not outcome.audit
    assert all(not d.units for d in drivers.values())
    for driver in drivers.values():  # every batch begun has ended
        assert driver.calls.count(("batch", "lille-dev", "begin")) == driver.calls.count(("batch", "lille-dev", "end"))


def test_the_render_memo_forgets_environments_that_are_gone() -> None:
    from reconciler.core.desired import DesiredUnit
    from reconciler.engine.reconcile import RenderMemo, Settled

    memo = RenderMemo()
    for env in ("lille-dev", "rennes-dev"):
        memo.put(DesiredUnit(env, "ref", "3.10", "k8s", (), {}, f"fp-{env}"), "token")
        memo.settle(env, Settled("inputs", (), {}, EnvOutcome(env, Phase.SYNCED, "in sync", {})))
    memo.retain(["lille-dev", "rennes-dev", "new-env"])  # nothing gone: everything kept
    assert len(memo) == 2 and memo.settled("rennes-dev", "inputs") is not None
    memo.retain(["lille-dev"])
    assert memo.get("rennes-dev", "ref", "k8s", "token") is None and memo.settled("rennes-dev", "inputs") is None
    assert memo.get("lille-dev", "ref", "k8s", "token") == "fp-lille-dev"
    assert memo.settled("lille-dev", "inputs") is not None and len(memo) == 1
