"""The local driver on a real directory: atomic writes, inventory, drift, ownership, prune, dry-run, crashes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.core.problems import PermanentError, TemporaryError
from reconciler.drivers.base import Health
from reconciler.drivers.local import INVENTORY, PENDING, LocalDriver, classify_os_error
from tests.drivers import Reads, make_unit, wait_until

REPO = Path(__file__).resolve().parents[2]

V1 = {"web": {"deployment.yaml": b"image: shop:1\n", "service.yaml": b"port: 80\n"}, "batch": {"job.yaml": b"run: 1\n"}}
V2 = {"web": {"deployment.yaml": b"image: shop:2\n", "service.yaml": b"port: 80\n"}}


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``root`` with inode, mtime and content: equal snapshots mean nothing was written."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def driver(tmp_path: Path) -> LocalDriver:
    return LocalDriver("t1", tmp_path / "target")


def test_apply_creates_files_and_inventory(driver: LocalDriver) -> None:
    unit = make_unit(V1)
    result = driver.apply(unit)
    app = driver.path / "recette" / "shop"
    assert result.changed and "write 3 file(s)" in result.message
    assert (app / "web" / "deployment.yaml").read_bytes() == b"image: shop:1\n"
    assert (app / "batch" / "job.yaml").read_bytes() == b"run: 1\n"
    inventory = json.loads((app / INVENTORY).read_text())
    assert inventory["owner"] == "reconciler"
    assert (inventory["environment"], inventory["application"], inventory["version"]) == ("recette", "shop", "1.0.0")
    assert inventory["fingerprint"] == unit.fingerprint
    assert set(inventory["files"]) == set(unit.files())
    assert not (app / PENDING).exists()
    assert not [p for p in app.rglob(".reconciler-tmp-*")]
    live = driver.observe("recette", "shop")
    assert live is not None and live.in_sync_with == unit.fingerprint and live.version == "1.0.0"
    assert driver.health("recette", "shop").status is Health.HEALTHY
    assert driver.owned_applications("recette") == ["shop"]


def test_reapply_of_the_same_unit_writes_nothing(driver: LocalDriver) -> None:
    driver.apply(make_unit(V1))
    before = snapshot(driver.path)
    result = driver.apply(make_unit(V1))
    assert (result.changed, result.message) == (False, "unchanged")
    assert snapshot(driver.path) == before


def test_update_rewrites_only_changed_files_and_prunes_what_is_no_longer_desired(driver: LocalDriver) -> None:
    driver.apply(make_unit(V1))
    app = driver.path / "recette" / "shop"
    service_before = (app / "web" / "service.yaml").stat().st_ino
    result = driver.apply(make_unit(V2, version="2.0.0"))
    assert result.changed and result.message == "write 1 file(s), remove 1 file(s)"
    assert (app / "web" / "deployment.yaml").read_bytes() == b"image: shop:2\n"
    assert (app / "web" / "service.yaml").stat().st_ino == service_before  # untouched
    assert not (app / "batch").exists()  # its only file went away, so did the (empty) directory
    live = driver.observe("recette", "shop")
    assert live is not None and live.version == "2.0.0" and not live.drifted


def test_hand_edits_show_up_as_drift_and_apply_repairs_them(driver: LocalDriver) -> None:
    unit = make_unit(V1)
    driver.apply(unit)
    app = driver.path / "recette" / "shop"
    (app / "web" / "deployment.yaml").write_bytes(b"image: hacked\n")
    (app / "batch" / "job.yaml").unlink()
    live = driver.observe("recette", "shop")
    assert live is not None and live.drifted == ("batch/job.yaml", "web/deployment.yaml")
    assert live.in_sync_with is None
    trusting = driver.observe("recette", "shop", check_drift=False)
    assert trusting is not None and trusting.drifted == () and trusting.fingerprint == unit.fingerprint
    report = driver.health("recette", "shop")
    assert report.status is Health.DEGRADED and "2 file(s) drifted" in report.message

    assert driver.apply(unit).changed
    assert (app / "web" / "deployment.yaml").read_bytes() == b"image: shop:1\n"
    assert (app / "batch" / "job.yaml").read_bytes() == b"run: 1\n"
    assert driver.health("recette", "shop").status is Health.HEALTHY


def test_a_symlink_in_place_of_a_file_is_drift_and_is_replaced_not_followed(
    driver: LocalDriver, tmp_path: Path
) -> None:
    driver.apply(make_unit(V1))
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"image: shop:1\n")  # same content: following the link would hide the drift
    link = driver.path / "recette" / "shop" / "web" / "deployment.yaml"
    link.unlink()
    link.symlink_to(outside)
    live = driver.observe("recette", "shop")
    assert live is not None and live.drifted == ("web/deployment.yaml",)
    driver.apply(make_unit(V1))
    assert not link.is_symlink() and outside.read_bytes() == b"image: shop:1\n"


def test_foreign_files_are_never_removed(driver: LocalDriver) -> None:
    driver.apply(make_unit(V1))
    app = driver.path / "recette" / "shop"
    foreign = [app / "batch" / "operator-notes.txt", app / "README", driver.path / "recette" / "other.txt"]
    for path in foreign:
        path.write_text("not yours\n")
    driver.apply(make_unit(V2))  # drops the batch component
    assert all(p.read_text() == "not yours\n" for p in foreign)
    assert not (app / "batch" / "job.yaml").exists()

    result = driver.remove("recette", "shop")
    assert result.changed and result.message == "removed 2 file(s)"
    assert all(p.read_text() == "not yours\n" for p in foreign)
    assert tree(driver.path) == {"recette", "recette/other.txt", "recette/shop", "recette/shop/README"} | {
        "recette/shop/batch",
        "recette/shop/batch/operator-notes.txt",
    }
    assert driver.owned_applications("recette") == []
    assert driver.observe("recette", "shop") is None


def test_remove_deletes_what_it_owns_and_empty_directories(driver: LocalDriver) -> None:
    driver.apply(make_unit(V1))
    driver.apply(make_unit(V1, application="billing"))
    assert driver.owned_applications("recette") == ["billing", "shop"]
    assert driver.remove("recette", "shop").changed
    assert not (driver.path / "recette" / "shop").exists()
    assert (driver.path / "recette" / "billing" / INVENTORY).exists()
    assert driver.owned_applications("recette") == ["billing"]
    assert driver.health("recette", "shop").status is Health.MISSING
    again = driver.remove("recette", "shop")
    assert (again.changed, again.message) == (False, "absent")
    driver.remove("recette", "billing")
    assert list(driver.path.iterdir()) == []  # the environment directory went too
    assert driver.owned_applications("recette") == []
    assert driver.owned_applications("nowhere") == []


def test_dry_run_reports_and_writes_nothing(driver: LocalDriver) -> None:
    first = driver.apply(make_unit(V1), dry_run=True)
    assert first.changed and first.message == "would write 3 file(s)"
    assert not driver.path.exists()

    driver.apply(make_unit(V1))
    before = snapshot(driver.path)
    update = driver.apply(make_unit(V2, version="2.0.0"), dry_run=True)
    assert update.changed and update.message == "would write 1 file(s), remove 1 file(s)"
    assert driver.apply(make_unit(V1), dry_run=True).changed is False
    removal = driver.remove("recette", "shop", dry_run=True)
    assert removal.changed and removal.message == "would remove 3 file(s)"
    assert snapshot(driver.path) == before


def test_version_only_change_rewrites_the_inventory(driver: LocalDriver) -> None:
    driver.apply(make_unit(V1))
    result = driver.apply(make_unit(V1, version="1.0.1"))
    assert result.changed and result.message == "rewrite the inventory"
    live = driver.observe("recette", "shop")
    assert live is not None and live.version == "1.0.1"


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", ".hidden", "a\0b", "x..y"])
@pytest.mark.parametrize("where", ["environment", "application", "component", "file"])
def test_unsafe_names_are_refused_and_nothing_is_written(driver: LocalDriver, bad: str, where: str) -> None:
    files = {bad if where == "component" else "web": {bad if where == "file" else "a.yaml": b"x"}}
    environment = bad if where == "environment" else "recette"
    unit = make_unit(files, environment=environment, application=bad if where == "application" else "shop")
    with pytest.raises(PermanentError, match=f"local target t1: unsafe {where} name"):
        driver.apply(unit)
    assert not driver.path.exists()
    if where in ("environment", "application"):
        with pytest.raises(PermanentError):
            driver.observe(unit.environment, unit.application)
        with pytest.raises(PermanentError):
            driver.remove(unit.environment, unit.application)
    if where == "environment":
        with pytest.raises(PermanentError):
            driver.owned_applications(bad)


def test_corrupt_inventory_is_drift_never_owned_and_apply_rewrites_it(driver: LocalDriver) -> None:
    driver.apply(make_unit(V1))
    app = driver.path / "recette" / "shop"
    (app / INVENTORY).write_text("{not json")
    live = driver.observe("recette", "shop")
    assert live is not None and (live.version, live.fingerprint, live.drifted) == (None, None, (INVENTORY,))
    report = driver.health("recette", "shop")
    assert report.status is Health.DEGRADED and "unreadable" in report.message
    assert driver.owned_applications("recette") == []
    with pytest.raises(PermanentError, match="not valid JSON; not removing anything"):
        driver.remove("recette", "shop")
    assert (app / "batch" / "job.yaml").exists()

    result = driver.apply(make_unit(V2))  # no longer knows it owned batch/job.yaml: keeps it
    assert result.changed
    assert (app / "batch" / "job.yaml").exists()
    live = driver.observe("recette", "shop")
    assert live is not None and live.in_sync_with == make_unit(V2).fingerprint
    assert driver.owned_applications("recette") == ["shop"]


@pytest.mark.parametrize(
    "inventory",
    [
        [1, 2],
        {"owner": "reconciler", "environment": "recette", "application": "shop", "version": "1", "fingerprint": "f"},
        {
            "owner": "reconciler",
            "environment": "recette",
            "application": "shop",
            "version": "1",
            "fingerprint": "f",
            "files": {"../../escape/x": "0" * 64},
        },
        {
            "owner": "reconciler",
            "environment": "prod",
            "application": "shop",
            "version": "1",
            "fingerprint": "f",
            "files": {},
        },
    ],
    ids=["not-an-object", "no-files", "path-escape", "other-environment"],
)
def test_malformed_inventory_is_never_trusted_for_removal(
    driver: LocalDriver, tmp_path: Path, inventory: object
) -> None:
    escape = driver.path / "escape" / "x"
    escape.parent.mkdir(parents=True)
    escape.write_text("precious\n")
    app = driver.path / "recette" / "shop"
    app.mkdir(parents=True)
    (app / INVENTORY).write_text(json.dumps(inventory))
    with pytest.raises(PermanentError, match="not removing anything"):
        driver.remove("recette", "shop")
    assert escape.read_text() == "precious\n"
    assert driver.owned_applications("recette") == []


def test_an_inventory_of_another_owner_is_never_taken_over(driver: LocalDriver) -> None:
    app = driver.path / "recette" / "shop"
    (app / "web").mkdir(parents=True)
    (app / "web" / "deployment.yaml").write_text("theirs\n")
    theirs = {"owner": "someone-else", "environment": "recette", "application": "shop", "files": {}}
    (app / INVENTORY).write_text(json.dumps(theirs))
    before = snapshot(driver.path)
    assert driver.observe("recette", "shop") is None
    assert driver.owned_applications("recette") == []
    assert driver.health("recette", "shop").status is Health.MISSING
    with pytest.raises(PermanentError, match="belongs to another owner; refusing to take it over"):
        driver.apply(make_unit(V1))
    with pytest.raises(PermanentError, match="belongs to another owner"):
        driver.remove("recette", "shop")
    assert snapshot(driver.path) == before


def test_symlinked_directories_are_refused(driver: LocalDriver, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (driver.path / "recette").mkdir(parents=True)
    (driver.path / "recette" / "shop").symlink_to(elsewhere)
    with pytest.raises(PermanentError, match="shop is a symbolic link"):
        driver.apply(make_unit(V1))
    (driver.path / "recette" / "shop").unlink()
    (driver.path / "recette" / "shop").mkdir()
    (driver.path / "recette" / "shop" / "web").symlink_to(elsewhere)
    with pytest.raises(PermanentError, match="web is a symbolic link"):
        driver.apply(make_unit(V1))
    assert list(elsewhere.iterdir()) == []


def test_filesystem_errors_name_the_target_and_are_classified(driver: LocalDriver) -> None:
    driver.path.mkdir()
    (driver.path / "recette").write_text("a file where a directory belongs\n")
    with pytest.raises(PermanentError, match="local target t1: cannot apply recette/shop: "):
        driver.apply(make_unit(V1))
    full = classify_os_error("t1", "apply x/y", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert (
        isinstance(full, TemporaryError) and str(full) == "local target t1: cannot apply x/y: No space left on device"
    )
    denied = classify_os_error("t1", "remove x/y", PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    assert isinstance(denied, PermanentError)


# enough files (each fsynced) that the child is still writing when it is killed right after its first one
COUNT = 400
CHILD = """
import sys
import time
from pathlib import Path
from typing import Any
from reconciler.drivers.local import LocalDriver
from tests.drivers import make_unit
files = {f"c{i:04d}": {"f.txt": (f"v2 {i}\\n" * 512).encode()} for i in range(int(sys.argv[2]))}
LocalDriver("t1", Path(sys.argv[1])).apply(make_unit(files, version="2.0.0"))
"""


def kill_mid_apply(root: Path, count: int, first: Path | None = None) -> None:
    """Apply a big unit in a child process and SIGKILL it as soon as ``first`` (its first file) exists."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(count)], cwd=REPO)
    first = first or root / "recette" / "shop" / "c0000" / "f.txt"
    try:
        wait_until(lambda: first.exists() or child.poll() is not None, timeout=60, what="the first file")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL, "the child finished before it could be killed"


