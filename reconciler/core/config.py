"""The operator's controller configuration (YAML, validated by ``schemas/config.schema.json``).

Holds what a pull request on the releases repo must never control: where the source is, which driver and which
connection each target name uses (exact ``targets`` entries, then ``targetPatterns`` globs with ``${target}``),
intervals, timeouts, concurrency and secrets' locations. Relative paths are resolved against the config file's
directory. Parsed by :func:`parse_config`; errors are :class:`~reconciler.core.problems.Problem` lists naming the
file and line. Called by ``reconciler run/status/history/demo``. Pure (the caller reads the file).
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.core import schemas
from reconciler.core.durations import DurationError, parse_duration
from reconciler.core.problems import InvalidInput, Problem
from reconciler.core.schemas import dotted
from reconciler.core.yamlsafe import Document, Path, parse_file

PATH_FIELDS = ("path", "identityFile", "knownHosts", "kubeconfig")


@dataclass(frozen=True)
class TargetConfig:
    name: str
    driver: str
    settings: Mapping[str, Any] = field(default_factory=dict)  # driver-specific fields, paths absolute

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)


@dataclass(frozen=True)
class ControllerConfig:
    path: str  # the config file, absolute
    source_url: str
    branch: str = "main"
    commit_url: str | None = None  # a forge link to a commit, ``{revision}`` replaced (the dashboard's links)
    interval: float = 30.0
    source_timeout: float = 60.0
    max_file_size: int = 1024 * 1024
    max_repo_size: int = 256 * 1024 * 1024
    status_branch: str = "reconciler-status"
    author_name: str = "reconciler"
    author_email: str = "reconciler@localhost"
    state_dir: str = ""
    concurrency: int = 8
    apply_timeout: float = 300.0
    drift_interval: float = 300.0
    backoff_initial: float = 10.0
    backoff_max: float = 600.0
    listen: str = "127.0.0.1:8080"
    targets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    patterns: tuple[Mapping[str, Any], ...] = ()
    allowed_signers: str | None = None
    webhooks: Mapping[str, Any] = field(default_factory=dict)
    api: Mapping[str, Any] = field(default_factory=dict)  # who may read and act (reconciler.http.auth)
    age_identity: str | None = None  # a reference (file:/path or env:NAME) to the age identities for SOPS files
    notifications: Mapping[str, Any] = field(default_factory=dict)  # sinks and subscriptions (engine/notifications)

    def target(self, name: str) -> TargetConfig | None:
        """The configuration of target ``name``: an exact entry, else the first matching pattern."""
        entry = self.targets.get(name)
        if entry is None:
            for pattern in self.patterns:
                if fnmatch.fnmatchcase(name, pattern["match"]):
                    entry = {k: _fill(v, name) for k, v in pattern.items() if k != "match"}
                    break
        if entry is None:
            return None
        settings = {k: v for k, v in entry.items() if k != "driver"}
        base = posixpath.dirname(self.path)
        for key in PATH_FIELDS:
            if isinstance(settings.get(key), str):
                settings[key] = posixpath.normpath(posixpath.join(base, settings[key]))
        if settings.get("driver") == "script" or entry["driver"] == "script":
            command = list(settings.get("command", []))
            if command and "/" in command[0] and not command[0].startswith("/"):
                command[0] = posixpath.normpath(posixpath.join(base, command[0]))
            settings["command"] = command
        return TargetConfig(name, entry["driver"], settings)

    def with_overrides(self, **changes: Any) -> ControllerConfig:
        return replace(self, **changes)


def _reference(base: str, value: str | None) -> str | None:
    """A ``file:`` reference relative to the config file made absolute; ``env:`` as it is."""
    if value and value.startswith("file:") and not value[5:].startswith("/"):
        return "file:" + posixpath.normpath(posixpath.join(base, value[5:]))
    return value


def _fill(value: Any, target: str) -> Any:
    if isinstance(value, str):
        return value.replace("${target}", target)
    if isinstance(value, list):
        return [_fill(v, target) for v in value]
    return value


_DURATIONS = (
    ("interval", ("source", "interval")),
    ("source_timeout", ("source", "timeout")),
    ("apply_timeout", ("applyTimeout",)),
    ("drift_interval", ("driftCheckInterval",)),
    ("backoff_initial", ("backoff", "initial")),
    ("backoff_max", ("backoff", "max")),
)
TARGET_DURATIONS = ("timeout", "healthTimeout")


def _durations(path: str, doc: Document, raw: dict[str, Any]) -> dict[str, float]:
    """The config's durations in seconds, keyed by field of :class:`ControllerConfig`; also checks the targets'
    own durations, so a value the schema's pattern accepts but that is out of bounds (over 10 years) is refused
    here, naming the file, line and field, before anything runs. Raises :class:`InvalidInput` with every one."""
    durations: dict[str, float] = {}
    problems: list[Problem] = []
    places: list[tuple[str | None, Path]] = [(key, where) for key, where in _DURATIONS]
    for section in ("targets", "targetPatterns"):
        entries = raw.get(section) or {}
        for name in entries if isinstance(entries, dict) else range(len(entries)):
            places += [(None, (section, name, key)) for key in TARGET_DURATIONS]
    for key, where in places:
        node: Any = raw
        for part in where:
            if isinstance(node, dict):
                node = node.get(part)
            else:
                node = node[part] if isinstance(node, list) and isinstance(part, int) else None
        if not isinstance(node, str):
            continue
        try:
            seconds = float(parse_duration(node))
        except DurationError as exc:
            problems.append(Problem(path, doc.line(where), f"{dotted(where)}: {exc}"))
            continue
        if key is not None:
            durations[key] = seconds
    if problems:
        raise InvalidInput(problems)
    return durations


def parse_config(path: str, data: bytes) -> ControllerConfig:
    """Parse and validate a config file. Raises :class:`InvalidInput` with every problem."""
    docs, problems = parse_file(path, data)
    if problems:
        raise InvalidInput(problems)
    if len(docs) != 1 or not isinstance(docs[0].data, dict):
        raise InvalidInput([Problem(path, 1, "the config must be one YAML mapping")])
    doc = docs[0]
    raw: dict[str, Any] = doc.data
    problems = schemas.check("config", raw, doc)
    if problems:
        raise InvalidInput(problems)
    durations = _durations(path, doc, raw)
    base = posixpath.dirname(path)
    source, status = raw["source"], raw.get("status", {})
    url = source["url"]
    if "://" not in url and ":" not in url.split("/")[0]:
        url = posixpath.normpath(posixpath.join(base, url))  # a relative local path
    state_dir = posixpath.normpath(posixpath.join(base, raw.get("stateDir", ".reconciler-state")))
    signers = raw.get("allowedSigners")
    config = ControllerConfig(
        path=path,
        source_url=url,
        branch=source.get("branch", "main"),
        commit_url=source.get("commitUrl"),
        max_file_size=source.get("maxFileSize", 1024 * 1024),
        max_repo_size=source.get("maxRepoSize", 256 * 1024 * 1024),
        status_branch=status.get("branch", "reconciler-status"),
        author_name=status.get("authorName", "reconciler"),
        author_email=status.get("authorEmail", "reconciler@localhost"),
        state_dir=state_dir,
        concurrency=raw.get("concurrency", 8),
        listen=raw.get("listen", "127.0.0.1:8080"),
        targets=raw.get("targets", {}),
        patterns=tuple(raw.get("targetPatterns", ())),
        allowed_signers=posixpath.normpath(posixpath.join(base, signers)) if signers else None,
        webhooks=raw.get("webhooks", {}),
        api=raw.get("api", {}),
        age_identity=_reference(base, raw.get("secrets", {}).get("ageIdentity")),
        notifications=raw.get("notifications", {}),
        **durations,
    )
    sinks = config.notifications.get("sinks", {})
    for i, subscription in enumerate(config.notifications.get("subscriptions", ())):
        if subscription["sink"] not in sinks:
            line = doc.line(("notifications", "subscriptions", i, "sink"))
            raise InvalidInput([Problem(path, line, f"notifications: unknown sink {subscription['sink']!r}")])
    if config.status_branch == config.branch:
        line = doc.line(("status", "branch"))
        raise InvalidInput([Problem(path, line, "status.branch must differ from source.branch (the tracked branch)")])
    return config
