"""The ``local`` driver: a directory per target, rendered files written atomically plus an inventory.

Layout under the operator-configured ``path``::

    <path>/<environment>/<application>/<component>/<file>          one per DesiredUnit.files() entry
    <path>/<environment>/<application>/.reconciler-inventory.json  what was applied (owner, version, hashes)
    <path>/<environment>/<application>/.reconciler-pending.json    only while an apply is in flight

The first ``apply`` of an application builds it in a staging directory ``<environment>/.reconciler-tmp-<app>``
(files, then the inventory) and renames that into place: readers see nothing or everything, and a kill leaves
only the staging directory, which the next attempt removes. Later applies write each changed file to a temporary
file in the same directory, fsync it (``fsync: true``) and rename it over the old one, remove files that an
earlier apply of this application wrote and that are no longer desired, and write the inventory last. Before
writing anything they record the files about to be written in the *pending* journal, so a process killed
mid-apply leaves files that the next apply or remove still knows it owns: re-applying converges without
duplicates and never deletes a file that this controller did not write. When everything already matches,
``apply`` writes nothing at all. ``observe`` checks every inventoried file, so hand edits and deletions show up
as drift; like ``git status`` it re-reads only files whose stat changed, that it never hashed (after a restart)
or that are racily clean (see :class:`DigestCache`); ``verifyContent: true`` re-reads every file every time.
Parsed inventories are cached by stat as well.

A corrupt inventory (not JSON, wrong shape) makes the application look drifted (``drifted`` names the inventory
file, version and fingerprint are ``None``); ``apply`` then rewrites the desired files and a fresh inventory but
removes nothing (it no longer knows what it owned), ``remove`` refuses and ``owned_applications`` does not list
it. An inventory of another owner is never taken over: ``observe`` reports nothing, ``apply`` and ``remove``
refuse with a :class:`PermanentError`.

Created by the driver registry from the operator config; called by the engine (and the demo) per
(environment, application).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
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
# (st_dev, "write" or "observe") -> the lock local targets on that filesystem take turns under (LocalDriver._gate)
_GATES: dict[tuple[int, str], threading.Lock] = {}
_GATES_LOCK = threading.Lock()
_TMP_NAMES = itertools.count()  # with the pid: unique temporary names without uuid4's cost (O_EXCL checks anyway)

Stamp = tuple[int, int, int, int]  # (mtime_ns, size, inode, ctime_ns) of a regular file


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
        # no indent: json's C encoder (the indenting one is pure Python and showed in cold-cycle profiles)
        return (json.dumps(doc) + "\n").encode()


@dataclass(frozen=True)
class Unreadable:
    reason: str
    foreign: bool = False  # a valid inventory of another owner (never taken over)


def _valid_rel(rel: object) -> bool:
    if not isinstance(rel, str) or rel.count("/") != 1:
        return False
    return not any(unsafe_name(part) for part in rel.split("/"))


def parse_inventory(raw: bytes, environment: str, application: str) -> Inventory | Unreadable:
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


def read_pending(app_dir: str) -> set[str]:
    """Files an interrupted apply may have written (ignored when unreadable: then it wrote nothing yet)."""
    raw = _read_bytes(os.path.join(app_dir, PENDING))
    try:
        doc = json.loads(raw) if raw is not None else []
    except ValueError:
        return set()
    return {rel for rel in doc if _valid_rel(rel)} if isinstance(doc, list) else set()


def _stamp(path: str) -> Stamp | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns) if stat.S_ISREG(st.st_mode) else None


class Check(StrEnum):
    """How far :meth:`DigestCache.digest` may trust what it knows about a file."""

    CONTENT = "content"  # read and hash the file, always
    CLEAN = "clean"  # trust an unchanged stat unless the entry is racy (the drift check; as ``git status``)
    STAT = "stat"  # trust an unchanged stat (apply, health)


# A file changed within the same clock tick as we recorded it can keep its ctime: such "racily clean" entries
# (Git's term) are re-read by the next drift check. Kernel file times come from a coarse clock (a tick <= 10 ms).
RACY_NS = 20_000_000


class DigestCache:
    """sha256 of files this driver wrote or hashed, keyed by path and (mtime_ns, size, inode, ctime_ns).

    Like Git's index: a file whose stat is unchanged has unchanged content, because every write, rename or
    replacement changes its ctime (which no user can set) or inode. A drift check (``Check.CLEAN``) therefore
    re-reads only files whose stat changed, files it has never hashed (after a restart: all of them once), and
    racily clean entries; ``verifyContent: true`` on a target re-reads every file at every drift check.
    """

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._known: dict[str, tuple[Stamp, str, bool]] = {}  # path -> (stamp, digest, clean: not racy)
        self._lock = threading.Lock()
        self._clock_ns = clock_ns

    def digest(self, path: str, check: Check) -> str | None:
        if check is not Check.CONTENT:
            stamp = _stamp(path)
            if stamp is None:
                return None
            known = self._known.get(path)
            if known is not None and known[0] == stamp and (known[2] or check is Check.STAT):
                return known[1]
        data, stamp = _read_with_stamp(path)
        if data is None or stamp is None:
            return None
        value = hashlib.sha256(data).hexdigest()
        self.remember(path, stamp, value)
        return value

    def changed(self, prefix: str, files: Mapping[str, str], check: Check) -> list[str]:
        """The names of ``files`` (relative path -> expected digest, under ``prefix``) whose digest differs, in
        order: what :meth:`digest` says for each, with its common case (a known file, stat unchanged) inlined,
        since a drift check asks this for every deployed file."""
        if check is Check.CONTENT:
            return [rel for rel, want in files.items() if self.digest(prefix + rel, check) != want]
        known, lstat, is_reg, trust_racy = self._known, os.lstat, stat.S_ISREG, check is Check.STAT
        out: list[str] = []
        for rel, want in files.items():
            path = prefix + rel
            entry = known.get(path)
            if entry is not None and (entry[2] or trust_racy):
                try:
                    st = lstat(path)
                except OSError:  # gone: drifted (as digest() says None)
                    out.append(rel)
                    continue
                if is_reg(st.st_mode) and entry[0] == (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns):
                    if entry[1] != want:
                        out.append(rel)
                    continue
            if self.digest(path, check) != want:
                out.append(rel)
        return out

    def remember(self, path: str, stamp: Stamp | None, value: str) -> None:
        if stamp is not None:
            clean = self._clock_ns() - stamp[3] > RACY_NS
            with self._lock:
                self._known[path] = (stamp, value, clean)


class InventoryCache:
    """Parsed inventories keyed by path and stat: an unchanged inventory file is not read and parsed again."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[Stamp, Inventory | Unreadable]] = {}
        self._lock = threading.Lock()

    def read(self, app_dir: str, environment: str, application: str) -> Inventory | Unreadable | None:
        path = os.path.join(app_dir, INVENTORY)
        stamp = _stamp(path)
        if stamp is None:
            return None  # missing, or not a regular file (a symlink is never followed)
        known = self._known.get(path)
        if known is not None and known[0] == stamp:
            return known[1]
        data, stamp = _read_with_stamp(path)
        if data is None or stamp is None:
            return None
        parsed = parse_inventory(data, environment, application)
        with self._lock:
            self._known[path] = (stamp, parsed)
        return parsed

    def remember(self, app_dir: str, inventory: Inventory, stamp: Stamp | None) -> None:
        path = os.path.join(app_dir, INVENTORY)
        if stamp is not None:
            with self._lock:
                self._known[path] = (stamp, inventory)


