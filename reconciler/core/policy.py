"""Release policies, decided purely from the model, a clock and recorded facts: freezes, promotion, signatures.

Each check answers "may this application's change reach this environment now?" with ``None`` (yes) or a
:class:`Hold` (no, and why, and until when if known). The engine asks before applying and marks the environment
Blocked with the reason; ``reconciler plan`` asks at pull-request time and prints the verdicts. Facts that live
outside the model (what ran where since when, who signed a commit) are passed in as plain values, so every rule
is testable without Git or a clock. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from croniter import croniter

from reconciler.core.durations import format_duration
from reconciler.core.model import Environment, FreezeWindow, ReleasesRepo, selector_matches

# commit trailers that override a hold, honoured only in a commit signed by an allowed key (read by the engine's
# governance at apply time and by ``reconciler plan`` at pull-request time)
FREEZE_OVERRIDE = "Freeze-Override"
PROMOTION_OVERRIDE = "Promotion-Override"


class HoldKind(StrEnum):
    FREEZE = "freeze"
    PROMOTION = "promotion"
    SIGNATURE = "signature"
    REQUIRES = "requires"
    WAVE = "wave"
    SUSPENDED = "suspended"  # an operator's emergency brake (reconciler suspend)
    APPROVAL = "approval"  # signed, but not by an approver of the stage, or by the change's only author
    OWNERSHIP = "ownership"  # changed by someone outside the owning Team without that Team's (or ops') signature


@dataclass(frozen=True)
class Hold:
    kind: HoldKind
    reason: str
    until: datetime | None = None

    def __str__(self) -> str:
        return self.reason


# --- freezes ---------------------------------------------------------------------------------------------------


def freeze_applies(freeze: FreezeWindow, env: Environment, application: str) -> bool:
    if freeze.stages and env.stage not in freeze.stages:
        return False
    if freeze.applications and application not in freeze.applications:
        return False
    if freeze.environments and env.name not in freeze.environments:
        return False
    return selector_matches(freeze.selector, env.labels)


def active_window(freeze: FreezeWindow, now: datetime) -> tuple[datetime, datetime] | None:
    """The window of ``freeze`` that contains ``now`` (start, end), if any."""
    for window in freeze.absolute:
        if window.start <= now < window.end:
            return window.start, window.end
    for rec in freeze.recurring:
        zone = ZoneInfo(rec.timezone)
        local = now.astimezone(zone)
        # the latest start at or before now (croniter walks in local wall-clock time)
        start = croniter(rec.cron, local + timedelta(seconds=1)).get_prev(datetime)
        if start.tzinfo is None:
            start = start.replace(tzinfo=zone)
        end = start + timedelta(seconds=rec.duration_seconds)
        if start <= now < end:
            return start.astimezone(UTC), end.astimezone(UTC)
    return None


def freeze_hold(repo: ReleasesRepo, env: Environment, application: str, now: datetime) -> tuple[Hold, bool] | None:
    """The freeze holding ``application`` in ``env`` now: (hold, drift repair allowed), or ``None``."""
    for freeze in repo.freezes.values():
        if not freeze_applies(freeze, env, application):
            continue
        window = active_window(freeze, now)
        if window is None:
            continue
        until = window[1]
        why = f": {freeze.reason}" if freeze.reason else ""
        text = f"frozen until {until.isoformat(timespec='minutes')} by {freeze.name}{why}"
        return Hold(HoldKind.FREEZE, text, until), freeze.drift_repair
    return None


# --- promotion ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)  # (one per application deployed in each environment: 325,000 at 5,000 envs)
class Stint:
    """A version's time in one environment, from the audit trail: applied at ``start``, replaced at ``end``."""

    version: str
    start: datetime
    end: datetime | None = None  # None: still running


History = Mapping[tuple[str, str], Sequence[Stint]]  # (environment, application) -> stints, oldest first


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def extend_history(history: dict[tuple[str, str], list[Stint]], entries: Iterable[Mapping[str, object]]) -> None:
    """Add audit entries (in time order) to ``history``: which version ran where, from when to when."""
    for entry in entries:
        if entry.get("result") != "succeeded":
            continue
        env, app, action = entry.get("environment"), entry.get("application"), entry.get("action")
        when = _parse_time(entry.get("end") or entry.get("time"))
        if when is None or not (isinstance(env, str) and isinstance(app, str)):
            continue
        stints = history.setdefault((env, app), [])
        if action == "remove":
            if stints and stints[-1].end is None:
                stints[-1] = replace(stints[-1], end=when)
            continue
        version = entry.get("to")
        if action not in ("create", "update", "rollback") or not isinstance(version, str):
            continue
        if stints and stints[-1].end is None:
            if stints[-1].version == version:
                continue  # a drift repair or a re-apply: the stint goes on
            stints[-1] = replace(stints[-1], end=when)
        stints.append(Stint(version, when))


