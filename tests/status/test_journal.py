"""The audit journal on real files: what a restart recovers, what a crash mid-write leaves, every error path.

The same behaviour tests run against :class:`FileJournal` (reopened, as a restarted controller does) and its
in-memory twin :class:`MemoryJournal`, so the twin stays faithful.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.problems import PermanentError
from reconciler.status.journal import (
    FILE_NAME,
    INTERRUPTED,
    AuditJournal,
    FileJournal,
    JournalError,
    MemoryJournal,
    new_id,
    open_journal,
)


def entry(app: str = "ref", **extra: Any) -> dict[str, Any]:
    return {"id": new_id(), "environment": "lille-dev", "application": app, "action": "create", "to": "3.10", **extra}


def ended(begun: dict[str, Any], result: str = "succeeded") -> dict[str, Any]:
    return {**begun, "result": result, "end": "2026-12-03T09:00:00Z", "message": "applied"}


class Reopening:
    """A file journal that a restart reopens: every question goes to a fresh instance on the same file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = FileJournal(path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.journal, name)

    def unpushed(self) -> list[dict[str, Any]]:
        self.journal = FileJournal(self.path)  # no close: a crash
        return self.journal.unpushed()


Factory = Callable[[Path], AuditJournal]


@pytest.fixture(params=["file", "memory"])
def make(request: pytest.FixtureRequest) -> Factory:
    if request.param == "file":
        return lambda root: Reopening(root / FILE_NAME)
    return lambda _root: MemoryJournal()


def test_ended_entries_come_back_with_their_result_and_started_ones_as_interrupted(
    tmp_path: Path, make: Factory
) -> None:
    journal = make(tmp_path)
    a, b, c, never = entry("ref"), entry("famille"), entry("batch"), entry("web")
    journal.begin([a, b, c, never])
    for e in (a, b, c):
        journal.start(e["id"])
    journal.end(ended(a))
    journal.end(ended(b, "failed"))
    left = journal.unpushed()  # never: begun, not started before the crash (same boot): no effect, no entry
    assert [(e["id"], e["result"]) for e in left] == [
        (a["id"], "succeeded"),
        (b["id"], "failed"),
        (c["id"], INTERRUPTED),
    ]
    assert left[2]["end"] is None and "may or may not have happened" in left[2]["message"]
    assert left[2]["application"] == "batch"  # everything known before the effect is kept


def test_dropped_and_pushed_entries_are_forgotten(tmp_path: Path, make: Factory) -> None:
    journal = make(tmp_path)
    a, b, c = entry("ref"), entry("famille"), entry("batch")
    journal.begin([a, b, c])
    journal.start(c["id"])
    journal.end(ended(a))
    journal.drop([b["id"]])  # held after all: no effect, no entry
    journal.pushed([a["id"]])
    assert [e["id"] for e in journal.unpushed()] == [c["id"]]
    journal.pushed([c["id"]])
    assert journal.unpushed() == []


def test_an_entry_to_journal_must_have_an_id(tmp_path: Path, make: Factory) -> None:
    with pytest.raises(ValueError, match="no id"):
        make(tmp_path).begin([{"application": "ref"}])


def test_the_file_keeps_only_what_is_not_pushed(tmp_path: Path) -> None:
    journal = open_journal(tmp_path)
    entries = [entry(str(i)) for i in range(5)]
    journal.begin(entries)
    for e in entries[:4]:
        journal.end(ended(e))
    journal.drop([entries[4]["id"]])
    assert (tmp_path / FILE_NAME).stat().st_mode & 0o777 == 0o600
    journal.pushed([e["id"] for e in entries[:3]])
    lines = (tmp_path / FILE_NAME).read_text().splitlines()
    assert {json.loads(line)["id"] for line in lines} == {entries[3]["id"]}  # begun + ended of the one left
    journal.end(ended(entry("after")))  # still appends after the rewrite
    journal.close()
    assert len(FileJournal(tmp_path / FILE_NAME).unpushed()) == 2


def test_a_drop_from_an_earlier_run_is_honoured_by_the_next_rewrite(tmp_path: Path) -> None:
    first = open_journal(tmp_path)
    a, b = entry("ref"), entry("famille")
    first.begin([a, b])
    first.drop([b["id"]])
    first.end(ended(a))  # crash: nothing pushed
    second = open_journal(tmp_path)
    assert [e["id"] for e in second.unpushed()] == [a["id"]]
    second.pushed([a["id"]])
    assert (tmp_path / FILE_NAME).read_bytes() == b""
    assert open_journal(tmp_path).unpushed() == []


def test_a_record_cut_short_by_a_crash_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / FILE_NAME
    journal = FileJournal(path)
    a, b = entry("ref"), entry("famille")
    journal.begin([a])
    journal.end(ended(a))
    full = path.read_bytes()
    journal.begin([b])
    cut = path.read_bytes()[: len(full) + 40]  # the crash came in the middle of b's record
    path.write_bytes(cut)
    with caplog.at_level(logging.WARNING):
        reopened = FileJournal(path)
    assert [e["id"] for e in reopened.unpushed()] == [a["id"]]
    assert f"{path}:3: ignoring a record cut short" in caplog.text
    assert path.read_bytes() == full  # trimmed: the next record starts on a line of its own
    c = entry("batch")
    reopened.begin([c])
    reopened.start(c["id"])
    assert [e["id"] for e in FileJournal(path).unpushed()] == [a["id"], c["id"]]


