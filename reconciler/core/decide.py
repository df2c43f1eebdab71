"""Verdicts from facts: may each application's change reach this environment now? Pure.

The engine gathers :class:`Facts` afresh for every attempt at an environment (first try, retry after backoff,
restart, drift repair, webhook or manual trigger alike): the clock, which version ran where since when (the audit
trail), the verified signatures of the commits that introduced the environment's desired state since it was last
applied, and the overrides of the revision being applied. :func:`verdicts` turns them, with the live versions the
drivers observed, into one :class:`AppVerdict` per desired application, listing *every* hold (a change that is
both unsigned and not soaked says both), whether a drift repair may still go ahead, and the overrides used.

No path skips this: the task planner (:mod:`reconciler.core.tasks`) asks it for every application that has
anything to apply. Called by the engine's reconcile; the decision table is in docs/DESIGN.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from reconciler.core.model import Environment, ReleasesRepo
from reconciler.core.operations import Suspensions, suspended
from reconciler.core.policy import (
    History,
    Hold,
    HoldKind,
    Signature,
    approval_hold,
    freeze_hold,
    ownership_hold,
    promotion_hold,
    signature_hold,
)

FREEZE_OVERRIDE = "Freeze-Override"
PROMOTION_OVERRIDE = "Promotion-Override"
ROLLBACK = "Rollback"  # written by `reconciler rollback`: "<environment>/<application> <from> -> <to>"


@dataclass(frozen=True)
class Facts:
    """What is known, for one attempt at one environment, beyond the model and the live state."""

    now: datetime
    history: History = field(default_factory=dict)
    # the commits that introduced the environment's desired state since it was last applied, verified;
    # ``None``: not looked up (a protected stage then holds every change)
    signatures: tuple[Signature, ...] | None = None
    # the revision being applied, verified: an override counts only in a commit signed by an allowed key
    head_signature: Signature | None = None
    trailers: Mapping[str, str] = field(default_factory=dict)  # of the revision being applied
    suspensions: Suspensions = field(default_factory=dict)  # what operators suspended (status branch)
    # stages with ``ownerApproval``: application -> the commits that changed it since the environment was last
    # applied, verified, with their authors; ``None``: not looked up (such a stage then holds every change)
    ownership: Mapping[str, tuple[Signature, ...]] | None = None
    ownership_error: str = ""  # why ``ownership`` could not be looked up (git failed), shown in the hold

    @property
    def overrides(self) -> dict[HoldKind, str]:
        """The overrides the revision being applied may use: kind -> why (none unless it is signed)."""
        if self.head_signature is None or not self.head_signature.good:
            return {}
        found = {HoldKind.FREEZE: self.trailers.get(FREEZE_OVERRIDE, ""),
                 HoldKind.PROMOTION: self.trailers.get(PROMOTION_OVERRIDE, "")}  # fmt: skip
        return {kind: why.strip() for kind, why in found.items() if why.strip()}

    @property
    def signer(self) -> str:
        """Who attests the content being applied: the good signers of the introducing commits (protected stages),
        else the signer of the revision being applied (when it is signed by an allowed key)."""
        names = [s.signer for s in self.signatures or () if s.good and s.signer]
        if not names and self.head_signature is not None and self.head_signature.good:
            names = [self.head_signature.signer]
        return ", ".join(dict.fromkeys(n for n in names if n))


@dataclass(frozen=True)
class AppVerdict:
    """Whether one application's change may be applied now: every hold, and the overrides that lifted others."""

    holds: tuple[Hold, ...] = ()
    drift_repair: bool = True  # a repair back to what was applied may go ahead despite the holds
    overrides: tuple[str, ...] = ()  # "promotion: why", audited with the apply

    @property
    def allowed(self) -> bool:
        return not self.holds

    @property
    def reason(self) -> str:
        return "; ".join(h.reason for h in self.holds)

    @property
    def override(self) -> str | None:
        return "; ".join(self.overrides) or None


ALLOWED = AppVerdict()


