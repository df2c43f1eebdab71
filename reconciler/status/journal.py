"""The audit write-ahead journal: audit entries that are not on the status branch yet, kept on local disk.

Invariant 7 asks for exactly one audit entry per effect, whatever crashes when. The status branch gets an entry
only with the cycle's status commit, long after the effect; this journal covers the gap. The engine journals a
*begun* record for every effect it may make (one write and one ``fdatasync`` per environment, before its first
effect), a *started* record just before each effect (written, not synced: a crash of the process keeps it), an
*ended* record with the result after it, and *dropped* for a begun effect it did not make after all (held, waiting
for a dependency that failed). The controller tells the journal which entries a status
commit *pushed*; they are then forgotten (the file is rewritten without them). At start-up the controller asks for
what is left (:meth:`AuditJournal.unpushed`): ended entries with their result, and started-but-never-ended ones as
result ``interrupted`` (the effect may or may not have happened; the next reconcile's own entry follows). A begun
effect never started is no effect, unless the machine rebooted since (the boot id in the begun record differs): then
its unsynced *started* record may be lost, and it is ``interrupted`` too. Each entry
carries a unique ``id``, so the controller skips those the status branch already has (a crash after the push but
before the journal forgot them) and nothing is pushed twice.

One JSON object a line: ``{"kind": "begun"|"ended", "id": ..., "entry": {...}, "boot": ...}``, ``{"kind":
"started", "id": ...}`` or ``{"kind": "dropped", "ids": [...]}``. A line cut short (a crash in the middle of a
write) or otherwise unreadable is skipped with a warning that names the file and line, never a traceback; a cut last
line is trimmed so that the next record starts on its own.
Records are written with one unbuffered ``write`` each, so a killed process loses nothing it wrote.

:class:`FileJournal` is the one in ``stateDir/audit-journal.jsonl`` (built by ``reconciler run``);
:class:`MemoryJournal` is its in-memory twin for tests and for controllers built without a state directory. Used by
:mod:`reconciler.engine.reconcile` (begin, start, end, drop) and :mod:`reconciler.engine.controller` (unpushed, pushed).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from reconciler.core.problems import PermanentError, TemporaryError

FILE_NAME = "audit-journal.jsonl"
INTERRUPTED = "interrupted"
INTERRUPTED_MESSAGE = "the controller stopped before this effect's result was recorded: it may or may not have happened"
log = logging.getLogger(__name__)


class Kind(StrEnum):
    BEGUN = "begun"  # an effect that may be made (durable, one fdatasync for an environment's effects)
    STARTED = "started"  # it is being made now (written, not synced: it survives a crash of the process)
    ENDED = "ended"  # its final entry, with the result
    DROPPED = "dropped"  # it was not made after all


class JournalError(TemporaryError):
    """A record could not be written: the effect it announces must not be made."""


def new_id() -> str:
    """A unique audit entry id (random, 32 hex digits)."""
    return uuid.uuid4().hex


class AuditJournal(Protocol):
    """What the engine and the controller need from a journal. Every entry is a dict with a string ``id``."""

    def begin(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Record, durably, effects about to be made; raises :class:`JournalError` if that cannot be done."""
        ...

    def start(self, ident: str) -> None:
        """The begun effect ``ident`` is being made now. Never raises."""
        ...

    def end(self, entry: Mapping[str, Any]) -> None:
        """Record an effect's final entry (its result). Never raises: an entry not journalled stays in memory."""
        ...

    def drop(self, ids: Collection[str]) -> None:
        """Begun effects that were not made after all: they get no entry. Never raises."""
        ...

    def unpushed(self) -> list[dict[str, Any]]:
        """Entries not pushed yet, in journal order: ended ones, and started ones as result ``interrupted``."""
        ...

    def pushed(self, ids: Collection[str]) -> None:
        """These entries are on the status branch: forget them. Never raises."""
        ...

    def close(self) -> None:
        """Release the journal's file (the controller closes it when it stops)."""
        ...


def interrupted(begun: Mapping[str, Any]) -> dict[str, Any]:
    """The entry of an effect begun and never known to have ended."""
    return {**begun, "result": INTERRUPTED, "end": None, "message": INTERRUPTED_MESSAGE}