@pytest.mark.parametrize(
    "bad",
    [
        b"not json at all",
        b"\xff\xfe garbage",
        b"[1, 2, 3]",
        b'{"kind": "exploded", "id": "x", "entry": {}}',
        b'{"kind": "begun", "id": 7, "entry": {}}',
        b'{"kind": "ended", "id": "x", "entry": "not an object"}',
        b'{"kind": "dropped", "ids": "x"}',
    ],
)
def test_an_unreadable_record_is_skipped_with_a_warning_naming_its_line(
    tmp_path: Path, bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / FILE_NAME
    journal = FileJournal(path)
    a, b = entry("ref"), entry("famille")
    journal.begin([a])
    with path.open("ab") as fh:
        fh.write(bad + b"\n")
    journal.begin([b])
    journal.start(a["id"])
    journal.start(b["id"])
    with caplog.at_level(logging.WARNING):
        left = FileJournal(path).unpushed()
    assert [e["id"] for e in left] == [a["id"], b["id"]]
    assert f"{path}:2: ignoring an unreadable audit journal record" in caplog.text


def test_a_journal_that_cannot_be_read_is_a_clear_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).mkdir()
    with pytest.raises(PermanentError, match=re.escape(f"{tmp_path / FILE_NAME}: cannot read the audit journal")):
        open_journal(tmp_path)


def test_a_journal_in_a_state_dir_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the directory should be")
    with pytest.raises(
        PermanentError, match=re.escape("state/audit-journal.jsonl: cannot read the audit journal: Not a dir")
    ):
        open_journal(tmp_path / "state")


def to_dev_full(journal: FileJournal) -> None:
    """From now on every write of the journal fails as on a full disk (ENOSPC, from the kernel)."""
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, journal._fd)
    os.close(full)


def test_begin_that_cannot_write_raises_so_that_no_effect_is_made(tmp_path: Path) -> None:
    journal = open_journal(tmp_path)
    to_dev_full(journal)
    with pytest.raises(JournalError, match="cannot journal the audit entries: No space left on device"):
        journal.begin([entry()])


def test_end_and_drop_that_cannot_write_log_once_and_do_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = open_journal(tmp_path)
    a = entry()
    journal.begin([a])
    journal.start(a["id"])
    to_dev_full(journal)
    with caplog.at_level(logging.ERROR):
        journal.end(ended(a))
        journal.drop([a["id"]])
    assert caplog.text.count("cannot write to the audit journal") == 1
    assert [e["result"] for e in FileJournal(tmp_path / FILE_NAME).unpushed()] == [INTERRUPTED]


def test_a_rewrite_that_fails_keeps_the_entries_and_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = open_journal(tmp_path)
    a, in_flight = entry("ref"), entry("famille")
    journal.begin([a, in_flight])
    journal.end(ended(a))
    (tmp_path / (FILE_NAME + ".tmp")).mkdir()  # the new file (without a) cannot be written
    with caplog.at_level(logging.WARNING):
        journal.pushed([a["id"]])
    assert "cannot rewrite the audit journal" in caplog.text
    left = FileJournal(tmp_path / FILE_NAME).unpushed()
    assert [e["id"] for e in left] == [a["id"]]  # a restart skips it by its id on the status branch


def test_pushing_everything_empties_the_file_and_pushing_part_keeps_the_rest(tmp_path: Path) -> None:
    journal = open_journal(tmp_path)
    a, in_flight = entry("ref"), entry("famille")
    journal.begin([a, in_flight])
    journal.end(ended(a))
    journal.pushed([a["id"]])
    assert [json.loads(line)["id"] for line in (tmp_path / FILE_NAME).read_text().splitlines()] == [in_flight["id"]]
    journal.end(ended(in_flight))
    journal.pushed([in_flight["id"]])
    assert (tmp_path / FILE_NAME).read_bytes() == b""


def test_a_begun_effect_never_started_is_no_effect_unless_the_machine_rebooted(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    journal = FileJournal(path, boot="boot-1")
    a = entry()
    journal.begin([a])  # crash before its start: a dead process loses none of its writes, so a never started
    assert FileJournal(path, boot="boot-1").unpushed() == []
    after_reboot = FileJournal(path, boot="boot-2").unpushed()  # an unsynced start may be lost in a reboot
    assert [(e["id"], e["result"]) for e in after_reboot] == [(a["id"], INTERRUPTED)]


def test_workers_journalling_at_the_same_time_lose_nothing(tmp_path: Path) -> None:
    journal = open_journal(tmp_path)  # durable: concurrent begins share their fdatasync (group commit)
    batches = [[entry(f"app-{worker}-{i}") for i in range(20)] for worker in range(8)]

    def work(batch: list[dict[str, Any]]) -> None:
        journal.begin(batch)
        for e in batch:
            journal.start(e["id"])
            journal.end(ended(e))

    threads = [threading.Thread(target=work, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    left = FileJournal(tmp_path / FILE_NAME).unpushed()
    assert sorted(e["id"] for e in left) == sorted(e["id"] for batch in batches for e in batch)
    assert {e["result"] for e in left} == {"succeeded"}


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    journal = FileJournal(path)
    a, b = entry("ref"), entry("famille")
    journal.begin([a])
    journal.start(a["id"])
    path.write_bytes(path.read_bytes()[:-1])  # the crash came just before the newline
    reopened = FileJournal(path)
    reopened.begin([b])
    reopened.start(b["id"])
    assert [e["id"] for e in FileJournal(path).unpushed()] == [a["id"], b["id"]]