def promotion_hold(
    repo: ReleasesRepo, env: Environment, application: str, version: str, history: History, now: datetime
) -> Hold | None:
    """``None`` when ``version`` of ``application`` may enter ``env``'s stage per ``promotesFrom`` and soak.

    The version must have run in every environment of the previous stage that deploys the application, for at
    least the stage's soak time (ongoing or in the past: a previous stage may already have moved on). The caller
    asks only for upgrades and downgrades; a first install (adopting an existing fleet) is not a promotion.
    """
    stage = repo.stages.get(env.stage)
    if stage is None or not stage.promotes_from:
        return None
    if any(s.version == version for s in history.get((env.name, application), ())):
        return None  # a rollback to a version that already ran here
    previous = stage.promotes_from
    sources = [e.name for e in repo.environments.values()
               if e.stage == previous and application in repo.desired_versions(e)]  # fmt: skip
    if not sources:
        return Hold(
            HoldKind.PROMOTION, f"{application} is not deployed in {previous}, which {stage.name} promotes from"
        )
    soak = timedelta(seconds=stage.soak_seconds)
    ready_at: datetime | None = None
    for source in sources:
        stints = [s for s in history.get((source, application), ()) if s.version == version]
        if not stints:
            return Hold(HoldKind.PROMOTION, f"{application} {version} has not run in {previous} yet ({source})")
        if any((s.end or now) - s.start >= soak for s in stints):
            continue
        running = [s for s in stints if s.end is None]
        if not running:
            return Hold(
                HoldKind.PROMOTION,
                f"{application} {version} did not soak {format_duration(soak.total_seconds())}"
                f" in {previous} ({source} replaced it sooner)",
            )
        ready = running[-1].start + soak
        ready_at = ready if ready_at is None or ready > ready_at else ready_at
    if ready_at is not None:
        return Hold(
            HoldKind.PROMOTION,
            f"{application} {version} soaks in {previous} until "
            f"{ready_at.isoformat(timespec='minutes')} ({format_duration(soak.total_seconds())} soak)",
            ready_at,
        )
    return None


# --- signatures ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """The verdict of ``git verify-commit`` against the operator's allowed signers."""

    commit: str
    good: bool
    signer: str = ""
    detail: str = ""
    authors: tuple[str, ...] = ()  # e-mail addresses (lower case) of the commits this one brought in


def signature_hold(stage_protected: bool, signatures: Iterable[Signature]) -> Hold | None:
    """Changes reaching a protected stage need the commit that introduced them signed by an allowed key."""
    if not stage_protected:
        return None
    for sig in signatures:
        if not sig.good:
            why = f" ({sig.detail})" if sig.detail else ""
            return Hold(HoldKind.SIGNATURE, f"commit {sig.commit[:12]} is not signed by an allowed signer{why}")
    return None


def approval_hold(approvers: frozenset[str], stage: str, signatures: Iterable[Signature]) -> Hold | None:
    """With Teams declared, each signed change to a protected stage needs a signer among the stage's approvers who
    is not the change's only author (four-eyes)."""
    for sig in signatures:
        signer = sig.signer.lower()
        if signer not in approvers:
            return Hold(HoldKind.APPROVAL, f"commit {sig.commit[:12]} is signed by {sig.signer or 'nobody'}, "
                                           f"who is not an approver of stage {stage}")  # fmt: skip
        if sig.authors and set(sig.authors) == {signer}:
            return Hold(HoldKind.APPROVAL, f"commit {sig.commit[:12]} is signed by its only author {sig.signer}: "
                                           "another approver must sign it (four-eyes)")  # fmt: skip
    return None


def ownership_hold(application: str, owners: tuple[str, frozenset[str]], changes: Iterable[Signature]) -> Hold | None:
    """The commits that changed ``application`` (its files, releases or stage row), newest first, against its owning
    Team (``owners``: the Team's name and who may change it unsigned, ops included): the newest commit with a good
    signature by one of them attests the content (what it merged or what came before it); above it, a commit with
    an author outside them holds the change."""
    team, allowed = owners
    for change in changes:
        if change.good and change.signer.lower() in allowed:
            return None
        outsiders = sorted(set(change.authors) - allowed)
        if outsiders:
            signed = f", signed by {change.signer}," if change.good and change.signer else ""
            return Hold(HoldKind.OWNERSHIP, f"commit {change.commit[:12]} by {', '.join(outsiders)}{signed} changes "
                                            f"{application}, owned by {team}: it needs a commit signed by a member "
                                            f"of {team} or of an ops team")  # fmt: skip
    return None


# --- cross-application requirements --------------------------------------------------------------------------------


def requirement_hold(
    repo: ReleasesRepo, application: str, version: str, live_versions: Mapping[str, str | None]
) -> Hold | None:
    """``None`` when every ``requires`` of the release is live in the environment (by version specifier)."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    release = repo.releases.get((application, version))
    if release is None:
        return None
    for req in release.requires:
        have = live_versions.get(req.application)
        try:
            ok = have is not None and SpecifierSet(req.specifier).contains(Version(have), prereleases=True)
        except (InvalidSpecifier, InvalidVersion):
            ok = False
        if not ok:
            live = f"{have} is live" if have else "it is not live"
            return Hold(
                HoldKind.REQUIRES,
                f"blocked because {application} {version} requires {req.application} {req.specifier} and {live} here",
            )
    return None
