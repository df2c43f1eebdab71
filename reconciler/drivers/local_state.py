"""What the local driver knows about the applications it deployed: their inventories and each file's stat.

:class:`Deployed` keeps one record per (environment, application) that :mod:`reconciler.drivers.local` has read
or written: the parsed inventory, keyed by the inventory file's stat, and for every inventoried file the stat it
had when last hashed and whether its content then had the inventoried digest. Like Git's index: a file whose
stat is unchanged has unchanged content, because every write, rename or replacement changes its ctime (which no
user can set) or inode. A drift check (``Check.CLEAN``) therefore re-reads only files whose stat changed, files it
has never hashed (after a restart: all of them once) and racily clean entries; ``verifyContent: true`` on a
target re-reads every file at every drift check.

A controller keeps these records for its whole life, one per deployed application (a fleet of 5,000
environments deploys 845,000 files), so they are compact: digests are 32 raw bytes, stats are packed, the
lists of file names are shared between environments, and the inventory's hex form exists only in its file.
Also here: the inventory's format (:class:`Inventory`, :func:`parse_inventory`) and the one function that reads
a file without following symbolic links. Used by the local driver only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

OWNER = "reconciler"
INVENTORY = ".reconciler-inventory.json"
_HEX64 = re.compile(r"[0-9a-f]{64}")
DIGEST_SIZE = 32  # sha256

Stamp = tuple[int, int, int, int]  # (mtime_ns, size, inode, ctime_ns) of a regular file
_STAMP = struct.Struct("<4q")
_SEEN = struct.Struct("<4qB")  # per inventoried file: its stamp when last hashed, then flags
_KNOWN, _CLEAN, _MATCHES = 1, 2, 4  # hashed at that stamp; not racily clean; content had the inventoried digest
_NOTHING = bytes(_SEEN.size)

# A file changed within the same clock tick as we recorded it can keep its ctime: such "racily clean" entries
# (Git's term) are re-read by the next drift check. Kernel file times come from a coarse clock (a tick <= 10 ms).
RACY_NS = 20_000_000

# Every environment deploys an application with the same file names: one shared tuple per distinct list.
_NAMES: dict[tuple[str, ...], tuple[str, ...]] = {}
_NAMES_LIMIT = 100_000


def _shared(rels: tuple[str, ...]) -> tuple[str, ...]:
    if len(_NAMES) >= _NAMES_LIMIT:  # a bound, not a policy: a fleet has a few thousand distinct lists
        _NAMES.clear()
    return _NAMES.setdefault(rels, rels)


def unsafe_name(name: str) -> bool:
    """True for names that could leave their directory or hide among the controller's own files."""
    return not name or "/" in name or "\0" in name or ".." in name or name.startswith(".")


class Check(StrEnum):
    """How far the driver may trust what it knows about a file."""

    CONTENT = "content"  # read and hash the file, always
    CLEAN = "clean"  # trust an unchanged stat unless the entry is racy (the drift check; as ``git status``)
    STAT = "stat"  # trust an unchanged stat (apply, health)


@dataclass(frozen=True, slots=True)
class Inventory:
    """What an apply wrote into an application's directory; ``encode`` gives its file."""

    environment: str
    application: str
    version: str
    fingerprint: str
    rels: tuple[str, ...]  # "<component>/<file>", sorted
    digests: bytes  # the sha256 of each, DIGEST_SIZE bytes apiece, in the order of ``rels``

    @classmethod
    def of(
        cls, environment: str, application: str, version: str, fingerprint: str, files: Mapping[str, bytes]
    ) -> Inventory:
        """From ``files``: relative path -> raw sha256 digest."""
        rels = _shared(tuple(sorted(files)))
        return cls(environment, application, sys.intern(version), fingerprint, rels, b"".join(files[r] for r in rels))

    def digest(self, index: int) -> bytes:
        return self.digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]

    def files(self) -> dict[str, bytes]:
        return {rel: self.digest(i) for i, rel in enumerate(self.rels)}

    def encode(self) -> bytes:
        doc = {
            "owner": OWNER,
            "environment": self.environment,
            "application": self.application,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "files": {rel: self.digest(i).hex() for i, rel in enumerate(self.rels)},
        }
        # no indent: json's C encoder (the indenting one is pure Python and showed in cold-cycle profiles)
        return (json.dumps(doc) + "\n").encode()