def _read_with_stamp(path: str) -> tuple[bytes | None, Stamp | None]:
    """Contents and stat of a regular file, never following a symlink; ``(None, None)`` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None, None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, None
        data = os.read(fd, st.st_size + 1)
        if len(data) > st.st_size:  # it grew since fstat: read the rest
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data, (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
    finally:
        os.close(fd)


def _read_bytes(path: str) -> bytes | None:
    return _read_with_stamp(path)[0]


def fsync_dir(d: str, durable: bool = True) -> None:
    if not durable:
        return
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, sync_dir: bool = True, durable: bool = True) -> Stamp | None:
    """Write ``data`` to a temporary file next to ``path``, fsync it (when ``durable``), rename it over ``path``.

    The rename alone makes the write atomic for the process (a SIGKILL leaves the old or the new file); the
    fsyncs make it survive a power loss too, at a large cost on many small files. The parent directory must
    exist. Returns the written file's stamp.
    """
    parent = os.path.dirname(path)
    tmp = os.path.join(parent, f"{TMP_PREFIX}{os.getpid()}-{next(_TMP_NAMES)}")
    try:
        _write_new(tmp, data, durable)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(parent, durable)
    return _stamp(path)  # after the rename: it changes the ctime


def _write_new(path: str, data: bytes, durable: bool) -> Stamp:
    """Create ``path`` (it must not exist) with ``data``; its stamp."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def _is_empty(d: str) -> bool:
    if os.path.islink(d) or not os.path.isdir(d):
        return False
    with os.scandir(d) as entries:
        return next(entries, None) is None