def test_a_killed_apply_converges_on_the_next_apply(driver: LocalDriver) -> None:
    driver.apply(make_unit(V1))
    kill_mid_apply(driver.path, COUNT)
    app = driver.path / "recette" / "shop"
    live = driver.observe("recette", "shop", check_drift=False)
    assert live is not None and live.version == "1.0.0"  # the inventory still describes the last complete apply
    assert (app / PENDING).exists()
    written = len(list(app.glob("c*/f.txt")))
    assert 0 < written < COUNT

    files = {f"c{i:04d}": {"f.txt": (f"v2 {i}\n" * 512).encode()} for i in range(COUNT)}
    unit = make_unit(files, version="2.0.0")
    result = driver.apply(unit)
    assert result.changed and result.message == f"write {COUNT - written} file(s), remove 3 file(s)"
    assert tree(app) == {INVENTORY} | {f"c{i:04d}" for i in range(COUNT)} | {f"c{i:04d}/f.txt" for i in range(COUNT)}
    live = driver.observe("recette", "shop")
    assert live is not None and live.in_sync_with == unit.fingerprint
    assert driver.apply(unit).changed is False


def test_a_killed_first_apply_leaves_only_its_staging_directory_and_converges(driver: LocalDriver) -> None:
    staging = driver.path / "recette" / ".reconciler-tmp-shop"
    kill_mid_apply(driver.path, COUNT, first=staging / "c0000" / "f.txt")
    assert staging.is_dir() and not (driver.path / "recette" / "shop").exists()  # nothing half-visible
    assert driver.observe("recette", "shop") is None
    assert driver.owned_applications("recette") == []

    files = {f"c{i:04d}": {"f.txt": (f"v2 {i}\n" * 512).encode()} for i in range(COUNT)}
    unit = make_unit(files, version="2.0.0")
    assert driver.apply(unit).changed
    assert tree(driver.path / "recette") == {"shop", "shop/" + INVENTORY} | {
        f"shop/{d}" for i in range(COUNT) for d in (f"c{i:04d}", f"c{i:04d}/f.txt")
    }
    live = driver.observe("recette", "shop")
    assert live is not None and live.in_sync_with == unit.fingerprint


