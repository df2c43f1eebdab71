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
