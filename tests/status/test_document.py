"""Status documents: the fast block-YAML writer reads back as exactly the document written."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from reconciler.status import document

TRICKY = [
    "",
    " lead",
    "trail ",
    "3.10",
    "1.0",
    "1e3",
    "0x1F",
    "0o7",
    "1_000",
    ".inf",
    ".NaN",
    "-.inf",
    "yes",
    "No",
    "ON",
    "off",
    "y",
    "n",
    "true",
    "False",
    "null",
    "Null",
    "~",
    "-",
    "- x",
    "a: b",
    "a:b",
    "a #b",
    "#c",
    "@x",
    "`x",
    "!tag",
    "&a",
    "*a",
    "%x",
    "?",
    "x\ny",
    "x\r\n",
    "\t",
    '"',
    "'",
    "{a}",
    "[a]",
    "a,b",
    "2026-11-29",
    "2026-11-29T00:00:00Z",
    "12:30",
    "1:2:3",
    "=",
    "<<",
    "a=b",
    "<x>",
    "(x)",
    "foo()",
    "é",
    "日本",
    "\u2028",
    "\x00",
    "\\",
    "a\\b",
    "lille-dev",
    "3 applications in sync",
    "k8s-nord: apply failed (HTTP 422)",
    "waiting for a, b",
    "v1.2.3-rc.1+build.5",
    "registry/shop@sha256:abc",
    "a  b",
    "a b ",
    "Synced",
]


@pytest.mark.parametrize("value", TRICKY)
def test_a_string_reads_back_as_itself(value: str) -> None:
    doc = {"value": value, "list": [value], "nested": {value or "k": value}}
    assert yaml.safe_load(document.dump(doc)) == doc


def test_a_whole_document_reads_back_and_is_block_style() -> None:
    doc: dict[str, Any] = {
        "environment": "lille-dev",
        "phase": "Synced",
        "message": "60 applications in sync",
        "lastAppliedRevision": "0123456789abcdef0123456789abcdef01234567",
        "desiredDigest": None,
        "drifted": 0,
        "ratio": 1.5,
        "selfHeal": True,
        "applications": {"shop": {"desired": "3.10", "live": "3.9", "phase": "Synced", "message": ""}},
        "recent": [{"time": "2026-11-29T00:00:00Z", "to": "3.10"}, {"time": "t2", "to": None}],
        "empty": {},
        "none": [],
        "matrix": [[1, 2], ["a"]],
    }
    text = document.dump(doc).decode()
    assert yaml.safe_load(text) == doc
    assert 'applications:\n  shop:\n    desired: "3.10"\n' in text
    assert 'recent:\n- time: "2026-11-29T00:00:00Z"\n  to: "3.10"\n' in text
    assert document.parse(text.encode()) == doc


def test_an_application_entry_is_one_object_per_content() -> None:
    entry = document.app_entry("1.4.0", "1.4.0", "Synced", "")
    assert entry == {"desired": "1.4.0", "live": "1.4.0", "phase": "Synced", "message": ""}
    assert document.app_entry("1.4.0", "1.4.0", "Synced", "") is entry
    assert document.app_entry("1.4.0", None, "Failed", "boom") == {
        "desired": "1.4.0",
        "live": None,
        "phase": "Failed",
        "message": "boom",
    }
