"""Desired state: what one application should look like on one target of one environment.

``render_environment`` turns the model into :class:`DesiredUnit` values, one per (environment, application,
target): component templates are rendered with a non-executing ``${...}`` substitution and artifact components
become a small JSON descriptor, so every driver receives files (``local``, ``kubernetes``) and structured
components (``script``/``ssh``) from the same value. Each unit carries a content ``fingerprint``; a unit whose
fingerprint equals what was last applied needs no work. ``input_key`` is a cheaper fingerprint of the *inputs*
(blob digests + parameters) that lets the engine skip rendering altogether when nothing it reads has changed.

Called by the engine, ``plan`` and the drivers' tests. Pure.
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.core.kustomize import Build, KustomizeError, image_entry, kustomization_file, wrapper
from reconciler.core.model import Application, Component, Environment, Release, ReleasesRepo
from reconciler.core.problems import Problem
from reconciler.core.substitute import PLACEHOLDER, WHOLE, text_of
from reconciler.core.yamlsafe import YamlFloat, YamlInt, scalar_text


@dataclass(frozen=True)
class DesiredComponent:
    name: str
    role: str
    files: Mapping[str, bytes] = field(default_factory=dict)  # relative path -> rendered content
    artifact: Mapping[str, str] | None = None  # name, type, artifact, checksum, version (script targets)
    # how each templated file of ``files`` was rendered: its compiled template and the text put in each slot (the
    # rendered bytes are the join of the two). A driver that parses rendered YAML may parse a template once and
    # fill in the texts instead; ``files`` stays the truth (equality and fingerprints ignore this).
    filled: Mapping[str, Filled] = field(default_factory=dict, compare=False, repr=False)
    adopt: bool = False  # the application opts in to taking over objects that exist and are not ours (audited)
    own_namespaces: bool = False  # its Namespace objects are managed as ours, not only ensured (kubernetes)
    # files decrypted at apply time (SOPS): script targets get their text on stdin (``as_json``), never a log
    decrypted: frozenset[str] = field(default=frozenset(), compare=False, repr=False)


@dataclass(frozen=True)
class DesiredUnit:
    """One application's components for one target of one environment."""

    environment: str
    application: str
    version: str
    target: str
    components: tuple[DesiredComponent, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    def files(self) -> dict[str, bytes]:
        """Every rendered file, keyed ``<component>/<file>``."""
        return {f"{c.name}/{path}": data for c in self.components for path, data in c.files.items()}

    def filled(self) -> dict[str, Filled]:
        """How the templated files of :meth:`files` were rendered (same keys; files not from a template absent)."""
        return {f"{c.name}/{path}": filled for c in self.components for path, filled in c.filled.items()}

    def as_json(self) -> dict[str, Any]:
        """The structured form sent to script targets (no file contents for templates: paths + hashes; the text
        of files decrypted at apply time under ``secrets``, which only the agent's stdin ever carries)."""
        return {
            "environment": self.environment,
            "application": self.application,
            "version": self.version,
            "target": self.target,
            "fingerprint": self.fingerprint,
            "parameters": {k: _plain(v) for k, v in self.parameters.items()},
            "components": [
                {
                    "name": c.name,
                    "role": c.role,
                    "artifact": dict(c.artifact) if c.artifact else None,
                    "files": {p: hashlib.sha256(d).hexdigest() for p, d in sorted(c.files.items())},
                    **(
                        {"secrets": {p: c.files[p].decode("utf-8", "replace") for p in sorted(c.decrypted)}}
                        if c.decrypted
                        else {}
                    ),
                }
                for c in self.components
            ],
        }


def _plain(value: Any) -> Any:
    if not isinstance(value, YamlInt | YamlFloat):
        return value
    return int(value) if isinstance(value, int) else float(value)


def fingerprint(components: tuple[DesiredComponent, ...], version: str) -> str:
    digest = hashlib.sha256(version.encode())
    for comp in components:
        digest.update(b"\0c" + comp.name.encode())
        for path in sorted(comp.files):
            digest.update(b"\0f" + path.encode() + b"\0" + hashlib.sha256(comp.files[path]).digest())
        if comp.artifact:
            digest.update(b"\0a" + json.dumps(comp.artifact, sort_keys=True).encode())
        if comp.adopt:  # (only when set: the fingerprints of units without it stay as they were)
            digest.update(b"\0adopt")
        if comp.own_namespaces:
            digest.update(b"\0own-namespaces")
    return digest.hexdigest()


def with_identity(unit: DesiredUnit, identity: str) -> DesiredUnit:
    """``unit`` whose fingerprint also covers ``identity``: what its driver adds when it applies it (see
    ``reconciler.drivers.base.identified``). An empty identity leaves the unit as it is."""
    if not identity:
        return unit
    digest = hashlib.sha256(f"{unit.fingerprint}\0identity\0{identity}".encode()).hexdigest()
    u = unit  # (built directly: dataclasses.replace costs several times more, once per unit and cycle)
    return DesiredUnit(u.environment, u.application, u.version, u.target, u.components, u.parameters, digest)


class RenderError(ValueError):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def template_values(env: Environment, app: Application, release: Release, comp: Component) -> dict[str, Any]:
    rc = release.components.get(comp.name)
    return {
        "env": {"name": env.name, "stage": env.stage, "labels": dict(env.labels)},
        "params": dict(env.parameters),
        "app": {"name": app.name, "owner": app.owner},
        "release": {"version": release.version, "name": release.name},
        "component": {
            "name": comp.name,
            "image": rc.image if rc else "",
            "digest": rc.digest if rc else "",
            "artifact": rc.artifact if rc else "",
            "checksum": rc.checksum if rc else "",
        },
    }


@dataclass(frozen=True)
class Slot:
    """A placeholder of a compiled template: its dotted key, its line, and whether it is the whole line."""

    key: str
    line: int
    whole: bool  # the line is exactly ``${key}`` (no newline): the value's own text, as ``scalar_text`` gives it

    @functools.cached_property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.key.split("."))


