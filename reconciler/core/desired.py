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

import hashlib
import json
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.core.model import Application, Component, Environment, Release, ReleasesRepo
from reconciler.core.problems import Problem
from reconciler.core.substitute import MissingKey, lookup_in, substitute_string
from reconciler.core.yamlsafe import scalar_text


@dataclass(frozen=True)
class DesiredComponent:
    name: str
    role: str
    files: Mapping[str, bytes] = field(default_factory=dict)  # relative path -> rendered content
    artifact: Mapping[str, str] | None = None  # name, type, artifact, checksum, version (script targets)


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

    def as_json(self) -> dict[str, Any]:
        """The structured form sent to script targets (no file contents for templates: paths + hashes)."""
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
                }
                for c in self.components
            ],
        }


def _plain(value: Any) -> Any:
    text = getattr(value, "text", None)
    if isinstance(value, bool) or text is None:
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
    return digest.hexdigest()


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


def render_template(path: str, data: bytes, values: Mapping[str, Any]) -> bytes:
    """Substitute placeholders line by line so a missing key names its line."""
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        bad_line = data[: exc.start].count(b"\n") + 1
        raise RenderError(Problem(path, bad_line, "template is not valid UTF-8")) from None
    if "${" not in text:
        return text.encode()
    lookup = lookup_in(values)
    out = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if "$" not in line:
            out.append(line)
            continue
        try:
            out.append(scalar_text(substitute_string(line, lookup)))
        except MissingKey as exc:
            raise RenderError(Problem(path, number, f"unknown template key ${{{exc.key}}}")) from None
    return "".join(out).encode()


Reader = Callable[[str], bytes]


def render_unit(
    repo: ReleasesRepo, env: Environment, app: Application, release: Release, target: str, read: Reader
) -> DesiredUnit:
    """Render the components of ``app`` that go to ``target`` in ``env``. Raises :class:`RenderError`."""
    comps = []
    for comp in app.components:
        if env.targets.get(comp.role) != target:
            continue
        values = template_values(env, app, release, comp)
        files = {posixpath.basename(t): render_template(t, read(t), values) for t in comp.templates}
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
        comps.append(DesiredComponent(comp.name, comp.role, files, artifact))
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


def targets_of(env: Environment, app: Application) -> list[str]:
    """The target names ``app`` uses in ``env``, in component order, without repeats."""
    return list(dict.fromkeys(env.targets[c.role] for c in app.components if c.role in env.targets))


def app_digest(app: Application, release: Release, digest: Callable[[str], str]) -> str:
    """A digest of the files an application's rendering reads at one release (manifests and templates)."""
    h = hashlib.sha256()
    for part in (app.origin.path, release.origin.path, *(t for c in app.components for t in c.templates)):
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


def input_key(
    repo: ReleasesRepo, env: Environment, app: Application, release: Release, digest: Callable[[str], str]
) -> str:
    """A fingerprint of everything rendering ``app`` in ``env`` reads; equal keys render equal units."""
    payload = [*environment_payload(env), app_digest(app, release, digest)]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()
