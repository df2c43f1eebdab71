"""Counterexamples the stateful machine found in earlier code, kept as plain scripted regressions.

Each is the shrunk sequence Hypothesis printed, replayed step by step with the invariants checked after each.
"""

from __future__ import annotations

from tests.invariants.test_stateful import Invariants


def test_an_unsigned_edit_is_not_applied_to_production_one_retry_after_it_was_blocked() -> None:
    """Finding 1, as the machine found it on 28c311d: an unsigned template edit was Blocked in production, and the
    retry after the backoff (inputs unchanged, so no signature check) applied it."""
    machine = Invariants()
    try:
        machine.start()
        machine.edit_template(broken=False, signed=False)
        machine.restart()  # the restarted controller's first cycle: production Blocked
        states = machine.fleet.controller.states
        assert all(states[env].phase == "Blocked" for env in ("lille-production", "rennes-production"))
        machine.i1_protected_environments_hold_only_signed_content()
        machine.advance_clock(hours=0.05)  # past the 60 s backoff: the retry
        machine.i1_protected_environments_hold_only_signed_content()
        machine.i6_every_effect_has_exactly_one_audit_entry()
        assert all(states[env].phase == "Blocked" for env in ("lille-production", "rennes-production"))
    finally:
        machine.teardown()


def test_a_suspension_holds_the_drift_repair_of_the_controller_that_restarts() -> None:
    """I8, as the machine found it while suspensions were being built: suspend lille-dev, a hand edit, a restart,
    and the new controller's first cycle repaired the drift. The request had been kept only in memory because the
    status store given to the controller could not read files back; every store must now (engine.publish.Store)."""
    machine = Invariants()
    try:
        machine.start()
        machine.operator(env="lille-dev", resume=False)
        machine.hand_edit(unit=("lille-dev", "ref", "k8s-nord"))
        machine.restart()  # checks I8 inside its cycle
        assert ("lille-dev", None) in machine.fleet.controller.gov.suspensions
        assert machine.fleet.controller.states["lille-dev"].phase == "Blocked"
        machine.operator(env="lille-dev", resume=True)
        machine.cycle("poll")
        machine.i6_every_effect_has_exactly_one_audit_entry()
        assert machine.fleet.controller.states["lille-dev"].phase == "Synced"
    finally:
        machine.teardown()


def test_a_suspension_elsewhere_does_not_count_as_a_retry_of_a_stalled_environment() -> None:
    """The machine's own model, as the long run found it: a permanent failure in lille-dev, then an operator
    suspends rennes-production; the next poll cycles must neither retry lille-dev nor touch rennes-production
    (the checker once compared lille-dev's retries with the suspended environment's call count)."""
    machine = Invariants()
    try:
        machine.start()
        machine.break_target(permanent=True, unit=("lille-dev", "ref", "k8s-nord"))
        machine.cycle("poll")
        machine.edit_template(broken=False, signed=True)
        machine.hand_edit(unit=("lille-dev", "ref", "k8s-nord"))
        machine.operator(env="rennes-production", resume=False)
        machine.cycle("poll")
        assert machine.stalled_keys == {("lille-dev", "ref")}
        nord = machine.fleet.driver("k8s-nord")
        before = len(nord.calls)
        machine.cycle("poll")
        machine.cycle("webhook")
        assert nord.calls[before:] == [], "a stalled environment was retried by polls and webhooks"
        assert machine.fleet.controller.states["rennes-production"].phase == "Blocked"
    finally:
        machine.teardown()


def test_a_freeze_does_not_reopen_drift_repair_in_a_suspended_environment() -> None:
    """I8, as the long run found it: production frozen (freezes let drift repair through), lille-production hand
    edited, then suspended; the next cycle repaired the drift: the freeze's "drift repair allowed" overwrote the
    suspension's "nothing moves" in the verdict."""
    machine = Invariants()
    try:
        machine.start()
        machine.advance_clock(hours=0.05)
        machine.freeze(hours=2.0, signed=True)
        machine.hand_edit(unit=("lille-production", "ref", "k8s-nord"))
        machine.operator(env="lille-production", resume=False)
        machine.advance_clock(hours=0.05)  # checks I8 inside its cycle
        assert ("lille-production", "ref") in machine.fleet.driver("k8s-nord").drifted
    finally:
        machine.teardown()