def _components(rels: Iterable[str]) -> set[str]:
    return {rel.split("/")[0] for rel in rels}


class LocalDriver:
    """Deploys rendered files into ``path`` (see the module docstring for the layout and guarantees)."""

    kind: str = "local"
    observe_is_health = True  # health is "inventory readable, every file as inventoried": what observe checks

    def __init__(
        self,
        target: str,
        path: Path,
        durable: bool = False,
        parallel_writes: bool = False,
        verify_content: bool = False,
    ) -> None:
        self.target = target
        self.path = Path(path)
        self._root = str(self.path)
        self.durable = durable  # fsync files and directories (survives power loss; slow on many small files)
        self.parallel_writes = parallel_writes
        self._drift_check = Check.CONTENT if verify_content else Check.CLEAN
        self._device: int | None = None
        self.digests = DigestCache()
        self.inventories = InventoryCache()

    def _app_dir(self, environment: str, application: str) -> str:
        _check(self.target, "environment", environment)
        _check(self.target, "application", application)
        env_dir = os.path.join(self._root, environment)
        app_dir = os.path.join(env_dir, application)
        self._refuse_symlinks(env_dir, app_dir)
        return app_dir

    def _refuse_symlinks(self, *dirs: str) -> None:
        for d in dirs:
            if os.path.islink(d):
                name = os.path.basename(d)
                raise PermanentError(f"local target {self.target}: {name} is a symbolic link, refusing to use it")

    # -- reading ---------------------------------------------------------------------------------------------
    def observe(self, environment: str, application: str, check_drift: bool = True) -> LiveUnit | None:
        return self._observe(environment, application, check_drift, self._drift_check)

    def _observe(self, environment: str, application: str, check_drift: bool, check: Check) -> LiveUnit | None:
        app_dir = self._app_dir(environment, application)
        inventory = self.inventories.read(app_dir, environment, application)
        return self._live(app_dir, environment, application, inventory, check_drift, check)

    def _live(
        self,
        app_dir: str,
        environment: str,
        application: str,
        inventory: Inventory | Unreadable | None,
        check_drift: bool,
        check: Check,
    ) -> LiveUnit | None:
        if inventory is None or (isinstance(inventory, Unreadable) and inventory.foreign):
            return None
        if isinstance(inventory, Unreadable):
            return LiveUnit(environment, application, self.target, None, None, (INVENTORY,))
        drifted: tuple[str, ...] = ()
        if check_drift:
            drifted = tuple(sorted(self.digests.changed(app_dir + "/", inventory.files, check)))
        return LiveUnit(environment, application, self.target, inventory.version, inventory.fingerprint, drifted)

    def observe_environment(
        self, environment: str, applications: list[str], check_drift: bool = True
    ) -> dict[str, LiveUnit | None]:
        """``owned_applications`` and ``observe`` of each owned or named application, with one directory scan."""
        _check(self.target, "environment", environment)
        for name in applications:
            _check(self.target, "application", name)
        with self._gate("observe"):
            return self._observe_environment(environment, applications, check_drift)

    def _observe_environment(
        self, environment: str, applications: list[str], check_drift: bool
    ) -> dict[str, LiveUnit | None]:
        env_dir = os.path.join(self._root, environment)
        found: dict[str, LiveUnit | None] = dict.fromkeys(applications)
        if applications:
            self._refuse_symlinks(env_dir)
        if os.path.islink(env_dir) or not os.path.isdir(env_dir):
            return found
        with os.scandir(env_dir) as entries:  # (is_symlink: from the directory entry, no system call)
            children = [(e.name, e.path, e.is_symlink()) for e in entries if not unsafe_name(e.name)]
        for name, app_dir, link in sorted(children):
            if link:  # refused as _app_dir refuses it, if it is one we want
                if name in found:
                    self._refuse_symlinks(app_dir)
                continue
            inventory = self.inventories.read(app_dir, environment, name)
            if isinstance(inventory, Inventory) or name in found:
                found[name] = self._live(app_dir, environment, name, inventory, check_drift, self._drift_check)
        return dict(sorted(found.items()))

    def owned_applications(self, environment: str) -> list[str]:
        _check(self.target, "environment", environment)
        env_dir = os.path.join(self._root, environment)
        if os.path.islink(env_dir) or not os.path.isdir(env_dir):
            return []
        with os.scandir(env_dir) as entries:
            children = sorted(
                (e.name, e.path) for e in entries if not unsafe_name(e.name) and e.is_dir(follow_symlinks=False)
            )
        return [
            name for name, path in children if isinstance(self.inventories.read(path, environment, name), Inventory)
        ]

    def health(self, environment: str, application: str) -> HealthReport:
        live = self._observe(environment, application, check_drift=True, check=Check.STAT)
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

    def _apply(self, app_dir: str, unit: DesiredUnit, desired: dict[str, bytes], dry_run: bool) -> ApplyResult:
        exists = os.path.isdir(app_dir)
        previous = self.inventories.read(app_dir, unit.environment, unit.application) if exists else None
        if isinstance(previous, Unreadable) and previous.foreign:
            raise PermanentError(f"local target {self.target}: {previous.reason}; refusing to take it over")
        pending = read_pending(app_dir) if exists else set()
        owned = (set(previous.files) if isinstance(previous, Inventory) else set()) | pending
        if exists:
            self._refuse_symlinks(*(os.path.join(app_dir, comp) for comp in _components(desired) | _components(owned)))

        prefix = app_dir + "/"
        hashes = {rel: hashlib.sha256(data).hexdigest() for rel, data in desired.items()}
        digest = self.digests.digest
        to_write = sorted(rel for rel, h in hashes.items() if not exists or digest(prefix + rel, Check.STAT) != h)
        to_remove = sorted(rel for rel in owned - desired.keys() if os.path.lexists(prefix + rel))
        inventory = Inventory(unit.environment, unit.application, unit.version, unit.fingerprint, hashes)
        inventory_stale = not isinstance(previous, Inventory) or previous != inventory
        parts = [f"{verb} {len(rels)} file(s)" for verb, rels in (("write", to_write), ("remove", to_remove)) if rels]
        summary = ", ".join(parts) or "rewrite the inventory"

        if dry_run:
            return (
                ApplyResult(True, f"would {summary}") if parts or inventory_stale else ApplyResult(False, "unchanged")
            )
        if exists:
            self._sweep(app_dir, owned | desired.keys())
        if not (parts or inventory_stale):
            if pending:  # killed right after writing the inventory: housekeeping only
                os.unlink(prefix + PENDING)
            return ApplyResult(False, "unchanged")

        with self._gate():
            if not exists:
                self._create(app_dir, desired, inventory)
            else:
                self._update(app_dir, desired, hashes, inventory, owned, pending, to_write, to_remove)
        return ApplyResult(True, summary)

    def _gate(self, work: str = "write") -> threading.Lock | contextlib.nullcontext[None]:
        """The lock that serialises this target's ``work`` ("write" or "observe") with that of every other local
        target on the same filesystem.

        Creating and renaming many small files is bound by the filesystem's journal: measured on ext4, 40,000
        creates take 1.6-1.8x *longer* from 4 threads than from one. A drift check is a stat per file, each call
        releasing the interpreter lock: 4 threads checking 40,000 files took 2.5x longer (and 3.5x the CPU) than
        one thread, the threads handing the lock to each other at every call. So writes take turns, and drift
        checks take turns (with each other, not with writes); workers still render, pair and order in parallel.
        ``parallelWrites: true`` on a target turns both off (a network filesystem, whose latency threads overlap).
        """
        if self.parallel_writes:
            return contextlib.nullcontext()
        if self._device is None:
            probe = self._root
            while not os.path.exists(probe) and os.path.dirname(probe) != probe:
                probe = os.path.dirname(probe)
            self._device = os.stat(probe).st_dev
        with _GATES_LOCK:
            return _GATES.setdefault((self._device, work), threading.Lock())

    def _update(
        self,
        app_dir: str,
        desired: Mapping[str, bytes],
        hashes: Mapping[str, str],
        inventory: Inventory,
        owned: set[str],
        pending: set[str],
        to_write: list[str],
        to_remove: list[str],
    ) -> None:
        prefix = app_dir + "/"
        for comp in sorted(_components(to_write)):
            os.makedirs(prefix + comp, exist_ok=True)
        if to_write:  # claim the files before they exist, so a kill from here on leaves nothing unowned
            claims = (json.dumps(sorted(owned | set(to_write))) + "\n").encode()
            atomic_write(prefix + PENDING, claims, durable=self.durable)
        for rel in to_write:
            stamp = atomic_write(prefix + rel, desired[rel], sync_dir=False, durable=self.durable)
            self.digests.remember(prefix + rel, stamp, hashes[rel])
        for rel in to_remove:
            os.unlink(prefix + rel)
        changed_dirs = _components(to_write) | _components(to_remove)
        for comp in sorted(_components(owned) - _components(desired)):  # incl. dirs a killed apply had created
            if _is_empty(prefix + comp):
                os.rmdir(prefix + comp)
                changed_dirs.discard(comp)
        for comp in sorted(changed_dirs):
            fsync_dir(prefix + comp, self.durable)
        os.makedirs(app_dir, exist_ok=True)
        # last: the inventory says the apply completed
        stamp = atomic_write(prefix + INVENTORY, inventory.encode(), durable=self.durable)
        self.inventories.remember(app_dir, inventory, stamp)
        if to_write or pending:
            try:
                os.unlink(prefix + PENDING)
            except FileNotFoundError:
                pass
            else:
                fsync_dir(app_dir, self.durable)

    def _create(self, app_dir: str, desired: Mapping[str, bytes], inventory: Inventory) -> None:
        """First apply of an application here: build it in a staging directory, then rename that into place.

        Readers see nothing or the complete application; a kill leaves only the staging directory (the reserved
        prefix, never listed as an application), which holds nothing but this controller's files and is removed
        by the next attempt. Files are written straight into it, no temporary name per file and no journal.
        """
        env_dir, name = os.path.split(app_dir)
        os.makedirs(env_dir, exist_ok=True)
        staging = os.path.join(env_dir, TMP_PREFIX + name)
        try:
            os.mkdir(staging)
        except FileExistsError:  # left by a killed first apply of this application
            if os.path.islink(staging) or not os.path.isdir(staging):
                os.unlink(staging)
            else:
                shutil.rmtree(staging)
            os.mkdir(staging)
        stamps: dict[str, Stamp] = {}
        try:
            comps = sorted(_components(desired))
            for comp in comps:
                os.mkdir(os.path.join(staging, comp))
            for rel, data in desired.items():
                stamps[rel] = _write_new(f"{staging}/{rel}", data, self.durable)
            inventory_stamp = _write_new(f"{staging}/{INVENTORY}", inventory.encode(), self.durable)
            for d in (*(os.path.join(staging, comp) for comp in comps), staging):
                fsync_dir(d, self.durable)
            os.rename(staging, app_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(env_dir, self.durable)
        prefix = app_dir + "/"
        for rel, stamp in stamps.items():  # a directory rename changes no stat of the files inside
            self.digests.remember(prefix + rel, stamp, inventory.files[rel])
        self.inventories.remember(app_dir, inventory, inventory_stamp)

    def remove(self, environment: str, application: str, dry_run: bool = False) -> ApplyResult:
        app_dir = self._app_dir(environment, application)
        try:
            return self._remove(app_dir, environment, application, dry_run)
        except OSError as exc:
            raise classify_os_error(self.target, f"remove {environment}/{application}", exc) from None

    def _remove(self, app_dir: str, environment: str, application: str, dry_run: bool) -> ApplyResult:
        inventory = self.inventories.read(app_dir, environment, application)
        if isinstance(inventory, Unreadable):
            raise PermanentError(f"local target {self.target}: {inventory.reason}; not removing anything")
        pending = read_pending(app_dir)
        if inventory is None and not pending:
            return ApplyResult(False, "absent")
        owned = (set(inventory.files) if inventory else set()) | pending
        prefix = app_dir + "/"
        self._refuse_symlinks(*(prefix + comp for comp in _components(owned)))
        present = sorted(rel for rel in owned if os.path.lexists(prefix + rel))
        if dry_run:
            return ApplyResult(True, f"would remove {len(present)} file(s)")
        for rel in present:
            os.unlink(prefix + rel)
        self._sweep(app_dir, owned)
        for comp in sorted(_components(owned)):
            if _is_empty(prefix + comp):
                os.rmdir(prefix + comp)
        fsync_dir(app_dir, self.durable)
        for name in (PENDING, INVENTORY):  # the record goes last: a kill before this point is simply retried
            with contextlib.suppress(FileNotFoundError):
                os.unlink(prefix + name)
        for d in (app_dir, os.path.dirname(app_dir)):
            if _is_empty(d):
                os.rmdir(d)
        return ApplyResult(True, f"removed {len(present)} file(s)")

    def _sweep(self, app_dir: str, rels: set[str]) -> None:
        """Delete temporary files that a killed apply left behind (only the controller's reserved prefix)."""
        for d in {app_dir} | {os.path.join(app_dir, comp) for comp in _components(rels)}:
            if os.path.islink(d):
                continue
            try:
                entries = os.scandir(d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:
                leftovers = [e.path for e in entries if e.name.startswith(TMP_PREFIX)]
            for leftover in leftovers:
                os.unlink(leftover)

    def close(self) -> None:
        return None
