"""A fleet for the stateful invariant tests: a real releases repo (bare remote + work clone, commits signed or not
with a real ssh-keygen key and git's own verification), a real status branch, the in-memory driver twin for every
target (one dict per target, kept across controller restarts), an injected clock, and a model of what the promises
allow (which production states were signed, since when each version ran in dev, when a freeze holds).

Used by tests/invariants/test_stateful.py (the rule-based machine) and the scripted regressions beside it.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from reconciler.commands.common import load_config, status_store
from reconciler.core.desired import DesiredUnit
from reconciler.core.problems import PermanentError, TemporaryError
from reconciler.drivers.memory import MemoryDriver
from reconciler.engine.controller import Controller
from reconciler.engine.targets import DriverPool
from reconciler.source.gitrepo import GitSource
from tests.core.test_teams import team
from tests.engine import NEW_REF_RELEASE as REF_311
from tests.minirepo import minimal_repo
from tests.source import Upstream, git

TEMPLATE = "applications/ref/templates/deployment.yaml"
DEV = ("lille-dev", "rennes-dev")
PRODUCTION = ("lille-production", "rennes-production", "shared-production")
SOAK = 24 * 3600.0
OUTSIDER = "bob@example.org"  # team-famille: ref's template is not his
FOREIGN = ("lille-production", "legacy-tool")  # someone else's unit on k8s-nord: never ours to touch


@cache
def ops_key() -> Path:
    """One ed25519 key for the whole test session (ssh-keygen is the slow part of a fleet)."""
    key = Path(tempfile.mkdtemp(prefix="invariants-keys-")) / "ops"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops@example.org", "-f", str(key)],
                   check=True)  # fmt: skip
    return key


def _stage(name: str, ref: str, protected: bool, famille: str | None = None) -> bytes:
    releases = {"ref": ref, **({"famille": famille} if famille else {})}
    spec: dict[str, Any] = {"releases": releases}
    if not protected:
        spec["ownerApproval"] = True  # outsiders' changes need the owning Team's (or ops') signature
    if protected:
        spec.update(promotesFrom="dev", soak="24h", protected=True)
    doc = {"apiVersion": "reconciler.io/v1", "kind": "Stage", "metadata": {"name": name}, "spec": spec}
    return yaml.safe_dump(doc, sort_keys=False).encode()


def _template(token: str, broken: bool = False) -> bytes:
    value = "${params.nowhere}" if broken else "${release.version}"
    return (f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ${{app.name}}\n  namespace: ${{params.namespace}}\n"
            f"data:\n  version: \"{value}\"\n  token: \"{token}\"\n").encode()  # fmt: skip


@dataclass
class Model:
    """What the promises allow, kept beside the system under test."""

    dev: str = "3.10"
    prod: str = "3.0"
    token: str = "c0"
    broken: bool = False  # the head's template does not render
    served: tuple[str, str, str] = ("3.10", "3.0", "c0")  # (dev, prod, token) of the last valid head
    approved: set[tuple[str, str]] = field(default_factory=lambda: {("3.0", "c0")})  # signed production states
    overridden: set[str] = field(default_factory=set)  # production versions a signed override let through
    freeze: tuple[float, float] | None = None  # an active freeze of production (start, end), at the head
    served_freeze: tuple[float, float] | None = None  # the freeze of the last valid head
    dev_stints: dict[str, list[tuple[str, float, float | None]]] = field(default_factory=dict)
    prod_seen: dict[str, set[str]] = field(default_factory=dict)  # versions each production env ever ran
    commits: int = 0
    outsider_tokens: set[str] = field(default_factory=set)  # template contents an outsider wrote, nobody attested


class Fleet:
    """The system under test and its model."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = [time.time()]
        self.model = Model()
        self.upstream = Upstream(root)
        files = dict(minimal_repo())
        files[TEMPLATE] = _template("c0")
        files["releases/ref/3.11.yaml"] = REF_311
        files["stages/dev.yaml"] = _stage("dev", "3.10", False, famille="2.4.0")
        files["stages/production.yaml"] = _stage("production", "3.0", True)
        files["teams/ref.yaml"] = team("team-ref", "alice@example.org")  # alice: the default author of commits
        files["teams/famille.yaml"] = team("team-famille", OUTSIDER)
        files["teams/ops.yaml"] = team("team-ops", "ops@example.org", ops=True)
        self._write(files)
        self._commit("initial fleet", signed=True)
        allowed = root / "allowed_signers"
        pub = " ".join(ops_key().with_suffix(".pub").read_text().split()[:2])
        allowed.write_text(f'ops@example.org namespaces="git" {pub}\n')
        config = {
            "apiVersion": "reconciler.io/v1", "kind": "ControllerConfig",
            "source": {"url": str(self.upstream.bare), "branch": "main", "interval": "1s", "timeout": "30s"},
            "stateDir": str(root / "state"), "concurrency": 2, "applyTimeout": "60s",
            "driftCheckInterval": "1h", "backoff": {"initial": "60s", "max": "10m"},
            "allowedSigners": str(allowed), "targets": {}, "targetPatterns": [{"match": "*", "driver": "local",
                                                                               "path": str(root / "unused")}],
        }  # fmt: skip
        (root / "controller.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.config = load_config(str(root / "controller.yaml"))
        self.drivers: dict[str, MemoryDriver] = {}
        self.pushed: list[dict[str, Any]] = []  # audit entries the status store was given
        nord = self.driver("k8s-nord")
        nord.foreign[FOREIGN] = "someone else's"
        nord.units[FOREIGN] = DesiredUnit(*FOREIGN, "9.9", "k8s-nord", (), {}, "foreign")
        self.controller = self._controller()

    # --- the system under test ------------------------------------------------------------------------------
    def driver(self, target: str) -> MemoryDriver:
        return self.drivers.setdefault(target, _Twin(target))

    def _controller(self) -> Controller:
        source = GitSource(self.config.source_url, self.config.branch, self.root / "state" / "source", timeout=30)
        store = _Recording(status_store(self.config), self.pushed)
        pool = DriverPool(self.config, factory=lambda target: self.driver(target.name))
        controller = Controller(self.config, source, store, pool, clock=lambda: self.clock[0])
        controller.restore()
        return controller

    def restart(self) -> None:
        self.controller.close()
        self.controller = self._controller()

    def close(self) -> None:
        self.controller.close()

    # --- commits -------------------------------------------------------------------------------------------------
    def _write(self, files: dict[str, bytes | None]) -> None:
        for path, data in files.items():
            target = self.upstream.work / path
            if data is None:
                target.unlink(missing_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def _commit(self, message: str, signed: bool, author: str | None = None) -> None:
        who = {"GIT_AUTHOR_EMAIL": author, "GIT_COMMITTER_EMAIL": author} if author else None
        git("add", "-A", cwd=self.upstream.work)
        sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={ops_key()}"] if signed else []
        git(*sign, "commit", "-q", "--allow-empty", *(["-S"] if signed else []), "-m", message,
            cwd=self.upstream.work, env=who)  # fmt: skip
        self.upstream.push()
        self.model.commits += 1

    def commit(self, files: dict[str, bytes | None], message: str, signed: bool, touches_production: bool,
               author: str | None = None, touches_ref: bool = False) -> None:  # fmt: skip
        self._write(files)
        self._commit(message, signed, author)
        m = self.model
        if touches_ref and signed:  # ops signed a commit that changed ref in dev: it attests ref's content
            m.outsider_tokens.discard(m.token)
        if not m.broken:
            m.served = (m.dev, m.prod, m.token)
            m.served_freeze = m.freeze
        if signed and touches_production and not m.broken:
            m.approved.add((m.prod, m.token))

    def bump(self, stage: str, version: str, signed: bool, override: bool) -> None:
        m = self.model
        if stage == "dev":
            changed, m.dev = m.dev != version, version
            self.commit({"stages/dev.yaml": _stage("dev", version, False, famille="2.4.0")}, "dev bump", signed, False,
                        touches_ref=changed)  # fmt: skip
            return
        m.prod = version
        trailer = "\n\nPromotion-Override: hotfix" if override else ""
        if override and signed:
            m.overridden.add(version)
        self.commit({"stages/production.yaml": _stage("production", version, True)}, f"prod bump{trailer}", signed,
                    True)  # fmt: skip

    def edit(self, signed: bool, broken: bool = False, outsider: bool = False) -> None:
        """A template edit by alice (team-ref, ref's owner) or by an outsider (team-famille); signed: by ops."""
        m = self.model
        m.token = f"c{m.commits + 1}"
        m.broken = broken
        if outsider and not signed:
            m.outsider_tokens.add(m.token)
        self.commit({TEMPLATE: _template(m.token, broken)}, "edit the template", signed, True,
                    author=OUTSIDER if outsider else None, touches_ref=True)  # fmt: skip

    def set_freeze(self, hours: float | None, signed: bool) -> None:
        now = self.clock[0]
        if hours is None:
            self.model.freeze = None
            self.commit({"freezes/now.yaml": None}, "thaw", signed, False)
            return
        start, end = now - 60, now + hours * 3600
        self.model.freeze = (start, end)
        doc = {"apiVersion": "reconciler.io/v1", "kind": "FreezeWindow", "metadata": {"name": "now"},
               "spec": {"scope": {"stages": ["production"]}, "absolute": [{"start": _iso(start), "end": _iso(end)}]}}  # fmt: skip
        self.commit({"freezes/now.yaml": yaml.safe_dump(doc).encode()}, "freeze production", signed, False)

    # --- reading the twin ----------------------------------------------------------------------------------
    def units(self, env: str) -> dict[str, DesiredUnit]:
        return {app: unit for d in self.drivers.values() for (e, app), unit in d.units.items() if e == env}

    def audit(self) -> list[dict[str, Any]]:
        pending = [json.loads(line) for line in self.controller.pending_audit]
        return [*self.pushed, *pending]


def token_of(unit: DesiredUnit) -> str | None:
    for data in unit.files().values():
        for line in data.decode().splitlines():
            if line.strip().startswith("token:"):
                return line.split(":", 1)[1].strip().strip('"')
    return None


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


class _Twin(MemoryDriver):
    """The memory twin, as the driver pool hands it out (a subclass keeps its identity per target)."""


class _Recording:
    """The real status store, recording the audit entries it is given (what reached the status branch)."""

    def __init__(self, inner: Any, sink: list[dict[str, Any]]) -> None:
        self.inner = inner
        self.sink = sink

    def read(self) -> Any:
        return self.inner.read()

    def audit_lines(self, prefix: str = "audit/") -> Any:
        return self.inner.audit_lines(prefix)

    def read_file(self, path: str) -> bytes | None:
        found: bytes | None = self.inner.read_file(path)
        return found

    def refresh(self) -> None:
        self.inner.refresh()

    def write(self, replace: Any, append: Any, message: str) -> str | None:
        commit = self.inner.write(replace, append, message)
        for path, data in append.items():
            if path.startswith("audit/"):  # (operations.jsonl records requests, the audit trail has them too)
                self.sink.extend(json.loads(line) for line in data.decode().splitlines() if line.strip())
        return commit


def failure(permanent: bool) -> Exception:
    return PermanentError("refused by the target") if permanent else TemporaryError("target unreachable", delay=30)
