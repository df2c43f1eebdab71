"""What a change to the releases repo would do: per environment and application, ``from -> to`` and file diffs.

:func:`compare` pairs two loaded revisions (or a revision and the live versions recorded on the status branch)
and returns a :class:`RepoPlan`: the environments whose desired state changes, the rendered diffs, the blast
radius. Rendering happens only where the inputs differ (blob digests), so a one-line change in a 235-environment
fleet renders a handful of units. Called by ``reconciler plan``. Pure.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.core.desired import RenderError, input_key, render_unit, targets_of
from reconciler.core.kustomize import Build
from reconciler.core.model import Environment, ReleasesRepo
from reconciler.core.tree import SourceTree


@dataclass(frozen=True)
class AppChange:
    application: str
    before: str | None  # version (None: not deployed)
    after: str | None
    diff: str = ""  # unified diff of the rendered files ("" when only the version is known)
    error: str = ""  # a render error at head

    @property
    def kind(self) -> str:
        if self.before is None:
            return "add"
        if self.after is None:
            return "remove"
        return "upgrade" if self.before != self.after else "change"


@dataclass(frozen=True)
class EnvChange:
    environment: str
    stage: str
    changes: tuple[AppChange, ...]
    wave: str | None = None


@dataclass(frozen=True)
class RepoPlan:
    environments: tuple[EnvChange, ...]
    total_environments: int
    added_environments: tuple[str, ...] = ()
    removed_environments: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def stages(self) -> list[str]:
        return sorted({e.stage for e in self.environments})

    def blast_radius(self) -> str:
        n = len(self.environments)
        stages = ", ".join(self.stages) or "none"
        return f"{n} of {self.total_environments} environments, stages: {stages}"


def _render(
    repo: ReleasesRepo, tree: SourceTree, env: Environment, app: str, version: str, build: Build | None
) -> dict[str, bytes]:
    application = repo.applications[app]
    release = repo.releases[(app, version)]
    files: dict[str, bytes] = {}
    for target in targets_of(env, application):
        unit = render_unit(repo, env, application, release, target, tree.read, build)
        files.update({f"{target}/{path}": data for path, data in unit.files().items()})
    return files


def _diff(before: Mapping[str, bytes], after: Mapping[str, bytes], limit: int) -> str:
    out: list[str] = []
    for path in sorted(set(before) | set(after)):
        a = before.get(path, b"").decode("utf-8", "replace").splitlines(keepends=True)
        b = after.get(path, b"").decode("utf-8", "replace").splitlines(keepends=True)
        if a == b:
            continue
        out.extend(difflib.unified_diff(a, b, f"a/{path}" if path in before else "/dev/null",
                                        f"b/{path}" if path in after else "/dev/null", n=2))  # fmt: skip
        if len(out) > limit:
            out = [*out[:limit], f"... (diff cut at {limit} lines)\n"]
            break
    return "".join(line if line.endswith("\n") else line + "\n" for line in out)


def compare(
    base: ReleasesRepo | None,
    base_tree: SourceTree | None,
    head: ReleasesRepo,
    head_tree: SourceTree,
    live: Mapping[str, Mapping[str, str | None]] | None = None,
    diff_lines: int = 200,
    build: Build | None = None,
) -> RepoPlan:
    """Changes from ``base`` (or from ``live`` versions: environment -> application -> version) to ``head``."""
    envs: list[EnvChange] = []
    base_envs = base.environments if base else {}
    for name, env in head.environments.items():
        after = head.desired_versions(env)
        old_env = base_envs.get(name)
        if live is not None:
            before = {a: v for a, v in live.get(name, {}).items() if v is not None}
        else:
            before = base.desired_versions(old_env) if base and old_env else {}
        changes = []
        for app in sorted(set(before) | set(after)):
            b, a = before.get(app), after.get(app)
            if live is None and b is not None and a is not None and base and old_env and base_tree is not None:
                old_key = input_key(base, old_env, base.applications[app], base.releases[(app, b)], base_tree.digest)
                new_key = input_key(head, env, head.applications[app], head.releases[(app, a)], head_tree.digest)
                if old_key == new_key:
                    continue
            elif b == a:
                continue
            diff = error = ""
            try:
                new_files = _render(head, head_tree, env, app, a, build) if a else {}
                old_files = (_render(base, base_tree, old_env, app, b, build)
                             if b and base and old_env and base_tree is not None and live is None else {})  # fmt: skip
                diff = _diff(old_files, new_files, diff_lines) if live is None else ""
            except (RenderError, KeyError) as exc:
                error = str(exc.problem) if isinstance(exc, RenderError) else f"cannot render: {exc}"
            changes.append(AppChange(app, b, a, diff, error))
        if changes:
            envs.append(EnvChange(name, env.stage, tuple(changes), head.wave_of(env)))
    removed = tuple(sorted(set(base_envs) - set(head.environments))) if live is None else ()
    added = tuple(sorted(set(head.environments) - set(base_envs))) if live is None and base else ()
    notes = tuple(f"environment {n} is no longer declared: nothing is removed from it" for n in removed)
    return RepoPlan(tuple(envs), len(head.environments), added, removed, notes)