@dataclass(frozen=True)
class Unreadable:
    reason: str
    foreign: bool = False  # a valid inventory of another owner (never taken over)


def valid_rel(rel: object) -> bool:
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
        or not all(valid_rel(k) and isinstance(v, str) and _HEX64.fullmatch(v) for k, v in files.items())
    ):
        return Unreadable(f"{INVENTORY} of {environment}/{application} is malformed")
    digests = {rel: bytes.fromhex(value) for rel, value in files.items()}
    return Inventory.of(environment, application, doc["version"], doc["fingerprint"], digests)


def stamp_of(path: str) -> Stamp | None:
    """The stamp of a regular file, never following a symbolic link; ``None`` for anything else or nothing."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns) if stat.S_ISREG(st.st_mode) else None


def read_with_stamp(path: str) -> tuple[bytes | None, Stamp | None]:
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


@dataclass(slots=True)
class _Record:
    stamp: bytes  # the inventory file's, packed
    inventory: Inventory | Unreadable
    seen: bytearray  # _SEEN.size bytes per inventoried file, in its order (all zero: never hashed)


def _blank(inventory: Inventory | Unreadable) -> bytearray:
    return bytearray(_SEEN.size * len(inventory.rels)) if isinstance(inventory, Inventory) else bytearray()


class Deployed:
    """The local driver's records of the applications it deployed (see the module docstring).

    One record per (environment, application), replaced whole; a file's entry is updated in place. The engine
    runs one job per environment at a time, so no two threads update the same record at once.
    """

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._records: dict[str, dict[str, _Record]] = {}
        self._clock_ns = clock_ns

    def _get(self, environment: str, application: str) -> _Record | None:
        apps = self._records.get(environment)
        return None if apps is None else apps.get(application)

    def _put(self, environment: str, application: str, record: _Record) -> None:
        self._records.setdefault(environment, {})[application] = record

    def knows(self, environment: str, application: str) -> bool:
        return self._get(environment, application) is not None

    def forget(self, environment: str, application: str) -> None:
        apps = self._records.get(environment)
        if apps is not None:
            apps.pop(application, None)

    def _entry(self, stamp: Stamp, matches: bool) -> bytes:
        clean = self._clock_ns() - stamp[3] > RACY_NS
        return _SEEN.pack(*stamp, _KNOWN | (_CLEAN if clean else 0) | (_MATCHES if matches else 0))

    # -- inventories -------------------------------------------------------------------------------------------
    def inventory(self, environment: str, application: str, app_dir: str) -> Inventory | Unreadable | None:
        """The application's inventory: parsed again only when its file's stat changed."""
        path = f"{app_dir}/{INVENTORY}"
        stamp = stamp_of(path)
        if stamp is None:
            return None  # missing, or not a regular file (a symlink is never followed)
        record = self._get(environment, application)
        if record is not None and record.stamp == _STAMP.pack(*stamp):
            return record.inventory
        data, stamp = read_with_stamp(path)
        if data is None or stamp is None:
            return None
        parsed = parse_inventory(data, environment, application)
        self._put(environment, application, _Record(_STAMP.pack(*stamp), parsed, _blank(parsed)))
        return parsed

    def applied(self, inventory: Inventory, stamp: Stamp | None, written: Mapping[str, Stamp]) -> None:
        """Record an apply: its new ``inventory`` (whose file has ``stamp``) and the files it wrote (with their
        stamps). What the previous record knew of a file left alone carries over when its digest is the same."""
        if stamp is None:
            self.forget(inventory.environment, inventory.application)
            return
        previous = self._get(inventory.environment, inventory.application)
        before, known = (previous.inventory, previous.seen) if previous is not None else (None, bytearray())
        index = {rel: j for j, rel in enumerate(before.rels)} if isinstance(before, Inventory) else {}
        size = _SEEN.size
        seen = bytearray()
        for i, rel in enumerate(inventory.rels):
            written_at = written.get(rel)
            j = index.get(rel)
            if written_at is not None:
                seen += self._entry(written_at, True)
            elif j is not None and isinstance(before, Inventory) and before.digest(j) == inventory.digest(i):
                seen += known[j * size : (j + 1) * size]
            else:
                seen += _NOTHING
        self._put(inventory.environment, inventory.application, _Record(_STAMP.pack(*stamp), inventory, seen))

    # -- files -------------------------------------------------------------------------------------------------
    def _seen_for(self, inventory: Inventory) -> bytearray:
        record = self._get(inventory.environment, inventory.application)
        if record is not None and record.inventory is inventory:
            return record.seen
        return _blank(inventory)  # not the recorded inventory: check it, remember nothing

    def drifted(self, app_dir: str, inventory: Inventory, check: Check) -> list[str]:
        """The inventoried files (in its order) that are missing, not regular files, or not as inventoried.

        The common case (a known file whose stat is unchanged) is inlined: a drift check asks this for every
        deployed file."""
        seen = self._seen_for(inventory)
        prefix = app_dir + "/"
        lstat, is_reg, pack, size = os.lstat, stat.S_ISREG, _STAMP.pack, _SEEN.size
        trusted = _KNOWN | _CLEAN if check is Check.CLEAN else _KNOWN
        out: list[str] = []
        for i, rel in enumerate(inventory.rels):
            at = i * size
            flags = seen[at + 32]
            if check is not Check.CONTENT and (flags & trusted) == trusted:
                try:
                    st = lstat(prefix + rel)
                except OSError:  # gone
                    out.append(rel)
                    continue
                if is_reg(st.st_mode) and seen[at : at + 32] == pack(
                    st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns
                ):
                    if not flags & _MATCHES:
                        out.append(rel)
                    continue
            if self._hash(prefix + rel, seen, at, inventory.digest(i)) != inventory.digest(i):
                out.append(rel)
        return out

    def _hash(self, path: str, seen: bytearray, at: int, inventoried: bytes) -> bytes | None:
        """Read and hash ``path``; record at ``seen[at]`` whether it had the ``inventoried`` digest."""
        data, stamp = read_with_stamp(path)
        if data is None or stamp is None:
            seen[at : at + _SEEN.size] = _NOTHING
            return None
        value = hashlib.sha256(data).digest()
        seen[at : at + _SEEN.size] = self._entry(stamp, value == inventoried)
        return value

    def holding(self, app_dir: str, previous: Inventory | Unreadable | None, wanted: Mapping[str, bytes]) -> set[str]:
        """The files of ``wanted`` (rel -> digest) that ``app_dir`` already holds with that digest, trusting an
        unchanged stat (as ``Check.STAT``): what an apply need not write."""
        inventory = previous if isinstance(previous, Inventory) else None
        seen = self._seen_for(inventory) if inventory is not None else bytearray()
        index = {rel: i for i, rel in enumerate(inventory.rels)} if inventory is not None else {}
        size = _SEEN.size
        holding: set[str] = set()
        for rel, want in wanted.items():
            path = f"{app_dir}/{rel}"
            i = index.get(rel)
            if i is None:  # not inventoried: only its content can tell
                data = read_with_stamp(path)[0]
                if data is not None and hashlib.sha256(data).digest() == want:
                    holding.add(rel)
                continue
            assert inventory is not None
            at = i * size
            flags = seen[at + 32]
            if flags & _KNOWN and (flags & _MATCHES or inventory.digest(i) == want):
                stamp = stamp_of(path)
                if stamp is not None and seen[at : at + 32] == _STAMP.pack(*stamp):
                    if flags & _MATCHES and inventory.digest(i) == want:  # else: known to differ from want
                        holding.add(rel)
                    continue
            if self._hash(path, seen, at, inventory.digest(i)) == want:
                holding.add(rel)
        return holding