class Compiled:
    """A template split into literal text and :class:`Slot` values (``parts``), with what filling it needs worked
    out once: the distinct slots to look up (``lookups``, by key and wholeness, in order of first use), which of
    them each slot takes (``picks``), and a ``%``-format of the literal text (``fmt``: ``fmt % texts`` renders)."""

    __slots__ = ("fmt", "lookups", "parts", "picks")

    def __init__(self, parts: tuple[str | Slot, ...]) -> None:
        self.parts = parts
        first: dict[tuple[str, bool], int] = {}
        lookups: list[Slot] = []
        picks: list[int] = []
        for part in parts:
            if isinstance(part, Slot):
                index = first.setdefault((part.key, part.whole), len(lookups))
                if index == len(lookups):
                    lookups.append(part)
                picks.append(index)
        self.lookups = tuple(lookups)
        self.picks = tuple(picks)
        self.fmt = "".join(p.replace("%", "%%") if isinstance(p, str) else "%s" for p in parts)


Filled = tuple[Compiled, tuple[str, ...]]  # a compiled template and the text of each of its slots, in order


@functools.lru_cache(maxsize=4096)
def compile_template(path: str, data: bytes) -> Compiled:
    """Split a template into literal text and :class:`Slot` values, once per distinct (path, content).

    235 environments render the same few hundred templates: parsing the placeholders once and then only joining
    strings is what keeps rendering cheap. Raises :class:`RenderError` for text that is not UTF-8.
    """
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        bad_line = data[: exc.start].count(b"\n") + 1
        raise RenderError(Problem(path, bad_line, "template is not valid UTF-8")) from None
    if "${" not in text:
        return Compiled((text,))
    parts: list[str | Slot] = []
    literal: list[str] = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if "$" not in line:
            literal.append(line)
            continue
        whole = WHOLE.fullmatch(line)
        if whole:
            parts.extend(("".join(literal), Slot(whole.group(1), number, True)))
            literal = []
            continue
        last = 0
        for match in PLACEHOLDER.finditer(line):
            literal.append(line[last : match.start()])
            last = match.end()
            if match.group(0) == "$${":
                literal.append("${")
            else:
                parts.extend(("".join(literal), Slot(match.group(1), number, False)))
                literal = []
        literal.append(line[last:])
    parts.append("".join(literal))
    return Compiled(tuple(p for p in parts if p != ""))