def test_a_file_squatting_the_staging_name_is_replaced(driver: LocalDriver) -> None:
    (driver.path / "recette").mkdir(parents=True)
    (driver.path / "recette" / ".reconciler-tmp-shop").write_text("left over\n")
    assert driver.apply(make_unit(V1)).changed
    assert tree(driver.path / "recette") == {"shop", "shop/" + INVENTORY, "shop/web", "shop/batch"} | {
        "shop/web/deployment.yaml",
        "shop/web/service.yaml",
        "shop/batch/job.yaml",
    }


def test_files_of_a_killed_apply_are_still_owned_when_the_desired_state_moves_on(driver: LocalDriver) -> None:
    driver.apply(make_unit(V1))
    kill_mid_apply(driver.path, COUNT)
    unit = make_unit(V2, version="3.0.0")  # none of the half-written c* files are desired any more
    assert driver.apply(unit).changed
    app = driver.path / "recette" / "shop"
    assert tree(app) == {INVENTORY, "web", "web/deployment.yaml", "web/service.yaml"}

    kill_mid_apply(driver.path, COUNT)
    assert driver.remove("recette", "shop").changed  # remove also honours the pending journal
    assert not driver.path.joinpath("recette").exists()


def test_an_unreadable_pending_journal_is_ignored(driver: LocalDriver) -> None:
    driver.apply(make_unit(V1))
    app = driver.path / "recette" / "shop"
    (app / PENDING).write_text("{garbage")
    assert driver.apply(make_unit(V2)).changed
    assert not (app / PENDING).exists()
    assert tree(app) == {INVENTORY, "web", "web/deployment.yaml", "web/service.yaml"}


