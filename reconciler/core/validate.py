"""Cross-reference checks of a loaded releases repo.

Unique names are checked while loading; here every reference must resolve (stage, application, release, wave,
target role), ``dependsOn`` and the promotion graph must be acyclic (the cycle is printed), version specifiers
and freeze schedules must parse, and every Release's ``requires`` must hold in every environment's resolved set.
Findings that concern single environments are returned separately, keyed by environment, so the engine can
hold only those. Called by :func:`reconciler.core.loader.load_repo`. Pure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from reconciler.core.model import Environment, Origin, ReleasesRepo
from reconciler.core.problems import Problem


def _p(origin: Origin, message: str) -> Problem:
    return Problem(origin.path, origin.line, message)


def find_cycle(graph: Mapping[str, tuple[str, ...] | list[str]]) -> list[str] | None:
    """One cycle of ``graph`` (node -> successors) as ``[a, b, ..., a]``, or ``None``. Deterministic."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = [start]
        state[start] = 1
        while stack:
            node, i = stack[-1]
            succ = sorted(graph.get(node, ()))
            if i < len(succ):
                stack[-1] = (node, i + 1)
                nxt = succ[i]
                if state.get(nxt) == 1:
                    return [*path[path.index(nxt) :], nxt]
                if not state.get(nxt) and nxt in graph:
                    state[nxt] = 1
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                state[node] = 2
                stack.pop()
                path.pop()
    return None


@cache
def parse_version(text: str) -> Version | None:
    """``text`` as a version, or ``None`` (a fleet holds few distinct versions: parsed once each)."""
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _check_approvers(repo: ReleasesRepo, broken: frozenset[str], out: list[Problem]) -> None:
    for stage in repo.stages.values():
        for name in stage.approvers:
            if name not in repo.teams and name not in broken:
                out.append(_p(stage.origin, f"approvers: {name!r} is not a declared Team"))
        if stage.protected and repo.teams and not repo.approvers(stage):
            out.append(_p(stage.origin, f"protected stage {stage.name!r} has no approver: declare an ops Team "
                                        "or list the approving Teams in spec.approvers"))  # fmt: skip


def _check_applications(repo: ReleasesRepo, broken: frozenset[str], out: list[Problem]) -> None:
    for app in repo.applications.values():
        if repo.teams and app.owner not in repo.teams and app.owner not in broken:  # no Team at all: not enforced
            known = ", ".join(list(repo.teams)[:8]) + (", ..." if len(repo.teams) > 8 else "")
            out.append(_p(app.origin, f"owner {app.owner!r} is not a declared Team (teams: {known})"))
        for dep in app.depends_on:
            if dep == app.name:
                out.append(_p(app.origin, f"application {app.name!r} depends on itself"))
            elif dep not in repo.applications and dep not in broken:
                out.append(_p(app.origin, f"dependsOn: unknown application {dep!r}"))
    cycle = find_cycle({a.name: a.depends_on for a in repo.applications.values()})
    if cycle and len(cycle) > 2:
        first = repo.applications[cycle[0]]
        out.append(_p(first.origin, "dependsOn cycle: " + " -> ".join(cycle)))


def _check_releases(repo: ReleasesRepo, broken: frozenset[str], out: list[Problem]) -> None:
    for rel in repo.releases.values():
        app = repo.applications.get(rel.application)
        if app is None:
            if rel.application not in broken:
                out.append(_p(rel.origin, f"release of unknown application {rel.application!r}"))
            continue
        wanted = {c.name for c in app.components}
        for missing in sorted(wanted - set(rel.components)):
            out.append(_p(rel.origin, f"component {missing!r} of {app.name} has no entry in this release"))
        for extra in sorted(set(rel.components) - wanted):
            out.append(
                _p(rel.origin, f"{app.name} has no component {extra!r} (components: {', '.join(sorted(wanted))})")
            )
        for req in rel.requires:
            if req.application not in repo.applications and req.application not in broken:
                out.append(_p(rel.origin, f"requires unknown application {req.application!r}"))
            try:
                SpecifierSet(req.specifier)
            except InvalidSpecifier:
                out.append(_p(rel.origin, f"requires {req.application}: invalid version specifier {req.specifier!r}"))


def _check_stages(repo: ReleasesRepo, broken: frozenset[str], out: list[Problem]) -> None:
    for stage in repo.stages.values():
        if stage.promotes_from and stage.promotes_from not in repo.stages and stage.promotes_from not in broken:
            out.append(_p(stage.origin, f"promotesFrom: unknown stage {stage.promotes_from!r}"))
        for app, version in stage.releases.items():
            where = stage.release_origins.get(app, stage.origin)
            if app in broken or f"{app}:{version}" in broken:
                continue
            if app not in repo.applications:
                out.append(_p(where, f"unknown application {app!r}"))
            elif (app, version) not in repo.releases:
                out.append(_p(where, f"no release {version} of {app} (known: {_known_versions(repo, app)})"))
    cycle = find_cycle({s.name: (s.promotes_from,) if s.promotes_from else () for s in repo.stages.values()})
    if cycle:
        out.append(_p(repo.stages[cycle[0]].origin, "promotion cycle: " + " <- ".join(cycle)))


