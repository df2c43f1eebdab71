"""Load one revision of the releases repo into a :class:`ReleasesRepo`, collecting every problem.

Phases: list manifest files -> enforce size limits -> hardened YAML parse -> per-kind schema check -> build typed
values -> expand EnvironmentSets -> cross-reference checks (:mod:`reconciler.core.validate`). A problem never
stops the others from being found. Problems that concern only some environments (their own file, their stage's
missing target role, an unmet ``requires`` there) are kept per environment, so the engine can hold just those
environments at their last good state while the rest move on; any other problem makes the revision invalid.

Called by ``reconciler validate``, ``reconciler plan`` and the engine, with a :class:`SourceTree`. Pure.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from reconciler.core import schemas
from reconciler.core.durations import DurationError, parse_duration
from reconciler.core.expand import ExpansionError, expand
from reconciler.core.kustomize import KUSTOMIZATION_FILES, closure, directories, kustomization_file
from reconciler.core.model import (
    API_VERSION,
    AbsoluteWindow,
    Application,
    Artifact,
    Component,
    Environment,
    FreezeWindow,
    Kind,
    Member,
    Origin,
    RecurringWindow,
    Release,
    ReleaseComponent,
    ReleasesRepo,
    Requirement,
    Stage,
    Team,
    Wave,
)
from reconciler.core.plaintext import plaintext_secrets_cached
from reconciler.core.problems import Problem, sort_problems
from reconciler.core.tree import PathEscapes, SourceTree, is_manifest_path, join_inside
from reconciler.core.yamlsafe import DEFAULT_MAX_FILE_SIZE, Document, YamlError, parse_file, scalar_text


@dataclass(frozen=True)
class Limits:
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    max_repo_size: int = 256 * 1024 * 1024
    max_environments: int = 100_000


@dataclass
class LoadResult:
    """The model (``None`` when the revision as a whole is unusable) and every problem found."""

    repo: ReleasesRepo | None
    problems: list[Problem]
    environment_problems: dict[str, list[Problem]] = field(default_factory=dict)
    files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.environment_problems

    def all_problems(self) -> list[Problem]:
        """Every problem once; a per-environment problem shared by many environments names them together."""
        by_problem: dict[Problem, list[str]] = defaultdict(list)
        for env, problems in self.environment_problems.items():
            for p in problems:
                by_problem[p].append(env)
        grouped = [
            Problem(p.path, p.line, f"{p.message} ({_environments(envs)})", p.severity)
            for p, envs in by_problem.items()
        ]
        return sort_problems(list(dict.fromkeys(self.problems)) + grouped)


def _under_any(path: str, roots: set[str]) -> bool:
    """``path`` is in one of the directories ``roots`` or below it."""
    directory = posixpath.dirname(path)
    while True:
        if directory in roots:
            return True
        if not directory:
            return False
        directory = posixpath.dirname(directory)


def _yaml_under(directory: str, paths: set[str]) -> tuple[str, ...]:
    prefix = "" if directory == "." else f"{directory}/"
    return tuple(sorted(p for p in paths if p.startswith(prefix) and p.endswith((".yaml", ".yml", ".json"))))


def _environments(names: list[str], shown: int = 3) -> str:
    if len(names) == 1:
        return f"environment {names[0]}"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"in {len(names)} environments: {', '.join(names[:shown])}{more}"


def _origin(doc: Document, where: tuple[str | int, ...] = ()) -> Origin:
    return Origin(doc.path, doc.line(where))


def _selector(data: dict[str, Any] | None) -> dict[str, tuple[str, ...]]:
    return {k: (v,) if isinstance(v, str) else tuple(v) for k, v in (data or {}).items()}


class _Builder:
    """Holds the state of one load; one method per kind."""

    def __init__(self, tree: SourceTree, limits: Limits) -> None:
        self.tree = tree
        self.limits = limits
        self.problems: list[Problem] = list(tree.problems)
        self.env_problems: dict[str, list[Problem]] = defaultdict(list)
        self.applications: dict[str, Application] = {}
        self.releases: dict[tuple[str, str], Release] = {}
        self.release_names: dict[str, Origin] = {}
        self.stages: dict[str, Stage] = {}
        self.environments: dict[str, Environment] = {}
        self.freezes: dict[str, FreezeWindow] = {}
        self.teams: dict[str, Team] = {}
        self.sets: dict[str, Origin] = {}
        self.broken: set[str] = set()  # names of documents that failed their schema: no cascade of "unknown" errors
        self.parsed: dict[tuple[str, str, int], Parsed] = {}
        self.expanded: dict[tuple[int, int], tuple[Document, list[Environment | Problem]]] = {}
        self.sources: dict[tuple[str, int, int], tuple[tuple[str, ...], tuple[Problem, ...]]] = {}
        self.dirs: set[str] | None = None  # every directory of the tree (component sources), once per load
        self.kustomizations: dict[str, list[Document] | YamlError] = {}  # kustomization files parsed in this load
        self.overlays: dict[tuple[str, int, int, str], tuple[str, ...]] = {}  # (file, doc, component, dir) -> files

    def error(self, doc: Document, where: tuple[str | int, ...], message: str) -> None:
        self.problems.append(Problem(doc.path, doc.line(where), message))

    def duplicate(self, doc: Document, kind: str, name: str, first: Origin) -> None:
        self.error(doc, ("metadata", "name"), f"duplicate {kind} {name!r} (first declared at {first})")

    # --- reading -----------------------------------------------------------------------------------------
    def read_documents(self) -> tuple[list[Document], int]:
        paths = sorted(p for p in self.tree.paths() if is_manifest_path(p))
        total = 0
        docs: list[Document] = []
        for path in paths:
            size = self.tree.size(path)
            if size > self.limits.max_file_size:
                self.problems.append(
                    Problem(path, None, f"file is {size} bytes, over the limit of {self.limits.max_file_size} bytes")
                )
                continue
            total += size
            if total > self.limits.max_repo_size:
                self.problems.append(
                    Problem(path, None, f"repository manifests exceed the limit of {self.limits.max_repo_size} bytes")
                )
                break
            key = (path, self.tree.digest(path), self.limits.max_file_size)
            parsed = _PARSED.get(key)
            if parsed is None:
                parsed = parse_file(path, self.tree.read(path), self.limits.max_file_size)
            self.parsed[key] = parsed
            found, problems = parsed
            self.problems.extend(problems)
            docs.extend(d for d in found if d.data is not None)
        return docs, len(paths)

    def set_sources_aside(self, docs: list[Document]) -> list[Document]:
        """The files that ``manifests`` and ``kustomize`` components read are Kubernetes YAML, not releases-repo
        manifests: find them (from the Applications as written, before their schema check) and drop their documents
        and parse problems. Each component's files and problems are kept for :meth:`build_application`."""
        aside: set[str] = set()
        paths: set[str] | None = None
        for doc in docs:
            data = doc.data
            spec = data.get("spec") if isinstance(data, dict) and data.get("kind") == "Application" else None
            comps = spec.get("components") if isinstance(spec, dict) else None
            for i, comp in enumerate(comps if isinstance(comps, list) else []):
                key = next((k for k in ("manifests", "kustomize") if isinstance(comp, dict) and k in comp), None)
                if key is None or not isinstance(comp[key], str):
                    continue
                paths = set(self.tree.paths()) if paths is None else paths
                found = self._component_sources(doc, i, key, comp[key], paths)
                self.sources[(doc.path, doc.index, i)] = found
                aside.update(found[0])
        roots = {posixpath.dirname(p) for p in aside if posixpath.basename(p) in KUSTOMIZATION_FILES}
        if roots:  # files beside an overlay's or a base's kustomization are not manifests either, read or not
            aside |= {p for p in (paths or ()) if _under_any(p, roots)}
        if not aside:
            return docs
        self.problems = [p for p in self.problems if p.path not in aside]
        return [d for d in docs if d.path not in aside]

    def _component_sources(
        self, doc: Document, i: int, key: str, ref: str, paths: set[str]
    ) -> tuple[tuple[str, ...], tuple[Problem, ...]]:
        where = ("spec", "components", i, key)
        try:
            directory = join_inside(posixpath.dirname(doc.path), ref)
        except PathEscapes as exc:
            return (), (Problem(doc.path, doc.line(where), str(exc)),)
        if key == "kustomize":
            return self._overlays(doc, i, ref, directory, paths)
        found = {directory: _yaml_under(directory, paths)}
        if "${" in directory:  # one directory per environment (rendered/${env.stage})
            found = {d: _yaml_under(d, paths) for d in self._shaped(directory, paths)}
            for d, files in found.items():
                self.overlays[(doc.path, doc.index, i, d)] = files
        if not any(found.values()):
            return (), (Problem(doc.path, doc.line(where), f"manifests directory {ref!r} has no YAML file "
                                f"(looked in {directory})"),)  # fmt: skip
        return tuple(sorted({f for files in found.values() for f in files})), ()

    def _shaped(self, directory: str, paths: set[str]) -> list[str]:
        """The repo directories of the shape of ``directory``, whose ``${...}`` segments match any one segment."""
        shape = re.compile("/".join("[^/]+" if "${" in seg else re.escape(seg) for seg in directory.split("/")))
        self.dirs = directories(paths) if self.dirs is None else self.dirs
        return sorted(d for d in self.dirs if shape.fullmatch(d))

    def _overlays(
        self, doc: Document, i: int, ref: str, directory: str, paths: set[str]
    ) -> tuple[tuple[str, ...], tuple[Problem, ...]]:
        """The closures of the overlays ``kustomize`` names: one directory, or with a ``${...}`` segment every
        directory of that shape holding a kustomization (``overlays/${env.stage}``: one overlay per stage)."""
        where = ("spec", "components", i, "kustomize")
        if "${" in directory:
            found = [d for d in self._shaped(directory, paths) if kustomization_file(d, paths)]
            if not found:
                return (), (Problem(doc.path, doc.line(where), f"no overlay matches {ref!r} (looked for {directory} "
                                    "directories holding a kustomization.yaml)"),)  # fmt: skip
        elif kustomization_file(directory, paths) is None:
            return (), (Problem(doc.path, doc.line(where), f"{ref!r}: no kustomization.yaml in {directory}"),)
        else:
            found = [directory]
        files: set[str] = set()
        problems: list[Problem] = []
        if self.dirs is None:
            self.dirs = directories(paths)
        for overlay in found:
            walked = closure(overlay, paths, self.tree.read, self.dirs, self.kustomizations, self.tree.size)
            self.overlays[(doc.path, doc.index, i, overlay)] = walked.files
            files.update(walked.files)
            problems.extend(walked.problems)
        return tuple(sorted(files)), tuple(problems)

    def dispatch(self, doc: Document) -> None:
        data = doc.data
        if not isinstance(data, dict):
            self.error(doc, (), "a manifest must be a mapping with apiVersion, kind, metadata and spec")
            return
        kind = data.get("kind")
        if kind not in schemas.KIND_FILES:
            known = ", ".join(schemas.KIND_FILES)
            what = f"unknown kind {kind!r}" if kind is not None else "missing field 'kind'"
            self.error(doc, ("kind",), f"{what} (known kinds: {known})")
            return
        if data.get("apiVersion") != API_VERSION:
            self.error(doc, ("apiVersion",), f"apiVersion must be {API_VERSION!r}, got {data.get('apiVersion')!r}")
            return
        problems = schemas.check(schemas.KIND_FILES[kind], data, doc)
        if problems:
            self.problems.extend(problems)
            self._remember_broken(kind, data)
            return
        builders = {
            "Application": self.build_application,
            "Release": self.build_release,
            "Stage": self.build_stage,
            "Environment": self.build_environment,
            "EnvironmentSet": self.build_environmentset,
            "FreezeWindow": self.build_freezewindow,
            "Team": self.build_team,
        }
        builders[kind](doc, data["metadata"], data["spec"])

    def _remember_broken(self, kind: str, data: dict[str, Any]) -> None:
        meta, spec = data.get("metadata"), data.get("spec")
        name = meta.get("name") if isinstance(meta, dict) else None
        if kind == "Release" and isinstance(spec, dict):
            self.broken.add(f"{spec.get('application')}:{scalar_text(spec.get('version'))}")
        elif isinstance(name, str):
            self.broken.add(name)

    # --- kinds -------------------------------------------------------------------------------------------
    def build_application(self, doc: Document, meta: dict[str, Any], spec: dict[str, Any]) -> None:
        name = meta["name"]
        base = posixpath.dirname(doc.path)
        components = []
        for i, comp in enumerate(spec["components"]):
            templates = []
            for j, ref in enumerate(comp.get("templates", [])):
                where = ("spec", "components", i, "templates", j)
                try:
                    path = join_inside(base, ref)
                except PathEscapes as exc:
                    self.error(doc, where, str(exc))
                    continue
                if path not in self.tree:
                    self.error(doc, where, f"template {ref!r} not found (looked for {path})")
                    continue
                self.problems.extend(
                    plaintext_secrets_cached(path, self.tree.digest(path), partial(self.tree.read, path))
                )
                templates.append(path)
            art = comp.get("artifact")
            sources, problems = self.sources.get((doc.path, doc.index, i), ((), ()))
            self.problems.extend(problems)
            for path in sources:
                self.problems.extend(
                    plaintext_secrets_cached(path, self.tree.digest(path), partial(self.tree.read, path))
                )
            components.append(
                Component(
                    name=comp["name"],
                    role=comp["target"],
                    templates=tuple(templates),
                    artifact=Artifact(art["name"], art.get("type", "")) if art else None,
                    adopt=comp.get("adopt") is True,
                    manifests=join_inside(base, comp["manifests"]) if sources and "manifests" in comp else "",
                    kustomize=join_inside(base, comp["kustomize"]) if sources and "kustomize" in comp else "",
                    overlays={
                        o: f for (p, d, c, o), f in self.overlays.items() if (p, d, c) == (doc.path, doc.index, i)
                    },
                    substitute=comp.get("substitute") is True,
                    own_namespaces=comp.get("ownNamespaces") is True,
                    sources=sources,
                )
            )
        names = [c.name for c in components]
        for i, c in enumerate(names):
            if c in names[:i]:
                self.error(doc, ("spec", "components", i, "name"), f"duplicate component {c!r}")
        app = Application(
            name=name,
            owner=spec["owner"],
            components=tuple(components),
            depends_on=tuple(spec.get("dependsOn", ())),
            description=spec.get("description", ""),
            labels={k: scalar_text(v) for k, v in meta.get("labels", {}).items()},
            origin=_origin(doc),
            notify=tuple(spec.get("notify", ())),
        )
        if name in self.applications:
            self.duplicate(doc, "Application", name, self.applications[name].origin)
        else:
            self.applications[name] = app

    def build_release(self, doc: Document, meta: dict[str, Any], spec: dict[str, Any]) -> None:
        version = scalar_text(spec["version"])
        rel = Release(
            name=meta["name"],
            application=spec["application"],
            version=version,
            components={k: ReleaseComponent(**v) for k, v in spec["components"].items()},
            requires=tuple(Requirement(r["application"], r["version"]) for r in spec.get("requires", ())),
            notes=spec.get("notes", ""),
            origin=_origin(doc),
        )
        key = (rel.application, version)
        if rel.name in self.release_names:
            self.duplicate(doc, "Release", rel.name, self.release_names[rel.name])
        elif key in self.releases:
            first = self.releases[key].origin
            self.error(doc, ("spec", "version"), f"{rel.application} {version} is already released at {first}")
        else:
            self.release_names[rel.name] = rel.origin
            self.releases[key] = rel

    def build_stage(self, doc: Document, meta: dict[str, Any], spec: dict[str, Any]) -> None:
        soak = 0
        if "soak" in spec:
            try:
                soak = parse_duration(spec["soak"])
            except DurationError as exc:
                self.error(doc, ("spec", "soak"), f"soak: {exc}")
        waves = tuple(
            Wave(w["name"], _selector(w.get("selector")), w.get("maxParallel")) for w in spec.get("waves", ())
        )
        wave_names = [w.name for w in waves]
        for i, w in enumerate(wave_names):
            if w in wave_names[:i]:
                self.error(doc, ("spec", "waves", i, "name"), f"duplicate wave {w!r}")
        stage = Stage(
            name=meta["name"],
            releases={k: scalar_text(v) for k, v in spec.get("releases", {}).items()},
            promotes_from=spec.get("promotesFrom"),
            soak_seconds=soak,
            protected=spec.get("protected", False),
            self_heal=spec.get("selfHeal", True),
            approvers=tuple(spec.get("approvers", ())),
            owner_approval=bool(spec.get("ownerApproval", False)),
            waves=waves,
            origin=_origin(doc),
            release_origins={k: _origin(doc, ("spec", "releases", k)) for k in spec.get("releases", {})},
        )
        if stage.name in self.stages:
            self.duplicate(doc, "Stage", stage.name, self.stages[stage.name].origin)
        else:
            self.stages[stage.name] = stage

    def _environment(
        self,
        meta: dict[str, Any],
        spec: dict[str, Any],
        origin: Origin,
        generated_by: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Environment:
        apps = spec.get("applications")
        return Environment(
            name=meta["name"],
            stage=spec["stage"],
            targets=dict(spec["targets"]),
            labels={k: scalar_text(v) for k, v in meta.get("labels", {}).items()},
            parameters=dict(spec.get("parameters", {})),
            pins={k: scalar_text(v) for k, v in spec.get("pins", {}).items()},
            applications=tuple(apps) if apps is not None else None,
            wave=spec.get("wave"),
            allow_empty=spec.get("allowEmpty", False),
            origin=origin,
            generated_by=generated_by,
            generator_params=params or {},
        )

    def add_environment(self, doc: Document, env: Environment, where: tuple[str | int, ...]) -> None:
        if env.name in self.environments:
            first = self.environments[env.name].describe_origin()
            hint = " (to pin a generated environment's version or parameter, use its set's spec.overrides)"
            if env.generated_by:
                params = ", ".join(f"{k}={v}" for k, v in env.generator_params.items())
                message = (
                    f"environment {env.name!r} generated by EnvironmentSet {env.generated_by!r} ({params}) "
                    f"clashes with the one at {first}{hint}"
                )
            else:
                generated = self.environments[env.name].generated_by
                message = f"duplicate Environment {env.name!r} (first declared at {first}){hint if generated else ''}"
            self.error(doc, where, message)
            return
        self.environments[env.name] = env

    def build_environment(self, doc: Document, meta: dict[str, Any], spec: dict[str, Any]) -> None:
        self.add_environment(doc, self._environment(meta, spec, _origin(doc)), ("metadata", "name"))

    def build_environmentset(self, doc: Document, meta: dict[str, Any], spec: dict[str, Any]) -> None:
        name = meta["name"]
        if name in self.sets:
            self.duplicate(doc, "EnvironmentSet", name, self.sets[name])
            return
        self.sets[name] = _origin(doc)
        key = (id(doc), self.limits.max_environments)
        known = _EXPANDED.get(key)
        generated = known[1] if known is not None and known[0] is doc else self._expand(doc, name, spec)
        self.expanded[key] = (doc, generated)
        for item in generated:
            if isinstance(item, Environment):
                self.add_environment(doc, item, ("spec", "template", "metadata", "name"))
            else:
                self.problems.append(item)

    def _expand(self, doc: Document, name: str, spec: dict[str, Any]) -> list[Environment | Problem]:
        """The environments an EnvironmentSet generates, and the problems of those it cannot (in order)."""
        origin = Origin(doc.path, doc.line(("spec", "template", "metadata", "name")))
        out: list[Environment | Problem] = []
        overrides: dict[str, Any] = spec.get("overrides") or {}
        try:
            for gen in expand(spec, self.limits.max_environments):
                found = overrides.get(str(gen.metadata.get("name")))
                if found:  # this environment's pins and parameters, kept in the set (not a second Environment)
                    gen.spec["pins"] = {**(gen.spec.get("pins") or {}), **(found.get("pins") or {})}
                    gen.spec["parameters"] = {**(gen.spec.get("parameters") or {}), **(found.get("parameters") or {})}
                body = {"apiVersion": API_VERSION, "kind": "Environment", "metadata": gen.metadata, "spec": gen.spec}
                problems = schemas.check("environment", body, doc, ("spec", "template"))
                if problems:
                    params = ", ".join(f"{k}={v}" for k, v in gen.params.items())
                    out += [Problem(p.path, p.line, f"{p.message} (in the environment generated for {params})")
                            for p in problems]  # fmt: skip
                    continue
                out.append(self._environment(gen.metadata, gen.spec, origin, name, dict(gen.params)))
        except ExpansionError as exc:
            out.append(Problem(doc.path, doc.line(("spec", *exc.where)), str(exc)))
            return out
        made = {e.name for e in out if isinstance(e, Environment)}
        for target in overrides:
            if target not in made:
                shown = ", ".join(sorted(made)[:5]) + (", ..." if len(made) > 5 else "")
                out.append(Problem(doc.path, doc.line(("spec", "overrides", target)),
                                   f"overrides: {target!r} is not an environment of this set ({shown})"))  # fmt: skip
        return out

    def build_freezewindow(self, doc: Document, meta: dict[str, Any], spec: dict[str, Any]) -> None:
        absolute = []
        for i, win in enumerate(spec.get("absolute", ())):
            try:
                start, end = (datetime.fromisoformat(win[k]) for k in ("start", "end"))
            except ValueError as exc:
                self.error(doc, ("spec", "absolute", i), f"invalid date-time: {exc}")
                continue
            if start.tzinfo is None or end.tzinfo is None:
                self.error(doc, ("spec", "absolute", i), "start and end need a UTC offset (e.g. +01:00 or Z)")
                continue
            if end <= start:
                self.error(doc, ("spec", "absolute", i, "end"), "end must be after start")
                continue
            absolute.append(AbsoluteWindow(start, end))
        recurring = []
        for i, win in enumerate(spec.get("recurring", ())):
            try:
                duration = parse_duration(win["duration"])
            except DurationError as exc:
                self.error(doc, ("spec", "recurring", i, "duration"), f"recurring[{i}].duration: {exc}")
                continue
            recurring.append(RecurringWindow(win["cron"], duration, win.get("timezone", "UTC")))
        scope = spec.get("scope", {})
        freeze = FreezeWindow(
            name=meta["name"],
            reason=spec.get("reason", ""),
            stages=tuple(scope.get("stages", ())),
            applications=tuple(scope.get("applications", ())),
            environments=tuple(scope.get("environments", ())),
            selector=_selector(scope.get("selector")),
            absolute=tuple(absolute),
            recurring=tuple(recurring),
            drift_repair=spec.get("driftRepair", True),
            origin=_origin(doc),
        )
        if freeze.name in self.freezes:
            self.duplicate(doc, "FreezeWindow", freeze.name, self.freezes[freeze.name].origin)
        else:
            self.freezes[freeze.name] = freeze

    def build_team(self, doc: Document, meta: dict[str, Any], spec: dict[str, Any]) -> None:
        members, seen = [], set()
        for i, member in enumerate(spec["members"]):
            email = member["email"]
            if email.lower() in seen:
                self.error(doc, ("spec", "members", i, "email"), f"{email} is listed twice")
                continue
            seen.add(email.lower())
            members.append(Member(email, member.get("name", ""), tuple(member.get("signingKeys", ()))))
        team = Team(
            name=meta["name"],
            members=tuple(members),
            ops=spec.get("ops") is True,
            codeowners=tuple(spec.get("codeowners", ())),
            description=spec.get("description", ""),
            origin=_origin(doc),
        )
        if team.name in self.teams:
            self.duplicate(doc, "Team", team.name, self.teams[team.name].origin)
        else:
            self.teams[team.name] = team


Parsed = tuple[list[Document], list[Problem]]
# the files of the last load, parsed, by (path, content digest, size limit): the next revision of a repo differs
# in a few files, so a load parses only those (documents are never modified after parsing, so they can be shared)
_PARSED: dict[tuple[str, str, int], Parsed] = {}
# EnvironmentSets of the last load, expanded, by (id of their parsed document, limit): a set whose file did not
# change is the same document object (from _PARSED), and expands to the same environments and problems
_EXPANDED: dict[tuple[int, int], tuple[Document, list[Environment | Problem]]] = {}
# kustomization files of the last load, parsed, by (path, digest): overlays whose files did not change
_KUSTOMIZED: dict[tuple[str, str], list[Document] | YamlError] = {}


def forget_last_load() -> None:
    """Drop what the last load parsed and expanded: the next load reads every file (benchmarks of a load from
    scratch; the controller never needs it)."""
    global _PARSED, _EXPANDED, _KUSTOMIZED
    _PARSED, _EXPANDED, _KUSTOMIZED = {}, {}, {}


def load_repo(tree: SourceTree, limits: Limits | None = None) -> LoadResult:
    """Load and validate ``tree``. Never raises for bad input: every finding is a :class:`Problem`."""
    global _PARSED, _EXPANDED, _KUSTOMIZED
    from reconciler.core.validate import validate_repo

    builder = _Builder(tree, limits or Limits())
    docs, files = builder.read_documents()
    _PARSED = builder.parsed  # what this load read: the cache of the next
    builder.kustomizations = {p: v for (p, d), v in _KUSTOMIZED.items() if p in tree and tree.digest(p) == d}
    docs = builder.set_sources_aside(docs)
    _KUSTOMIZED = {(p, tree.digest(p)): v for p, v in builder.kustomizations.items()}
    for doc in docs:
        builder.dispatch(doc)
    _EXPANDED = builder.expanded
    repo = ReleasesRepo(
        applications=dict(sorted(builder.applications.items())),
        releases=dict(sorted(builder.releases.items())),
        stages=dict(sorted(builder.stages.items())),
        environments=dict(sorted(builder.environments.items())),
        freezes=dict(sorted(builder.freezes.items())),
        environment_sets=dict(sorted(builder.sets.items())),
        teams=dict(sorted(builder.teams.items())),
    )
    global_problems, env_problems = validate_repo(repo, frozenset(builder.broken))
    problems = sort_problems(builder.problems + global_problems)
    return LoadResult(
        repo=None if problems else repo,
        problems=problems,
        environment_problems={k: sort_problems(v) for k, v in sorted(env_problems.items())},
        files=files,
    )


__all__ = ["Kind", "Limits", "LoadResult", "load_repo"]