def render_template(path: str, data: bytes, values: Mapping[str, Any]) -> bytes:
    """Substitute placeholders; a missing key names its line."""
    return rendered(fill_template(path, data, values))


def rendered(filled: Filled) -> bytes:
    """The rendered bytes of a filled template."""
    compiled, texts = filled
    return (compiled.fmt % texts).encode()


def fill_template(path: str, data: bytes, values: Mapping[str, Any]) -> Filled:
    """The compiled template and the text each of its slots gets from ``values``; a missing key names its line."""
    compiled = compile_template(path, data)
    out: list[str] = []
    for part in compiled.lookups:
        value: Any = values
        for name in part.parts:  # the dotted lookup of substitute.lookup_in, with plain dicts first
            if (type(value) is dict or isinstance(value, Mapping)) and name in value:
                value = value[name]
            else:
                raise RenderError(Problem(path, part.line, f"unknown template key ${{{part.key}}}"))
        if type(value) is str:
            out.append(value)
        elif isinstance(value, Mapping | list):  # a placeholder must name a scalar
            raise RenderError(Problem(path, part.line, f"unknown template key ${{{part.key}}}"))
        else:
            out.append(scalar_text(value) if part.whole else text_of(value))
    if len(out) == len(compiled.picks):  # each slot its own key
        return compiled, tuple(out)
    return compiled, tuple([out[i] for i in compiled.picks])


Reader = Callable[[str], bytes]


def render_unit(
    repo: ReleasesRepo,
    env: Environment,
    app: Application,
    release: Release,
    target: str,
    read: Reader,
    build: Build | None = None,
) -> DesiredUnit:
    """Render the components of ``app`` that go to ``target`` in ``env``; ``build`` renders Kustomize overlays
    (``reconciler.source.kustomize``). Raises :class:`RenderError`."""
    comps = []
    for comp in app.components:
        if env.targets.get(comp.role) != target:
            continue
        values = template_values(env, app, release, comp)
        filled = {posixpath.basename(t): fill_template(t, read(t), values) for t in comp.templates}
        files = {name: rendered(f) for name, f in filled.items()}
        if comp.manifests or comp.kustomize:
            sourced = _sourced(app, comp, release, read, build, values)
            filled = (
                {name: fill_template(name, data, values) for name, data in sourced.items()} if comp.substitute else {}
            )
            files = {name: rendered(f) for name, f in filled.items()} if comp.substitute else sourced
        artifact = None
        if comp.artifact is not None:
            rc = release.components.get(comp.name)
            artifact = {
                "name": comp.artifact.name,
                "type": comp.artifact.type,
                "artifact": rc.artifact if rc else "",
                "checksum": rc.checksum if rc else "",
                "version": release.version,
            }
            files["artifact.json"] = (json.dumps(artifact, indent=2, sort_keys=True) + "\n").encode()
        comps.append(DesiredComponent(comp.name, comp.role, files, artifact, filled, adopt=comp.adopt,
                                      own_namespaces=comp.own_namespaces))  # fmt: skip
    components = tuple(comps)
    return DesiredUnit(
        environment=env.name,
        application=app.name,
        version=release.version,
        target=target,
        components=components,
        parameters=dict(env.parameters),
        fingerprint=fingerprint(components, release.version),
    )