def boot_id() -> str | None:
    """This boot of the machine (Linux), or None. A process that crashed leaves everything it wrote in the page
    cache; only a reboot loses writes that were not synced."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class Record:
    kind: Kind
    ids: tuple[str, ...]
    entry: Mapping[str, Any] | None = None
    boot: str | None = None  # begun records: the boot they were written in

    def line(self) -> bytes:
        # json's default encoder (no options): its C encoder is built once, not for every record
        if self.kind is Kind.DROPPED:
            return json.dumps({"kind": str(self.kind), "ids": list(self.ids)}).encode() + b"\n"
        if self.kind is Kind.STARTED:
            return json.dumps({"kind": str(self.kind), "id": self.ids[0]}).encode() + b"\n"
        body = {"kind": str(self.kind), "id": self.ids[0], "entry": self.entry, "boot": self.boot}
        return json.dumps(body).encode() + b"\n"


def _entry_id(entry: Mapping[str, Any]) -> str:
    found = entry.get("id")
    if not isinstance(found, str) or not found:
        raise ValueError("an audit entry to journal has no id")
    return found


def parse_record(line: bytes) -> Record | None:
    """A journal line as a record, or None when it is not one (bad JSON, wrong shape, unknown kind)."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("kind") not in set(Kind):
        return None
    kind = Kind(data["kind"])
    if kind is Kind.DROPPED:
        ids = data.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return None
        return Record(kind, tuple(ids))
    ident, entry, boot = data.get("id"), data.get("entry"), data.get("boot")
    if not isinstance(ident, str) or not ident:
        return None
    if kind is Kind.STARTED:
        return Record(kind, (ident,))
    if not isinstance(entry, dict) or not (boot is None or isinstance(boot, str)):
        return None
    return Record(kind, (ident,), {**entry, "id": ident}, boot)


def replay(records: Iterable[Record], boot: str | None) -> list[dict[str, Any]]:
    """What the records leave unpushed, in the order the effects were begun (the last record of an id wins).

    A begun effect that was never started is not an effect when it was begun in this boot (its *started* record
    would have survived the crash of the process); after a reboot it may have been lost: ``interrupted``."""
    begun: dict[str, Record] = {}
    started: set[str] = set()
    ended: dict[str, Mapping[str, Any]] = {}
    for record in records:
        ident = record.ids[0] if record.ids else ""
        if record.kind is Kind.DROPPED:
            for gone in record.ids:
                begun.pop(gone, None)
                ended.pop(gone, None)
        elif record.kind is Kind.STARTED:
            started.add(ident)
        else:
            begun.setdefault(ident, record)
            if record.kind is Kind.ENDED:
                ended[ident] = record.entry or {}
    out: list[dict[str, Any]] = []
    for ident, record in begun.items():
        if ident in ended:
            out.append(dict(ended[ident]))
        elif ident in started or boot is None or record.boot != boot:
            out.append(interrupted(record.entry or {}))
    return out


class MemoryJournal:
    """The journal's in-memory twin: the same records and the same answers, lost with the process."""

    def __init__(self, boot: str | None = "this boot") -> None:
        self.records: list[Record] = []
        self.boot = boot
        self._lock = threading.Lock()

    def begin(self, entries: Sequence[Mapping[str, Any]]) -> None:
        records = [Record(Kind.BEGUN, (_entry_id(e),), dict(e), self.boot) for e in entries]
        with self._lock:
            self.records.extend(records)

    def start(self, ident: str) -> None:
        with self._lock:
            self.records.append(Record(Kind.STARTED, (ident,)))

    def end(self, entry: Mapping[str, Any]) -> None:
        with self._lock:
            self.records.append(Record(Kind.ENDED, (_entry_id(entry),), dict(entry)))

    def drop(self, ids: Collection[str]) -> None:
        if ids:
            with self._lock:
                self.records.append(Record(Kind.DROPPED, tuple(ids)))

    def unpushed(self) -> list[dict[str, Any]]:
        with self._lock:
            return replay(self.records, self.boot)

    def pushed(self, ids: Collection[str]) -> None:
        done = set(ids)
        with self._lock:
            self.records = [r for r in self.records if not done.intersection(r.ids)]

    def close(self) -> None:
        return None


