"""The controller's promises as invariants, checked after every step of random sequences (Hypothesis stateful).

Steps: signed and unsigned commits (version bumps in an open and a protected stage, template edits, an invalid
template, freezes, promotion overrides), clock moves past backoff and soak, poll / webhook / manual cycles,
controller restarts from the status branch, hand edits (drift), transient and permanent target failures. Real
git (signatures verified by git), a real status branch, the in-memory driver twin. After every step:

- I1 a protected environment holds only content whose production state was introduced by a signed commit;
- I2 no version enters production before it ran 24 h in every dev environment, unless a signed override;
- I3 a frozen production environment receives nothing but drift repair;
- I4 Synced means the twin holds exactly the desired units, in sync;
- I5 nothing foreign is deleted or changed;
- I6 every effect on a target has exactly one audit entry, with author and (protected stages) signer;
- I7 a permanent error is not retried until the inputs change or someone triggers it;
- I8 a suspended environment gets no effect at all (no change, no drift repair) until it is resumed, whatever
  commits, restarts and triggers come meanwhile;
- I9 a dev environment (``ownerApproval``) never holds template content an outsider to ref's Team wrote, unless a
  commit signed by ops that changed ref came after it;
- I10 a cycle that ran the drift check reports no environment Synced that holds a drifted unit (a commit's
  reconcile of a Synced environment looks only at the applications it changed; drift elsewhere waits for the check).

The CI profile is bounded and derandomised; ``-m slow`` runs a longer one.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from reconciler.core.operations import Action
from reconciler.core.plan import Phase
from tests.invariants.harness import DEV, FOREIGN, PRODUCTION, SOAK, Fleet, failure, token_of

VERSIONS = st.sampled_from(["3.0", "3.10", "3.11"])
UNITS = st.sampled_from([("lille-dev", "ref", "k8s-nord"), ("lille-production", "ref", "k8s-nord"),
                         ("rennes-production", "ref", "k8s-ouest"), ("rennes-dev", "famille", "aix-rennes")])  # fmt: skip
SUSPENDABLE = st.sampled_from(["lille-dev", "lille-production", "rennes-production"])


class Invariants(RuleBasedStateMachine):
    fleet: Fleet

    @initialize()
    def start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="invariants-"))
        self.fleet = Fleet(self.tmp)
        self.before: dict[str, dict[str, tuple[str, str]]] = {}  # production env -> app -> (version, fingerprint)
        self.stalled_keys: set[tuple[str, str]] = set()  # (env, app) that failed permanently, no new input since
        self.calls_at_stall = 0
        self.suspended: set[str] = set()  # environments an operator suspended and did not resume
        self.cycle("poll")

    def teardown(self) -> None:
        if hasattr(self, "fleet"):
            self.fleet.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- rules -------------------------------------------------------------------------------------------------
    @rule(version=VERSIONS, signed=st.booleans())
    def bump_dev(self, version: str, signed: bool) -> None:
        self.fleet.bump("dev", version, signed, override=False)
        self.stalled_keys.clear()

    @rule(version=VERSIONS, signed=st.booleans(), override=st.booleans())
    def bump_production(self, version: str, signed: bool, override: bool) -> None:
        self.fleet.bump("production", version, signed, override)
        self.stalled_keys.clear()

    @rule(signed=st.booleans(), broken=st.booleans(), outsider=st.booleans())
    def edit_template(self, signed: bool, broken: bool, outsider: bool = False) -> None:
        self.fleet.edit(signed, broken, outsider)
        self.stalled_keys.clear()

    @rule(hours=st.sampled_from([None, 2.0, 30.0]), signed=st.booleans())
    def freeze(self, hours: float | None, signed: bool) -> None:
        self.fleet.set_freeze(hours, signed)

    @rule(env=SUSPENDABLE, resume=st.booleans())
    def operator(self, env: str, resume: bool) -> None:
        """An operator suspends (or resumes) an environment through the controller's request API."""
        if self.fleet.controller.good is None:
            return
        action = Action.RESUME if resume else Action.SUSPEND
        self.fleet.controller.request(action, env, None, "token:stateful", "hold" if not resume else "")
        if resume:
            self.suspended.discard(env)
            self.stalled_keys.clear()  # (a resume asks for a sync: someone triggered it)
        else:
            self.suspended.add(env)

    @rule(hours=st.sampled_from([0.05, 1.5, 25.0]))
    def advance_clock(self, hours: float) -> None:
        """Time passes (past backoffs, drift checks, soak, freezes), and the next poll cycle runs."""
        self.fleet.clock[0] += hours * 3600
        model = self.fleet.model
        for attr in ("freeze", "served_freeze"):
            window = getattr(model, attr)
            if window is not None and self.fleet.clock[0] >= window[1]:
                setattr(model, attr, None)
        self.cycle("poll")

    @rule(trigger=st.sampled_from(["poll", "webhook", "manual"]))
    def cycle(self, trigger: str) -> None:
        self._snapshot_production()
        calls = self._apply_calls()
        freeze = self.fleet.model.served_freeze
        frozen = freeze is not None and freeze[0] <= self.fleet.clock[0] < freeze[1]
        held = {env: (dict(self._units_of(env)), self._calls_of(env)) for env in self.suspended}
        report = self.fleet.controller.cycle(trigger)
        for env, (units, env_calls) in held.items():
            assert self._units_of(env) == units and self._calls_of(env) == env_calls, f"I8: suspended {env} was touched"
        if trigger != "manual" and self.stalled_keys:
            assert self._apply_calls() == calls, "I7: a permanent error was retried without new inputs or a trigger"
        if frozen:
            self.i3_frozen_production_changes_only_by_drift_repair()
        synced = {n for n, o in report.outcomes.items() if o.phase is Phase.SYNCED}
        self.i4_synced_means_live_equals_desired(synced)
        if self.fleet.controller.last_drift_check == self.fleet.clock[0]:  # this cycle ran the drift check
            self.i10_a_drift_check_leaves_no_synced_environment_drifted(synced)
        self._after_cycle()

    @rule()
    def restart(self) -> None:
        """A new controller process: state from the status branch, targets as they are; its first cycle runs."""
        self.fleet.restart()
        self.cycle("poll")

    @rule(unit=UNITS)
    def hand_edit(self, unit: tuple[str, str, str]) -> None:
        env, app, target = unit
        driver = self.fleet.driver(target)
        if (env, app) in driver.units:
            driver.drifted.add((env, app))

    @rule(unit=UNITS, permanent=st.booleans())
    def break_target(self, unit: tuple[str, str, str], permanent: bool) -> None:
        env, app, target = unit
        self.fleet.driver(target).fail_with[(env, app)] = failure(permanent)

    @rule(unit=UNITS)
    def repair_target(self, unit: tuple[str, str, str]) -> None:
        env, app, target = unit
        self.fleet.driver(target).fail_with.pop((env, app), None)

    # --- bookkeeping of the model -----------------------------------------------------------------------------
    def _units_of(self, env: str) -> dict[tuple[str, str], tuple[str, str, bool]]:
        return {(target, app): (u.version, u.fingerprint, (env, app) in d.drifted)
                for target, d in self.fleet.drivers.items() for (e, app), u in d.units.items() if e == env}  # fmt: skip

    def _calls_of(self, env: str) -> int:
        return sum(
            1 for d in self.fleet.drivers.values() for c in d.calls if c[0] in ("apply", "remove") and c[1] == env
        )

    def _apply_calls(self) -> int:
        keys = self.stalled_keys
        return sum(1 for d in self.fleet.drivers.values() for c in d.calls if c[0] == "apply" and c[1:] in keys)

    def _snapshot_production(self) -> None:
        self.before = {env: {a: (u.version, u.fingerprint) for a, u in self.fleet.units(env).items()}
                       for env in PRODUCTION}  # fmt: skip

    def _after_cycle(self) -> None:
        """Keep the model's own record: dev stints (soak), production versions seen, permanent failures."""
        now = self.fleet.clock[0]
        model = self.fleet.model
        for env in DEV:
            unit = self.fleet.units(env).get("ref")
            stints = model.dev_stints.setdefault(env, [])
            version = unit.version if unit is not None else None
            if stints and stints[-1][2] is None and stints[-1][0] != version:
                stints[-1] = (stints[-1][0], stints[-1][1], now)
            if version is not None and not (stints and stints[-1][2] is None):
                stints.append((version, now, None))
        for env in PRODUCTION:
            self._check_promotion(env, now)
        states = self.fleet.controller.states
        for driver in self.fleet.drivers.values():
            for key, exc in driver.fail_with.items():
                outcome_stalled = key[0] in states and getattr(states[key[0]], "stalled", False)
                if type(exc).__name__ == "PermanentError" and outcome_stalled:
                    self.stalled_keys.add(key)

    def _check_promotion(self, env: str, now: float) -> None:
        """I2, at the moment a production environment's version changes."""
        model = self.fleet.model
        unit = self.fleet.units(env).get("ref")
        before = self.before.get(env, {}).get("ref")
        seen = model.prod_seen.setdefault(env, set())
        if unit is None:
            return
        changed = before is not None and before[0] != unit.version
        if changed and unit.version not in seen and unit.version not in model.overridden:
            for dev in DEV:
                soaked = any(v == unit.version and (end or now) - start >= SOAK - 1
                             for v, start, end in model.dev_stints.get(dev, []))  # fmt: skip
                assert soaked, f"I2: {env} got ref {unit.version} before it soaked 24h in {dev}"
        seen.add(unit.version)

    # --- invariants ----------------------------------------------------------------------------------------------
    @invariant()
    def i1_protected_environments_hold_only_signed_content(self) -> None:
        for env in PRODUCTION:
            unit = self.fleet.units(env).get("ref")
            if unit is not None:
                state = (unit.version, token_of(unit))
                assert state in self.fleet.model.approved, f"I1: {env} holds unsigned content {state}"

    def i3_frozen_production_changes_only_by_drift_repair(self) -> None:
        """I3, checked across each cycle that starts inside a freeze of the revision being served."""
        for env in PRODUCTION:
            now = {a: (u.version, u.fingerprint) for a, u in self.fleet.units(env).items()}
            assert now == self.before.get(env, now), f"I3: {env} changed during a freeze"

    def i4_synced_means_live_equals_desired(self, synced: set[str]) -> None:
        """I4, for every environment a cycle reported Synced: the twin holds the served versions and content."""
        dev, prod, token = self.fleet.model.served
        for name in synced:
            units = self.fleet.units(name)
            if name == FOREIGN[0]:
                units.pop(FOREIGN[1], None)
            want = {"ref": dev, "famille": "2.4.0"} if name in DEV else {"ref": prod}
            got = {a: u.version for a, u in units.items()}
            assert got == want, f"I4: {name} is Synced but holds {got}, not {want}"
            assert token_of(units["ref"]) == token, f"I4: {name} is Synced with stale content"

    def i10_a_drift_check_leaves_no_synced_environment_drifted(self, synced: set[str]) -> None:
        """I10: drift is found by the first drift check after it, however the environment was reconciled since (a
        new commit's reconcile looks only at the applications it changed): an environment that check reports
        Synced holds no drifted unit."""
        for name in synced:
            drifted = [app for d in self.fleet.drivers.values() for env, app in d.drifted if env == name]
            assert not drifted, f"I10: {name} is Synced after a drift check, but {drifted} drifted"

    @invariant()
    def i9_outsiders_content_needs_the_owners_signature(self) -> None:
        for env in DEV:
            unit = self.fleet.units(env).get("ref")
            token = token_of(unit) if unit is not None else None
            assert token not in self.fleet.model.outsider_tokens, f"I9: {env} holds {token}, an outsider's edit"

    @invariant()
    def i5_nothing_foreign_is_touched(self) -> None:
        nord = self.fleet.driver("k8s-nord")
        assert FOREIGN in nord.units and nord.units[FOREIGN].fingerprint == "foreign", "I5: a foreign unit changed"
        assert ("remove", *FOREIGN) not in nord.calls, "I5: the controller tried to remove a foreign unit"

    @invariant()
    def i6_every_effect_has_exactly_one_audit_entry(self) -> None:
        effects = Counter((e, a) for d in self.fleet.drivers.values() for _, e, a in d.effects)
        requests = {str(a) for a in Action}  # operators' requests are audited too, but are no effect on a target
        entries = [x for x in self.fleet.audit() if x["result"] == "succeeded" and x["action"] not in requests]
        audited = Counter((x["environment"], x["application"]) for x in entries)
        assert effects == audited, f"I6: effects {dict(effects)} but audit entries {dict(audited)}"
        for entry in entries:
            assert entry["author"], "I6: an audit entry without its author"
            if entry["environment"] in PRODUCTION and entry["trigger"] != "drift":
                assert entry["signer"], f"I6: a protected change audited without its signer: {entry}"


Invariants.TestCase.settings = settings(
    max_examples=12,
    stateful_step_count=14,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_invariants = Invariants.TestCase


@pytest.mark.slow
def test_invariants_long_run() -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        Invariants,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
