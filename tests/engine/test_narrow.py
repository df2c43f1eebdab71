"""A commit's reconcile of a Synced environment looks only at the applications the commit changed (the baseline).

The fleet of the invariant tests (real git, signed commits, real status branch, the memory twin of every target):
``lille-dev`` runs ``ref`` on k8s-nord and ``famille`` (which requires ``ref >= 3.2``) on aix-lille. What a narrow
reconcile must still do: decide and apply the changed application with its verdicts, honour the unchanged ones'
live versions for ``requires``, prune a unit that moved to another target, and leave drift elsewhere to the next
drift check; what it must not do: be used after a failure, a restart or a manual trigger.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reconciler.core.plan import Phase
from reconciler.core.problems import TemporaryError
from tests.invariants.harness import Fleet

FAMILLE_250 = b"""apiVersion: reconciler.io/v1
kind: Release
metadata:
  name: famille-2.5.0
spec:
  application: famille
  version: 2.5.0
  components:
    batch: {artifact: fambatch-2.5.0.tar.gz}
  requires:
    - application: ref
      version: ">=3.2"
"""


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    root = Path(tempfile.mkdtemp(prefix="narrow-"))
    fleet = Fleet(root)
    try:
        report = fleet.controller.cycle("poll")  # the first cycle: everything applied, a drift check
        assert report.outcomes["lille-dev"].phase is Phase.SYNCED
        yield fleet
    finally:
        fleet.close()
        shutil.rmtree(root, ignore_errors=True)


def observed(fleet: Fleet, env: str) -> set[str]:
    """The applications of ``env`` observed on any target since the last :func:`forget`."""
    return {app for d in fleet.drivers.values() for e, app, _ in d.observed if e == env}


def forget(fleet: Fleet) -> None:
    for driver in fleet.drivers.values():
        driver.observed.clear()


def dev_stage(famille: str = "2.4.0", ref: str = "3.10") -> bytes:
    doc = {"apiVersion": "reconciler.io/v1", "kind": "Stage", "metadata": {"name": "dev"},
           "spec": {"releases": {"ref": ref, "famille": famille}, "ownerApproval": True}}  # fmt: skip
    return yaml.safe_dump(doc, sort_keys=False).encode()


def test_a_bump_observes_and_applies_only_the_changed_application(fleet: Fleet) -> None:
    aix = fleet.driver("aix-lille")
    aix.drifted.add(("lille-dev", "famille"))  # a hand edit of the application the commit does not change
    forget(fleet)
    fleet.bump("dev", "3.11", signed=False, override=False)  # alice owns ref: no signature needed in dev
    report = fleet.controller.cycle("webhook")
    outcome = report.outcomes["lille-dev"]
    assert outcome.phase is Phase.SYNCED
    assert {a: s.live for a, s in outcome.applications.items()} == {"ref": "3.11", "famille": "2.4.0"}
    assert observed(fleet, "lille-dev") == {"ref"}  # on both of its targets (a unit could have moved), nothing else
    looked = {t for t, d in fleet.drivers.items() if ("lille-dev", "ref", True) in d.observed}
    assert looked == {"k8s-nord", "aix-lille"}
    assert fleet.units("lille-dev")["ref"].version == "3.11"
    assert ("lille-dev", "famille") in aix.drifted  # not looked at by this reconcile
    doc = fleet.controller.states["lille-dev"].doc or {}
    assert doc["applications"]["famille"]["phase"] == "Synced"  # the status still lists every application

    fleet.clock[0] += 2 * 3600  # past the drift interval (1h): the drift check finds and repairs it
    report = fleet.controller.cycle("poll")
    assert ("lille-dev", "famille") not in aix.drifted
    repairs = [e for e in fleet.audit() if e["environment"] == "lille-dev" and e["trigger"] == "drift"]
    assert [e["application"] for e in repairs] == ["famille"]
    assert report.outcomes["lille-dev"].phase is Phase.SYNCED


def test_requires_counts_the_unchanged_applications_live_versions(fleet: Fleet) -> None:
    """famille 2.5.0 requires ref >= 3.2; ref 3.10 runs and is not part of the commit: famille is applied."""
    forget(fleet)
    files = {"releases/famille/2.5.0.yaml": FAMILLE_250, "stages/dev.yaml": dev_stage(famille="2.5.0")}
    fleet.commit(files, "famille 2.5.0 in dev", signed=True, touches_production=False)
    report = fleet.controller.cycle("webhook")
    outcome = report.outcomes["lille-dev"]
    assert observed(fleet, "lille-dev") == {"famille"}
    assert outcome.phase is Phase.SYNCED, outcome.message
    assert fleet.units("lille-dev")["famille"].version == "2.5.0"


def test_a_unit_that_moved_to_another_target_is_pruned_from_the_old_one(fleet: Fleet) -> None:
    path = fleet.upstream.work / "applications/famille/application.yaml"
    text = path.read_text().replace("target: aix", "target: kubernetes")
    forget(fleet)
    fleet.commit({"applications/famille/application.yaml": text.encode()}, "famille on kubernetes", signed=True,
                 touches_production=False)  # fmt: skip
    report = fleet.controller.cycle("webhook")
    assert observed(fleet, "lille-dev") == {"famille"}
    assert report.outcomes["lille-dev"].phase is Phase.SYNCED, report.outcomes["lille-dev"].message
    assert ("lille-dev", "famille") not in fleet.driver("aix-lille").units
    assert ("lille-dev", "famille") in fleet.driver("k8s-nord").units
    actions = sorted((e["action"], e["target"]) for e in fleet.audit()
                     if e["environment"] == "lille-dev" and e["application"] == "famille" and e["trigger"] != "drift"
                     and e["revision"] == report.revision)  # fmt: skip
    assert actions == [("create", "k8s-nord"), ("remove", "aix-lille")]


def test_an_unsigned_bump_in_production_is_held_by_a_narrow_reconcile(fleet: Fleet) -> None:
    """The verdicts are computed for the changed application as in any attempt: protected stages need signatures."""
    fleet.bump("production", "3.10", signed=False, override=False)
    report = fleet.controller.cycle("webhook")
    assert report.outcomes["lille-production"].phase is Phase.BLOCKED
    assert fleet.units("lille-production")["ref"].version == "3.0"


@pytest.mark.parametrize("how", ["failure", "restart", "manual"])
def test_the_whole_environment_is_looked_at_after_a_failure_a_restart_or_a_manual_trigger(
    fleet: Fleet, how: str
) -> None:
    nord = fleet.driver("k8s-nord")
    if how == "failure":  # the bump fails once; the retry (another commit) is a full reconcile
        nord.fail_with[("lille-dev", "ref")] = TemporaryError("unreachable", delay=1)
        fleet.bump("dev", "3.11", signed=False, override=False)
        assert fleet.controller.cycle("webhook").outcomes["lille-dev"].phase is Phase.FAILED
        nord.fail_with.clear()
    elif how == "restart":
        fleet.restart()
    forget(fleet)
    fleet.bump("dev", "3.10" if how == "failure" else "3.11", signed=False, override=False)
    report = fleet.controller.cycle("manual" if how == "manual" else "webhook")
    assert observed(fleet, "lille-dev") == {"ref", "famille"}
    assert report.outcomes["lille-dev"].phase is Phase.SYNCED