def _sourced(
    app: Application, comp: Component, release: Release, read: Reader, build: Build | None, values: Mapping[str, Any]
) -> dict[str, bytes]:
    """The files of a ``manifests`` directory (named by their path below it, ``/`` written ``--``), or the rendered
    overlay of a ``kustomize`` component (``<overlay directory name>.yaml``) with the release's image set."""
    source = comp.manifests or comp.kustomize
    chosen = source
    if "${" in source:  # one directory per environment (overlays/${env.stage})
        chosen = rendered(fill_template(app.origin.path, source.encode(), values)).decode()
        if chosen not in comp.overlays:
            noun, nouns = ("directory", "directories") if comp.manifests else ("overlay", "overlays")
            what = "manifests" if comp.manifests else "kustomize"
            found = ", ".join(comp.overlays) or "none"
            message = f"component {comp.name}: no {noun} {chosen} ({what}: {source}; {nouns} found: {found})"
            raise RenderError(Problem(app.origin.path, app.origin.line, message))
    if comp.manifests:
        files = comp.overlays[chosen] if "${" in source else comp.sources
        prefix = "" if chosen == "." else f"{chosen}/"
        return {p.removeprefix(prefix).replace("/", "--"): read(p) for p in files}
    overlay = chosen
    rc = release.components.get(comp.name)
    entry = image_entry(rc.image, rc.digest) if rc else None
    data = render_overlay(overlay, comp.overlays[overlay], read, build, [entry] if entry else [])
    return {f"{posixpath.basename(overlay.strip('.')) or 'kustomization'}.yaml": data}


def render_overlay(
    overlay: str, sources: tuple[str, ...], read: Reader, build: Build | None, images: list[dict[str, str]]
) -> bytes:
    """An overlay (repo directory) rendered from the files it reads, with ``images`` set. Raises
    :class:`RenderError` naming the overlay's kustomization file."""
    overlay = "" if overlay == "." else overlay
    where = kustomization_file(overlay, sources) or overlay or "."
    if build is None:
        raise RenderError(Problem(where, None, "Kustomize overlays are not rendered here (no kubectl kustomize)"))
    layer = wrapper(f"../{overlay or '.'}", images)  # (the wrapper sits one level below the repo's root)
    try:
        return build({p: read(p) for p in sources}, overlay, layer)
    except KustomizeError as exc:
        raise RenderError(Problem(where, None, str(exc).removeprefix(f"{where}: "))) from exc


def overlay_problems(repo: ReleasesRepo, read: Reader, build: Build) -> list[Problem]:
    """Each ``kustomize`` component's overlay rendered once as written (``validate``): what kustomize refuses."""
    problems: list[Problem] = []
    for app in repo.applications.values():
        for comp in app.components:
            for overlay, sources in comp.overlays.items():
                try:
                    render_overlay(overlay, sources, read, build, [])
                except RenderError as exc:
                    problems.append(exc.problem)
    return problems


def targets_of(env: Environment, app: Application) -> list[str]:
    """The target names ``app`` uses in ``env``, in component order, without repeats."""
    return list(dict.fromkeys(env.targets[c.role] for c in app.components if c.role in env.targets))


def app_digest(app: Application, release: Release, digest: Callable[[str], str]) -> str:
    """A digest of the files an application's rendering reads at one release (manifests and templates)."""
    h = hashlib.sha256()
    read = (t for c in app.components for t in (*c.templates, *c.sources))
    for part in (app.origin.path, release.origin.path, *read):
        h.update(part.encode() + b"\0" + digest(part).encode() + b"\0")
    h.update(repr(app).encode() + release.version.encode())
    return h.hexdigest()


def environment_payload(env: Environment) -> list[Any]:
    """The environment's own inputs to rendering, in a stable JSON-able form."""
    return [
        env.name,
        env.stage,
        sorted(env.labels.items()),
        sorted(env.targets.items()),
        sorted((k, scalar_text(v)) for k, v in env.parameters.items()),
        env.allow_empty,
    ]


def render_token(env: Environment, app_digest_: str) -> str:
    """The render memo's key of one application in ``env``: the environment's own inputs and the application's
    digest at its release (:func:`app_digest`); equal tokens render equal units."""
    own = hashlib.sha256(json.dumps(environment_payload(env)).encode()).hexdigest()[:32]
    return own + app_digest_[:32]


def input_key(
    repo: ReleasesRepo, env: Environment, app: Application, release: Release, digest: Callable[[str], str]
) -> str:
    """A fingerprint of everything rendering ``app`` in ``env`` reads; equal keys render equal units."""
    payload = [*environment_payload(env), app_digest(app, release, digest)]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()
