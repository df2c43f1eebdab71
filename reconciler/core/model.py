"""The releases-repo model: immutable typed values for every kind of DESIGN.md.

Built by :mod:`reconciler.core.loader` after schema and semantic checks; read by validation, rendering,
planning, the engine and the dashboard. Values are frozen dataclasses; mappings inside them are never mutated
after loading. ``Origin`` records where a value was written so later errors can name the file and line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

API_VERSION = "reconciler.io/v1"


class Kind(StrEnum):
    APPLICATION = "Application"
    RELEASE = "Release"
    STAGE = "Stage"
    ENVIRONMENT = "Environment"
    ENVIRONMENT_SET = "EnvironmentSet"
    FREEZE_WINDOW = "FreezeWindow"
    TEAM = "Team"


@dataclass(frozen=True)
class Origin:
    """Where a value was declared (repo-relative path, 1-based line)."""

    path: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclass(frozen=True)
class Artifact:
    name: str
    type: str = ""


@dataclass(frozen=True)
class Component:
    name: str
    role: str
    templates: tuple[str, ...] = ()  # repo-relative paths, already checked to stay inside the repo
    artifact: Artifact | None = None
    adopt: bool = False  # take over objects that already exist and are not ours (kubernetes; audited as "adopt")
    manifests: str = ""  # a repo directory: every YAML file under it, as written (``substitute``: ``${...}`` filled)
    kustomize: str = ""  # a repo directory holding a Kustomize overlay (may name ``${...}``: one per environment)
    overlays: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # kustomize: overlay dir -> files it reads
    substitute: bool = False  # fill ``${...}`` in ``manifests`` files / the rendered overlay (templates always are)
    sources: tuple[str, ...] = ()  # every repo file a manifests/kustomize component reads (found at load time)
    own_namespaces: bool = (
        False  # kubernetes: its Namespace objects are ours (updated, drift-repaired), not just ensured
    )


@dataclass(frozen=True)
class Application:
    name: str
    owner: str
    components: tuple[Component, ...]
    depends_on: tuple[str, ...] = ()
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    origin: Origin = Origin("")
    notify: tuple[str, ...] = ()  # operator-defined notification sinks its team hears on

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(c.role for c in self.components)


@dataclass(frozen=True)
class ReleaseComponent:
    image: str = ""
    digest: str = ""
    artifact: str = ""
    checksum: str = ""


@dataclass(frozen=True)
class Requirement:
    application: str
    specifier: str


@dataclass(frozen=True)
class Release:
    name: str
    application: str
    version: str
    components: Mapping[str, ReleaseComponent]
    requires: tuple[Requirement, ...] = ()
    notes: str = ""
    origin: Origin = Origin("")


@dataclass(frozen=True)
class Wave:
    name: str
    selector: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_parallel: int | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    releases: Mapping[str, str] = field(default_factory=dict)
    promotes_from: str | None = None
    soak_seconds: int = 0
    protected: bool = False
    self_heal: bool = True
    waves: tuple[Wave, ...] = ()
    approvers: tuple[str, ...] = ()  # Teams that may sign changes to it (empty: the ops Teams)
    owner_approval: bool = False  # outsiders' changes to an application need its owning Team's (or ops') signature
    origin: Origin = Origin("")
    release_origins: Mapping[str, Origin] = field(default_factory=dict)  # where each application's version is set


@dataclass(frozen=True)
class Environment:
    name: str
    stage: str
    targets: Mapping[str, str]
    labels: Mapping[str, str] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    pins: Mapping[str, str] = field(default_factory=dict)
    applications: tuple[str, ...] | None = None
    wave: str | None = None
    allow_empty: bool = False
    origin: Origin = Origin("")
    generated_by: str | None = None  # the EnvironmentSet it came from
    generator_params: Mapping[str, Any] = field(default_factory=dict)  # the parameter set that made it

    def describe_origin(self) -> str:
        if not self.generated_by:
            return str(self.origin)
        params = ", ".join(f"{k}={v}" for k, v in self.generator_params.items())
        return f"{self.origin} (EnvironmentSet {self.generated_by}, {params})"


@dataclass(frozen=True)
class AbsoluteWindow:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class RecurringWindow:
    cron: str
    duration_seconds: int
    timezone: str = "UTC"


@dataclass(frozen=True)
class FreezeWindow:
    name: str
    reason: str = ""
    stages: tuple[str, ...] = ()
    applications: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    selector: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    absolute: tuple[AbsoluteWindow, ...] = ()
    recurring: tuple[RecurringWindow, ...] = ()
    drift_repair: bool = True
    origin: Origin = Origin("")


def selector_matches(selector: Mapping[str, tuple[str, ...]], labels: Mapping[str, str]) -> bool:
    """True when every selector key is a label whose value is one of the selector's values."""
    return all(labels.get(key) in values for key, values in selector.items())