def _known_versions(repo: ReleasesRepo, app: str) -> str:
    versions = [v for (a, v) in repo.releases if a == app]
    return ", ".join(versions) if versions else "none"


def _check_freezes(repo: ReleasesRepo, broken: frozenset[str], out: list[Problem]) -> None:
    for freeze in repo.freezes.values():
        for stage in freeze.stages:
            if stage not in repo.stages and stage not in broken:
                out.append(_p(freeze.origin, f"scope: unknown stage {stage!r}"))
        for app in freeze.applications:
            if app not in repo.applications and app not in broken:
                out.append(_p(freeze.origin, f"scope: unknown application {app!r}"))
        for win in freeze.recurring:
            if not croniter.is_valid(win.cron) or len(win.cron.split()) != 5:
                out.append(
                    _p(freeze.origin, f"invalid cron expression {win.cron!r} (five fields: min hour day month weekday)")
                )
            try:
                ZoneInfo(win.timezone)
            except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file name
                shown = win.timezone if len(win.timezone) <= 64 else win.timezone[:61] + "..."
                out.append(_p(freeze.origin, f"unknown time zone {shown!r}"))


def _check_environment(repo: ReleasesRepo, broken: frozenset[str], env: Environment) -> list[Problem]:
    out: list[Problem] = []
    stage = repo.stages.get(env.stage)
    if stage is None and env.stage not in broken:
        out.append(_p(env.origin, f"unknown stage {env.stage!r}"))
    for app, version in env.pins.items():
        if app in broken or f"{app}:{version}" in broken:
            continue
        if app not in repo.applications:
            out.append(_p(env.origin, f"pins: unknown application {app!r}"))
        elif (app, version) not in repo.releases:
            out.append(_p(env.origin, f"pins: no release {version} of {app} (known: {_known_versions(repo, app)})"))
    for app in env.applications or ():
        if app not in repo.applications:
            out.append(_p(env.origin, f"applications: unknown application {app!r}"))
    if env.wave and stage is not None and env.wave not in {w.name for w in stage.waves}:
        out.append(_p(env.origin, f"wave {env.wave!r} is not a wave of stage {stage.name}"))
    desired = repo.desired_versions(env)
    for app_name, version in sorted(desired.items()):
        application = repo.applications.get(app_name)
        release = repo.releases.get((app_name, version))
        if application is None or release is None:
            continue  # reported on the stage / pin
        for comp in application.components:
            if comp.role not in env.targets:
                out.append(
                    _p(env.origin, f"no target for role {comp.role!r}, needed by {app_name} (component {comp.name})")
                )
        for req in release.requires:
            spec = _specifier(req.specifier)
            if spec is None:
                continue  # reported on the release
            have = desired.get(req.application)
            where = (
                stage.release_origins.get(app_name, env.origin) if stage and app_name not in env.pins else env.origin
            )
            if have is None:
                out.append(
                    _p(
                        where,
                        f"{app_name} {version} requires {req.application} {req.specifier}, which is not deployed here",
                    )
                )
                continue
            parsed = parse_version(have)
            if parsed is None or not spec.contains(parsed, prereleases=True):
                out.append(
                    _p(
                        where,
                        f"{app_name} {version} requires {req.application} {req.specifier}, "
                        f"but {req.application} {have} is desired here",
                    )
                )
    return out


@cache
def _specifier(text: str) -> SpecifierSet | None:
    try:
        return SpecifierSet(text)
    except InvalidSpecifier:
        return None


def validate_repo(
    repo: ReleasesRepo, broken: frozenset[str] = frozenset()
) -> tuple[list[Problem], dict[str, list[Problem]]]:
    """(problems of the whole revision, problems per environment).

    ``broken`` names documents that failed their schema (already reported): references to them are not
    reported again as unknown. Releases appear there as ``application:version``.
    """
    problems: list[Problem] = []
    _check_applications(repo, broken, problems)
    _check_releases(repo, broken, problems)
    _check_stages(repo, broken, problems)
    _check_freezes(repo, broken, problems)
    _check_approvers(repo, broken, problems)
    per_env: dict[str, list[Problem]] = defaultdict(list)
    for env in repo.environments.values():
        found = _check_environment(repo, broken, env)
        if found:
            per_env[env.name] = found
    return problems, dict(per_env)