def verdict(
    repo: ReleasesRepo, env: Environment, app: str, version: str, facts: Facts, running: str | None
) -> AppVerdict:
    """The verdict for moving ``app`` in ``env`` from ``running`` (observed live; ``None``: not deployed) to
    ``version``. A first install is not a promotion; signatures hold every change in a protected stage."""
    holds: list[Hold] = []
    overrides: list[str] = []
    drift_repair = True
    brake = suspended(facts.suspensions, env.name, app)
    if brake is not None:  # nothing moves, not even a drift repair, until resumed
        holds.append(Hold(HoldKind.SUSPENDED, brake.message()))
        drift_repair = False
    overriding = facts.overrides
    frozen = freeze_hold(repo, env, app, facts.now)
    if frozen is not None:
        if HoldKind.FREEZE in overriding:
            overrides.append(f"freeze: {overriding[HoldKind.FREEZE]}")
        else:
            holds.append(frozen[0])
            drift_repair = drift_repair and frozen[1]  # a freeze never reopens what a suspension holds
    if running is not None and running != version:
        promo = promotion_hold(repo, env, app, version, facts.history, facts.now)
        if promo is not None:
            if HoldKind.PROMOTION in overriding:
                overrides.append(f"promotion: {overriding[HoldKind.PROMOTION]}")
            else:
                holds.append(promo)
    unsigned = _unsigned(repo, env, facts)
    if unsigned is not None:
        holds.append(unsigned)
    outsider = _outsider(repo, env, app, facts)
    if outsider is not None:
        holds.append(outsider)
    return AppVerdict(tuple(holds), drift_repair, tuple(overrides))


def _unsigned(repo: ReleasesRepo, env: Environment, facts: Facts) -> Hold | None:
    stage = repo.stages.get(env.stage)
    if stage is None or not stage.protected:
        return None
    if facts.signatures is None:
        return Hold(HoldKind.SIGNATURE, "signatures were not verified for this attempt")
    unsigned = signature_hold(True, facts.signatures)
    if unsigned is not None or not repo.teams:
        return unsigned
    return approval_hold(repo.approvers(stage), stage.name, facts.signatures)


def _outsider(repo: ReleasesRepo, env: Environment, app: str, facts: Facts) -> Hold | None:
    stage = repo.stages.get(env.stage)
    owners = repo.owners(app) if stage is not None and stage.owner_approval else None
    if owners is None:
        return None
    if facts.ownership is None:
        why = f": {facts.ownership_error}" if facts.ownership_error else ""
        return Hold(HoldKind.OWNERSHIP, f"who changed it was not verified for this attempt{why}")
    return ownership_hold(app, owners, facts.ownership.get(app, ()))


def removal_verdict(repo: ReleasesRepo, env: Environment, app: str, facts: Facts) -> AppVerdict:
    """The verdict for removing ``app`` from ``env`` (no longer desired there): a freeze or a missing signature in
    a protected stage holds a removal like any other change."""
    holds: list[Hold] = []
    overrides: list[str] = []
    brake = suspended(facts.suspensions, env.name, app)
    if brake is not None:
        holds.append(Hold(HoldKind.SUSPENDED, brake.message()))
    frozen = freeze_hold(repo, env, app, facts.now)
    if frozen is not None:
        if HoldKind.FREEZE in facts.overrides:
            overrides.append(f"freeze: {facts.overrides[HoldKind.FREEZE]}")
        else:
            holds.append(frozen[0])
    unsigned = _unsigned(repo, env, facts)
    if unsigned is not None:
        holds.append(unsigned)
    return AppVerdict(tuple(holds), False, tuple(overrides))


def verdicts(
    repo: ReleasesRepo, env: Environment, facts: Facts, live: Mapping[str, str | None], apps: frozenset[str]
) -> dict[str, AppVerdict]:
    """The verdict of every application in ``apps`` (``live``: versions observed now): a change to what ``env``
    deploys, or the removal of what it no longer deploys."""
    desired = repo.desired_versions(env)
    return {
        a: verdict(repo, env, a, desired[a], facts, live.get(a)) if a in desired
        else removal_verdict(repo, env, a, facts)
        for a in sorted(apps)
    }  # fmt: skip
