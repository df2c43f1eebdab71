"""The ``local`` driver: a directory per target, rendered files written atomically plus an inventory.

Layout under the operator-configured ``path``::

    <path>/<environment>/<application>/<component>/<file>          one per DesiredUnit.files() entry
    <path>/<environment>/<application>/.reconciler-inventory.json  what was applied (owner, version, hashes)
    <path>/<environment>/<application>/.reconciler-pending.json    only while an apply is in flight

``apply`` writes each changed file to a temporary file in the same directory, fsyncs it and renames it over the
old one, removes files that an earlier apply of this application wrote and that are no longer desired, and writes
the inventory last. Before writing anything it records the files it is about to write in the *pending* journal,
so a process killed mid-apply leaves files that the next apply or remove still knows it owns: re-applying
converges without duplicates and never deletes a file that this controller did not write. When everything
already matches, ``apply`` writes nothing at all. ``observe`` re-hashes every inventoried file, so hand edits and
deletions show up as drift.

A corrupt inventory (not JSON, wrong shape) makes the application look drifted (``drifted`` names the inventory
file, version and fingerprint are ``None``); ``apply`` then rewrites the desired files and a fresh inventory but
removes nothing (it no longer knows what it owned), ``remove`` refuses and ``owned_applications`` does not list
it. An inventory of another owner is never taken over: ``observe`` reports nothing, ``apply`` and ``remove``
refuse with a :class:`PermanentError`.

Created by the driver registry from the operator config; called by the engine (and the demo) per
(environment, application).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.desired import DesiredUnit
from reconciler.core.problems import PermanentError, TemporaryError
from reconciler.drivers.base import ApplyResult, Health, HealthReport, LiveUnit

OWNER = "reconciler"
INVENTORY = ".reconciler-inventory.json"
PENDING = ".reconciler-pending.json"
TMP_PREFIX = ".reconciler-tmp-"
_HEX64 = re.compile(r"[0-9a-f]{64}")
# errors that may pass by themselves (full disk, I/O hiccup, read-only remount); anything else is a refusal
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EBUSY, errno.EROFS})


def unsafe_name(name: str) -> bool:
    """True for names that could leave their directory or hide among the controller's own files."""
    return not name or "/" in name or "\0" in name or ".." in name or name.startswith(".")


def _check(target: str, what: str, name: str) -> None:
    if unsafe_name(name):
        raise PermanentError(f"local target {target}: unsafe {what} name {name!r}")


def classify_os_error(target: str, action: str, exc: OSError) -> PermanentError | TemporaryError:
    """Turn an ``OSError`` into the controller's error tree with a message naming the target and action."""
    message = f"local target {target}: cannot {action}: {exc.strerror or type(exc).__name__}"
    return TemporaryError(message) if exc.errno in _TRANSIENT_ERRNOS else PermanentError(message)


@dataclass(frozen=True)
class Inventory:
    environment: str
    application: str
    version: str
    fingerprint: str
    files: Mapping[str, str]  # "<component>/<file>" -> sha256 hex

    def encode(self) -> bytes:
        doc = {
            "owner": OWNER,
            "environment": self.environment,
            "application": self.application,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "files": dict(sorted(self.files.items())),
        }
        return (json.dumps(doc, indent=2) + "\n").encode()


@dataclass(frozen=True)
class Unreadable:
    reason: str
    foreign: bool = False  # a valid inventory of another owner (never taken over)


def _valid_rel(rel: object) -> bool:
    if not isinstance(rel, str) or rel.count("/") != 1:
        return False
    return not any(unsafe_name(part) for part in rel.split("/"))