@dataclass(frozen=True)
class Member:
    email: str
    name: str = ""
    signing_keys: tuple[str, ...] = ()  # public SSH keys ("ssh-ed25519 AAAA...")


@dataclass(frozen=True)
class Team:
    """People who own applications (``Application.owner``); ``ops`` teams approve and own the shared files."""

    name: str
    members: tuple[Member, ...]
    ops: bool = False
    codeowners: tuple[str, ...] = ()  # the forge's handles for the team; default: the members' e-mail addresses
    description: str = ""
    origin: Origin = field(default_factory=lambda: Origin(""))

    def emails(self) -> frozenset[str]:
        return frozenset(m.email.lower() for m in self.members)


@dataclass(frozen=True)
class ReleasesRepo:
    """Everything one revision of the releases repo declares, expanded and cross-checked."""

    applications: Mapping[str, Application]
    releases: Mapping[tuple[str, str], Release]  # (application, version) -> release
    stages: Mapping[str, Stage]
    environments: Mapping[str, Environment]  # explicit and generated, by name (sorted)
    freezes: Mapping[str, FreezeWindow]
    environment_sets: Mapping[str, Origin] = field(default_factory=dict)
    teams: Mapping[str, Team] = field(default_factory=dict)

    def desired_versions(self, env: Environment) -> dict[str, str]:
        """Application -> version for ``env``: its pin, else its stage's version; restricted by its allow-list."""
        stage = self.stages.get(env.stage)
        versions = dict(stage.releases) if stage else {}
        versions.update(env.pins)
        if env.applications is not None:
            allowed = set(env.applications)
            versions = {app: v for app, v in versions.items() if app in allowed}
        return versions

    def release(self, application: str, version: str) -> Release | None:
        return self.releases.get((application, version))

    def wave_of(self, env: Environment) -> str | None:
        stage = self.stages.get(env.stage)
        if stage is None or not stage.waves:
            return None
        if env.wave:
            return env.wave
        for wave in stage.waves:
            if wave.selector and selector_matches(wave.selector, env.labels):
                return wave.name
        return stage.waves[-1].name

    def stage_order(self) -> list[Stage]:
        """Stages in promotion order: a stage after the one it promotes from (depth first from each root, roots and
        siblings by name); stages in a promotion cycle (which validation refuses) come last, by name."""
        children: dict[str | None, list[str]] = {}
        for stage in self.stages.values():
            parent = stage.promotes_from if stage.promotes_from in self.stages else None
            children.setdefault(parent, []).append(stage.name)
        ordered: list[Stage] = []
        todo = sorted(children.get(None, []), reverse=True)
        while todo:
            name = todo.pop()
            ordered.append(self.stages[name])
            todo += sorted(children.get(name, []), reverse=True)
        seen = {s.name for s in ordered}
        return ordered + [self.stages[n] for n in sorted(self.stages) if n not in seen]

    def approvers(self, stage: Stage) -> frozenset[str]:
        """The e-mail addresses (lower case) that may approve changes to ``stage``: members of its ``approvers``
        Teams, else of every ops Team."""
        names = stage.approvers or tuple(n for n, t in self.teams.items() if t.ops)
        return frozenset(e for n in names if n in self.teams for e in self.teams[n].emails())

    def owners(self, application: str) -> tuple[str, frozenset[str]] | None:
        """The Team owning ``application`` and who may change it without a signature: its members and ops members
        (e-mail addresses, lower case); None without Teams or when its owner names no Team."""
        app = self.applications.get(application)
        team = self.teams.get(app.owner) if app is not None else None
        if team is None:
            return None
        ops = frozenset(e for t in self.teams.values() if t.ops for e in t.emails())
        return team.name, team.emails() | ops

    def counts(self) -> dict[str, int]:
        return {
            "applications": len(self.applications),
            "releases": len(self.releases),
            "environments": len(self.environments),
            "stages": len(self.stages),
            "freezeWindows": len(self.freezes),
            "teams": len(self.teams),
        }