class FileJournal:
    """The journal in ``path`` (JSON lines, mode 0600). Thread-safe; one controller process per file."""

    def __init__(self, path: Path, *, durable: bool = True, boot: str | None = None) -> None:
        self.path = Path(path)
        self.durable = durable  # fdatasync the begun records before the effects they announce
        self.boot = boot if boot is not None else boot_id()
        self._lock = threading.Lock()  # writes (short)
        self._sync_lock = threading.Lock()  # fdatasync and swapping the file; taken before ``_lock``
        self._written = self._synced = 0  # begun batches written / known durable (group commit)
        self._warned = False
        self._records = self._load()
        self._outstanding = {e["id"] for e in replay(self._records, self.boot)}  # neither pushed nor dropped
        self._fd = self._open()

    # reading

    def _load(self) -> list[Record]:
        """Every readable record of the file; an unreadable line is skipped with a warning, a cut last one trimmed."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise PermanentError(f"{self.path}: cannot read the audit journal: {exc.strerror or exc}") from exc
        records: list[Record] = []
        lines = data.split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = parse_record(line)
            if record is not None:
                records.append(record)
            elif number == len(lines):  # no newline after it: its write was cut short by a crash
                log.warning("%s:%d: ignoring a record cut short (the controller stopped while writing it)",
                            self.path, number)  # fmt: skip
            else:
                log.warning("%s:%d: ignoring an unreadable audit journal record", self.path, number)
        if data and not data.endswith(b"\n"):  # the next record must start on a line of its own
            whole = parse_record(lines[-1]) is not None  # (cut just before its newline)
            self._trim(len(data) - (0 if whole else len(lines[-1])), whole)
        return records

    def _trim(self, size: int, newline: bool) -> None:
        try:
            os.truncate(self.path, size)
            if newline:
                with open(self.path, "ab") as fh:
                    fh.write(b"\n")
        except OSError as exc:
            raise PermanentError(f"{self.path}: cannot trim the audit journal: {exc.strerror or exc}") from exc

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise PermanentError(f"{self.path}: cannot open the audit journal: {exc.strerror or exc}") from exc

    def unpushed(self) -> list[dict[str, Any]]:
        with self._lock:  # what the file held when it was opened (asked at start-up), less what was pushed since
            return replay(self._records, self.boot)

    # writing

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def begin(self, entries: Sequence[Mapping[str, Any]]) -> None:
        if not entries:
            return
        records = [Record(Kind.BEGUN, (_entry_id(e),), e, self.boot) for e in entries]
        data = b"".join(r.line() for r in records)
        with self._lock:
            try:
                self._write(data)
            except OSError as exc:
                raise JournalError(f"{self.path}: cannot journal the audit entries: {exc.strerror or exc}") from exc
            self._outstanding.update(r.ids[0] for r in records)
            self._written += 1
            mine = self._written
        if self.durable:
            self._sync(mine)

    def _sync(self, mine: int) -> None:
        """Make batch ``mine`` durable. Group commit: one ``fdatasync`` covers every batch written before it began,
        so workers that journal at the same moment share it, and writing goes on meanwhile."""
        with self._sync_lock:
            if self._synced >= mine:
                return
            with self._lock:
                upto, fd = self._written, self._fd
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise JournalError(f"{self.path}: cannot journal the audit entries: {exc.strerror or exc}") from exc
            self._synced = upto

    def _record(self, record: Record) -> None:
        with self._lock:
            if record.kind is Kind.DROPPED:
                self._outstanding.difference_update(record.ids)
            else:  # (started: its begun record made it outstanding already)
                self._outstanding.update(record.ids)
            try:
                self._write(record.line())
            except OSError as exc:  # the entry is still in memory and goes to the status branch with the others
                if not self._warned:
                    log.error("%s: cannot write to the audit journal: %s", self.path, exc.strerror or exc)
                    self._warned = True

    def start(self, ident: str) -> None:
        self._record(Record(Kind.STARTED, (ident,)))

    def end(self, entry: Mapping[str, Any]) -> None:
        self._record(Record(Kind.ENDED, (_entry_id(entry),), entry))

    def drop(self, ids: Collection[str]) -> None:
        if ids:
            self._record(Record(Kind.DROPPED, tuple(ids)))

    def pushed(self, ids: Collection[str]) -> None:
        """Forget the pushed entries: the file is emptied when nothing else is in it (the common case: a cycle's
        entries are pushed together), else rewritten with only the outstanding records (renamed over the old one)."""
        with self._sync_lock, self._lock:
            self._outstanding.difference_update(ids)
            self._records = [r for r in self._records if self._outstanding.intersection(r.ids)]
            try:
                if self._outstanding:
                    self._rewrite(self._outstanding)
                else:
                    os.ftruncate(self._fd, 0)
                    os.fsync(self._fd)
            except OSError as exc:  # kept: at start-up, what the status branch already has is skipped by id
                log.warning("%s: cannot rewrite the audit journal: %s", self.path, exc.strerror or exc)

    def _rewrite(self, keep: set[str]) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(self.path, "rb") as old, open(temporary, "wb") as new:
            os.chmod(temporary, 0o600)
            for line in _kept(old, keep):
                new.write(line)
            new.flush()
            os.fsync(new.fileno())
        os.replace(temporary, self.path)
        fd = self._open()
        os.close(self._fd)
        self._fd = fd
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def close(self) -> None:
        with self._sync_lock, self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _kept(lines: Iterable[bytes], keep: set[str]) -> Iterator[bytes]:
    """The journal lines that still matter: the records of ``keep``, the entries neither pushed nor dropped."""
    for line in lines:
        record = parse_record(line)
        if record is None or record.kind is Kind.DROPPED or not keep.intersection(record.ids):
            continue
        yield line if line.endswith(b"\n") else line + b"\n"


def open_journal(state_dir: Path, *, durable: bool = True) -> FileJournal:
    """The controller's journal in ``state_dir``; :class:`PermanentError` naming the file if it cannot be used."""
    return FileJournal(Path(state_dir) / FILE_NAME, durable=durable)
