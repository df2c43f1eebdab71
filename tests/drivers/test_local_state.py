"""The local driver's records (local_state): the inventory's format, and what a drift check may trust and re-read."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from reconciler.drivers.local import LocalDriver
from reconciler.drivers.local_state import Inventory, Unreadable, parse_inventory
from tests.drivers import Reads, make_unit

V1 = {"web": {"deployment.yaml": b"image: shop:1\n", "service.yaml": b"port: 80\n"}, "batch": {"job.yaml": b"run: 1\n"}}
ALL = ["batch/job.yaml", "web/deployment.yaml", "web/service.yaml"]


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@pytest.mark.parametrize(
    "files",
    [
        {},
        {"web/a.yaml": sha(b"a")},
        {"web/b.yaml": sha(b"b"), "batch/a.yaml": sha(b"a"), "web/a.yaml": sha(b"a")},
    ],
)
def test_an_inventory_encodes_hex_digests_in_name_order_and_parses_back_equal(files: dict[str, bytes]) -> None:
    inventory = Inventory.of("recette", "shop", "1.0.0", "f" * 64, files)
    assert inventory.rels == tuple(sorted(files)) and inventory.files() == files
    doc = json.loads(inventory.encode())
    assert doc == {
        "owner": "reconciler",
        "environment": "recette",
        "application": "shop",
        "version": "1.0.0",
        "fingerprint": "f" * 64,
        "files": {rel: files[rel].hex() for rel in sorted(files)},
    }
    assert list(doc["files"]) == sorted(files)
    assert parse_inventory(inventory.encode(), "recette", "shop") == inventory


def test_environments_share_one_list_of_file_names_and_one_version_string() -> None:
    files = {"web/a.yaml": sha(b"a"), "web/b.yaml": sha(b"b")}
    first = Inventory.of("dev", "shop", "1.0.0", "f" * 64, files)
    raw = Inventory.of("prod", "shop", "1.0.0", "e" * 64, files).encode()
    second = parse_inventory(raw, "prod", "shop")
    assert isinstance(second, Inventory)
    assert second.rels is first.rels and second.version is first.version  # parsed from a file, yet shared
    assert second.environment == "prod" and second.digests == first.digests


def test_a_malformed_digest_is_unreadable_not_a_crash() -> None:
    raw = Inventory.of("dev", "shop", "1", "f" * 64, {"web/a.yaml": sha(b"a")}).encode()
    bad = raw.replace(sha(b"a").hex().encode(), b"A" * 64)  # upper case: not what the driver writes
    assert parse_inventory(bad, "dev", "shop") == Unreadable(".reconciler-inventory.json of dev/shop is malformed")


def clean_driver(tmp_path: Path) -> LocalDriver:
    driver = LocalDriver("t1", tmp_path / "target")
    driver.known._clock_ns = lambda: time.time_ns() + 10**9  # nothing is racy
    return driver


def test_an_update_keeps_what_it_knew_of_the_files_it_did_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = clean_driver(tmp_path)
    driver.apply(make_unit(V1))
    reads = Reads(monkeypatch)
    v2 = {**V1, "web": {**V1["web"], "deployment.yaml": b"image: shop:2\n"}}
    assert driver.apply(make_unit(v2, version="2.0.0")).message == "write 1 file(s)"
    live = driver.observe("recette", "shop")
    assert live is not None and live.version == "2.0.0" and not live.drifted
    assert reads.take() == []  # the written file and the two it left alone: all known by their stat
    assert driver.apply(make_unit(v2, version="2.0.0")).changed is False
    assert reads.take() == []  # every file known by its stat: none re-hashed


def test_a_drifted_file_is_read_once_and_stays_drifted_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = clean_driver(tmp_path)
    driver.apply(make_unit(V1))
    (driver.path / "recette" / "shop" / "web" / "service.yaml").write_bytes(b"port: 81\n")
    reads = Reads(monkeypatch)
    for expected_reads in (["web/service.yaml"], []):
        live = driver.observe("recette", "shop")
        assert live is not None and live.drifted == ("web/service.yaml",)
        assert reads.take() == expected_reads
    assert driver.apply(make_unit(V1)).message == "write 1 file(s)"  # apply trusts the record: rewrite that one
    live = driver.observe("recette", "shop")
    assert live is not None and not live.drifted and reads.take() == []


def test_a_deleted_file_is_drift_and_a_file_restored_by_hand_is_read_again(tmp_path: Path) -> None:
    driver = clean_driver(tmp_path)
    driver.apply(make_unit(V1))
    path = driver.path / "recette" / "shop" / "batch" / "job.yaml"
    path.unlink()
    live = driver.observe("recette", "shop")
    assert live is not None and live.drifted == ("batch/job.yaml",)
    path.write_bytes(V1["batch"]["job.yaml"])  # the same content back: in sync again
    live = driver.observe("recette", "shop")
    assert live is not None and live.drifted == ()


def test_files_present_before_any_inventory_are_hashed_and_kept_when_right(tmp_path: Path) -> None:
    driver = clean_driver(tmp_path)
    app = driver.path / "recette" / "shop"
    (app / "web").mkdir(parents=True)
    (app / "web" / "service.yaml").write_bytes(V1["web"]["service.yaml"])  # right content, no inventory
    (app / "web" / "deployment.yaml").write_bytes(b"stale\n")
    assert driver.apply(make_unit(V1)).message == "write 2 file(s)"
    assert (app / "web" / "deployment.yaml").read_bytes() == V1["web"]["deployment.yaml"]


def test_a_removed_application_leaves_no_record(tmp_path: Path) -> None:
    driver = clean_driver(tmp_path)
    driver.apply(make_unit(V1))
    assert driver.known.knows("recette", "shop")
    assert driver.remove("recette", "shop").changed
    assert not driver.known.knows("recette", "shop")
    assert driver.observe("recette", "shop") is None