def test_owned_applications_skips_what_is_not_a_plain_owned_directory(driver: LocalDriver, tmp_path: Path) -> None:
    driver.apply(make_unit(V1))
    env = driver.path / "recette"
    (env / "notes.txt").write_text("a file\n")
    (env / ".cache").mkdir()
    (env / "linked").symlink_to(env / "shop")  # has an inventory, but through a link
    (env / "manual").mkdir()
    assert driver.owned_applications("recette") == ["shop"]
    (tmp_path / "real-env").mkdir()
    (driver.path / "staging").symlink_to(tmp_path / "real-env")
    assert driver.owned_applications("staging") == []
    with pytest.raises(PermanentError, match="staging is a symbolic link"):
        driver.observe("staging", "shop")


@pytest.mark.parametrize("check_drift", [True, False])
def test_observe_environment_equals_list_then_observe_each(driver: LocalDriver, check_drift: bool) -> None:
    driver.apply(make_unit(V1))
    driver.apply(make_unit(V2, application="shop2"))
    driver.apply(make_unit(V2, application="hacked"))
    env = driver.path / "recette"
    (env / "hacked" / "web" / "service.yaml").write_text("port: 81\n")  # drift
    (env / "notes.txt").write_text("a file\n")
    (env / ".cache").mkdir()
    (env / "manual").mkdir()
    (env / "corrupt").mkdir()
    (env / "corrupt" / INVENTORY).write_text("{not json")
    (env / "foreign").mkdir()
    (env / "foreign" / INVENTORY).write_text(json.dumps({"owner": "someone-else"}))
    (env / "linked").symlink_to(env / "shop")
    for wanted in ([], ["shop", "missing", "corrupt", "foreign", "manual", "notes.txt"]):
        one_by_one = {
            app: driver.observe("recette", app, check_drift)
            for app in sorted(set(driver.owned_applications("recette")) | set(wanted))
        }
        assert driver.observe_environment("recette", wanted, check_drift) == one_by_one
    batch = driver.observe_environment("recette", ["corrupt"], check_drift)
    assert sorted(batch) == ["corrupt", "hacked", "shop", "shop2"]
    hacked, corrupt = batch["hacked"], batch["corrupt"]
    assert hacked is not None and hacked.drifted == (("web/service.yaml",) if check_drift else ())
    assert corrupt is not None and corrupt.drifted == (INVENTORY,) and corrupt.fingerprint is None
    with pytest.raises(PermanentError, match="linked is a symbolic link"):
        driver.observe_environment("recette", ["linked"], check_drift)
    assert driver.observe_environment("absent-env", ["shop"], check_drift) == {"shop": None}