def read_inventory(app_dir: Path, environment: str, application: str) -> Inventory | Unreadable | None:
    raw = _read_bytes(app_dir / INVENTORY)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return Unreadable(f"{INVENTORY} of {environment}/{application} is not valid JSON")
    if not isinstance(doc, dict):
        return Unreadable(f"{INVENTORY} of {environment}/{application} is not a JSON object")
    if doc.get("owner") != OWNER:
        return Unreadable(f"{environment}/{application} belongs to another owner", foreign=True)
    files = doc.get("files")
    if (
        (doc.get("environment"), doc.get("application")) != (environment, application)
        or not all(isinstance(doc.get(k), str) for k in ("version", "fingerprint"))
        or not isinstance(files, dict)
        or not all(_valid_rel(k) and isinstance(v, str) and _HEX64.fullmatch(v) for k, v in files.items())
    ):
        return Unreadable(f"{INVENTORY} of {environment}/{application} is malformed")
    return Inventory(environment, application, doc["version"], doc["fingerprint"], files)


def read_pending(app_dir: Path) -> set[str]:
    """Files an interrupted apply may have written (ignored when unreadable: then it wrote nothing yet)."""
    raw = _read_bytes(app_dir / PENDING)
    try:
        doc = json.loads(raw) if raw is not None else []
    except ValueError:
        return set()
    return {rel for rel in doc if _valid_rel(rel)} if isinstance(doc, list) else set()


def file_digest(path: Path) -> str | None:
    """sha256 of a regular file, never following a symlink; ``None`` when missing or not a regular file."""
    data = _read_bytes(path)
    return None if data is None else hashlib.sha256(data).hexdigest()