def test_a_drift_check_rereads_only_what_it_cannot_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0]
    driver = LocalDriver("t1", tmp_path / "target")
    driver.known._clock_ns = lambda: now[0]
    reads = Reads(monkeypatch)
    now[0] = time.time_ns()  # the clock still reads the tick the files are written in: every entry is racy
    driver.apply(make_unit(V1))
    reads.take()
    assert driver.observe("recette", "shop") is not None
    assert reads.take() == ["batch/job.yaml", "web/deployment.yaml", "web/service.yaml"]  # racy: re-read once
    now[0] += 10**9
    assert driver.observe("recette", "shop") is not None
    assert reads.take() == ["batch/job.yaml", "web/deployment.yaml", "web/service.yaml"]  # hashed when racy again
    now[0] += 10**9
    live = driver.observe("recette", "shop")
    assert live is not None and not live.drifted and reads.take() == []  # clean: stat alone
    path = driver.path / "recette" / "shop" / "web" / "service.yaml"
    path.write_text("port: 81\n")  # same size, new content: the ctime moves
    live = driver.observe("recette", "shop")
    assert live is not None and live.drifted == ("web/service.yaml",)
    assert reads.take() == ["web/service.yaml"]


def test_verify_content_rereads_every_file_every_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    driver = LocalDriver("t1", tmp_path / "target", verify_content=True)
    driver.known._clock_ns = lambda: time.time_ns() + 10**9  # nothing is racy
    driver.apply(make_unit(V1))
    reads = Reads(monkeypatch)
    for _ in range(2):
        assert driver.observe_environment("recette", ["shop"])["shop"] is not None
        assert reads.take() == ["batch/job.yaml", "web/deployment.yaml", "web/service.yaml"]