class DigestCache:
    """sha256 of files this driver wrote or hashed, keyed by path and (mtime_ns, size, inode, ctime_ns).

    Like Git's index: a file whose stat is unchanged is not read again. Used by ``health`` and by ``apply`` to
    decide what to write; the periodic drift check (``observe(check_drift=True)``) always re-reads every file.
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple[int, int, int, int], str]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int, int, int] | None:
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns) if stat.S_ISREG(st.st_mode) else None

    def digest(self, path: Path, trust_stat: bool) -> str | None:
        stamp = self._stamp(path)
        if stamp is None:
            return None
        key = str(path)
        if trust_stat:
            with self._lock:
                known = self._known.get(key)
            if known is not None and known[0] == stamp:
                return known[1]
        value = file_digest(path)
        if value is not None:
            with self._lock:
                self._known[key] = (stamp, value)
        return value

    def remember(self, path: Path, data: bytes) -> None:
        stamp = self._stamp(path)
        if stamp is not None:
            with self._lock:
                self._known[str(path)] = (stamp, hashlib.sha256(data).hexdigest())


def _read_bytes(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read() if stat.S_ISREG(os.fstat(fh.fileno()).st_mode) else None


def fsync_dir(d: Path, durable: bool = True) -> None:
    if not durable:
        return
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, sync_dir: bool = True, durable: bool = True) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync it (when ``durable``), rename it over ``path``.

    The rename alone makes the write atomic for the process (a SIGKILL leaves the old or the new file); the
    fsyncs make it survive a power loss too, at a large cost on many small files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent, durable)


def _is_empty(d: Path) -> bool:
    return d.is_dir() and not d.is_symlink() and next(d.iterdir(), None) is None


def _components(rels: Iterable[str]) -> set[str]:
    return {rel.split("/")[0] for rel in rels}


class LocalDriver:
    """Deploys rendered files into ``path`` (see the module docstring for the layout and guarantees)."""

    kind: str = "local"

    def __init__(self, target: str, path: Path, durable: bool = False) -> None:
        self.target = target
        self.path = Path(path)
        self.durable = durable  # fsync files and directories (survives power loss; slow on many small files)
        self.digests = DigestCache()

    def _app_dir(self, environment: str, application: str) -> Path:
        _check(self.target, "environment", environment)
        _check(self.target, "application", application)
        app_dir = self.path / environment / application
        self._refuse_symlinks(app_dir.parent, app_dir)
        return app_dir

    def _refuse_symlinks(self, *dirs: Path) -> None:
        for d in dirs:
            if d.is_symlink():
                raise PermanentError(f"local target {self.target}: {d.name} is a symbolic link, refusing to use it")

    # -- reading ---------------------------------------------------------------------------------------------
    def observe(self, environment: str, application: str, check_drift: bool = True) -> LiveUnit | None:
        return self._observe(environment, application, check_drift, trust_stat=False)

    def _observe(self, environment: str, application: str, check_drift: bool, trust_stat: bool) -> LiveUnit | None:
        app_dir = self._app_dir(environment, application)
        inventory = read_inventory(app_dir, environment, application)
        if inventory is None or (isinstance(inventory, Unreadable) and inventory.foreign):
            return None
        if isinstance(inventory, Unreadable):
            return LiveUnit(environment, application, self.target, None, None, (INVENTORY,))
        drifted: tuple[str, ...] = ()
        if check_drift:
            drifted = tuple(
                rel for rel, h in sorted(inventory.files.items()) if self.digests.digest(app_dir / rel, trust_stat) != h
            )
        return LiveUnit(environment, application, self.target, inventory.version, inventory.fingerprint, drifted)

    def owned_applications(self, environment: str) -> list[str]:
        _check(self.target, "environment", environment)
        env_dir = self.path / environment
        if env_dir.is_symlink() or not env_dir.is_dir():
            return []
        return [
            child.name
            for child in sorted(env_dir.iterdir())
            if not unsafe_name(child.name)
            and not child.is_symlink()
            and child.is_dir()
            and isinstance(read_inventory(child, environment, child.name), Inventory)
        ]

    def health(self, environment: str, application: str) -> HealthReport:
        live = self._observe(environment, application, check_drift=True, trust_stat=True)
        if live is None:
            return HealthReport(Health.MISSING, "not deployed")
        if live.fingerprint is None:
            return HealthReport(Health.DEGRADED, f"{INVENTORY} is unreadable")
        if live.drifted:
            shown = ", ".join(live.drifted[:5]) + (" ..." if len(live.drifted) > 5 else "")
            return HealthReport(Health.DEGRADED, f"{len(live.drifted)} file(s) drifted: {shown}")
        return HealthReport(Health.HEALTHY, f"version {live.version}")

    # -- writing ---------------------------------------------------------------------------------------------
    def apply(self, unit: DesiredUnit, dry_run: bool = False) -> ApplyResult:
        app_dir = self._app_dir(unit.environment, unit.application)
        desired: dict[str, bytes] = {}
        for comp in unit.components:
            _check(self.target, "component", comp.name)
            for name, data in comp.files.items():
                _check(self.target, "file", name)
                desired[f"{comp.name}/{name}"] = data
        try:
            return self._apply(app_dir, unit, desired, dry_run)
        except OSError as exc:
            raise classify_os_error(self.target, f"apply {unit.environment}/{unit.application}", exc) from None

    def _apply(self, app_dir: Path, unit: DesiredUnit, desired: dict[str, bytes], dry_run: bool) -> ApplyResult:
        previous = read_inventory(app_dir, unit.environment, unit.application)
        if isinstance(previous, Unreadable) and previous.foreign:
            raise PermanentError(f"local target {self.target}: {previous.reason}; refusing to take it over")
        owned = (set(previous.files) if isinstance(previous, Inventory) else set()) | read_pending(app_dir)
        self._refuse_symlinks(*(app_dir / comp for comp in _components(desired) | _components(owned)))

        hashes = {rel: hashlib.sha256(data).hexdigest() for rel, data in desired.items()}
        to_write = sorted(
            rel for rel, digest in hashes.items() if self.digests.digest(app_dir / rel, trust_stat=True) != digest
        )
        to_remove = sorted(rel for rel in owned - desired.keys() if os.path.lexists(app_dir / rel))
        encoded = Inventory(unit.environment, unit.application, unit.version, unit.fingerprint, hashes).encode()
        inventory_stale = _read_bytes(app_dir / INVENTORY) != encoded
        parts = [f"{verb} {len(rels)} file(s)" for verb, rels in (("write", to_write), ("remove", to_remove)) if rels]
        summary = ", ".join(parts) or "rewrite the inventory"

        if dry_run:
            return (
                ApplyResult(True, f"would {summary}") if parts or inventory_stale else ApplyResult(False, "unchanged")
            )
        self._sweep(app_dir, owned | desired.keys())
        if not (parts or inventory_stale):
            if (app_dir / PENDING).exists():  # killed right after writing the inventory: housekeeping only
                (app_dir / PENDING).unlink()
            return ApplyResult(False, "unchanged")

        if to_write:  # claim the files before they exist, so a kill from here on leaves nothing unowned
            atomic_write(
                app_dir / PENDING, (json.dumps(sorted(owned | set(to_write))) + "\n").encode(), durable=self.durable
            )
        for rel in to_write:
            atomic_write(app_dir / rel, desired[rel], sync_dir=False, durable=self.durable)
            self.digests.remember(app_dir / rel, desired[rel])
        for rel in to_remove:
            (app_dir / rel).unlink()
        changed_dirs = _components(to_write) | _components(to_remove)
        for comp in sorted(_components(owned) - _components(desired)):  # incl. dirs a killed apply had created
            if _is_empty(app_dir / comp):
                (app_dir / comp).rmdir()
                changed_dirs.discard(comp)
        for comp in sorted(changed_dirs):
            fsync_dir(app_dir / comp, self.durable)
        atomic_write(app_dir / INVENTORY, encoded, durable=self.durable)  # last: the inventory says the apply completed
        if (app_dir / PENDING).exists():
            (app_dir / PENDING).unlink()
            fsync_dir(app_dir, self.durable)
        return ApplyResult(True, summary)

    def remove(self, environment: str, application: str, dry_run: bool = False) -> ApplyResult:
        app_dir = self._app_dir(environment, application)
        try:
            return self._remove(app_dir, environment, application, dry_run)
        except OSError as exc:
            raise classify_os_error(self.target, f"remove {environment}/{application}", exc) from None

    def _remove(self, app_dir: Path, environment: str, application: str, dry_run: bool) -> ApplyResult:
        inventory = read_inventory(app_dir, environment, application)
        if isinstance(inventory, Unreadable):
            raise PermanentError(f"local target {self.target}: {inventory.reason}; not removing anything")
        pending = read_pending(app_dir)
        if inventory is None and not pending:
            return ApplyResult(False, "absent")
        owned = (set(inventory.files) if inventory else set()) | pending
        self._refuse_symlinks(*(app_dir / comp for comp in _components(owned)))
        present = sorted(rel for rel in owned if os.path.lexists(app_dir / rel))
        if dry_run:
            return ApplyResult(True, f"would remove {len(present)} file(s)")
        for rel in present:
            (app_dir / rel).unlink()
        self._sweep(app_dir, owned)
        for comp in sorted(_components(owned)):
            if _is_empty(app_dir / comp):
                (app_dir / comp).rmdir()
        fsync_dir(app_dir, self.durable)
        for name in (PENDING, INVENTORY):  # the record goes last: a kill before this point is simply retried
            (app_dir / name).unlink(missing_ok=True)
        for d in (app_dir, app_dir.parent):
            if _is_empty(d):
                d.rmdir()
        return ApplyResult(True, f"removed {len(present)} file(s)")

    def _sweep(self, app_dir: Path, rels: set[str]) -> None:
        """Delete temporary files that a killed apply left behind (only the controller's reserved prefix)."""
        for d in {app_dir} | {app_dir / comp for comp in _components(rels)}:
            if d.is_dir() and not d.is_symlink():
                for leftover in d.glob(f"{TMP_PREFIX}*"):
                    leftover.unlink()

    def close(self) -> None:
        return None
