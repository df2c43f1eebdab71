"""The digests the kubernetes driver keeps per applied object (:mod:`reconciler.drivers.k8s_objects`). Inventories
written by earlier versions hold them, so their values must never change: these are pinned, for live objects as a
real API server answered a server-side apply. Pure: no API server."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.drivers.k8s_objects import digests, fields_digest, state_digest

OBJECTS = json.loads((Path(__file__).parent / "objects" / "live-objects.json").read_text())
# (object, field manager) -> (fields digest, state digest), as computed by the version that first wrote inventories
PINNED = {
    ("deployment", "reconciler"): ("63567222c275c15979d78c0aaa2763ce", "496f3e6e154a64069114859fb6792d73"),
    ("deployment", "kubectl-edit"): ("4f53cda18c2baa0c0354bb5f9a3ecbe5", ""),  # owns nothing: no state
    ("configmap-two-managers", "reconciler"): ("fe4db70761baae10cdb577ebf36cb880", "b4c7a77e2911293282b820ac662c5b46"),
    ("configmap-two-managers", "kubectl-edit"): ("4f53cda18c2baa0c0354bb5f9a3ecbe5", ""),  # an Update: not applied
}


@pytest.mark.parametrize(("name", "manager"), list(PINNED))
def test_digests_of_live_objects_are_what_inventories_hold(name: str, manager: str) -> None:
    obj = OBJECTS[name]
    assert digests(obj, manager) == PINNED[(name, manager)]
    assert (fields_digest(obj, manager), state_digest(obj, manager)) == PINNED[(name, manager)]


def edited(obj: dict[str, Any], change: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    change(out)
    return out


def test_the_same_fields_with_other_values_have_another_state() -> None:
    """The compact form of a set of managed fields is kept per set: another object with the same set (another
    environment's) and other values still gets its own state digest, and the same fields digest."""
    base = OBJECTS["deployment"]
    other = edited(base, lambda o: o["spec"].update(replicas=7))
    status = edited(base, lambda o: o.setdefault("status", {}).update(replicas=7))  # not a field we own
    first, second, third = digests(base, "reconciler"), digests(other, "reconciler"), digests(status, "reconciler")
    assert first[0] == second[0] == third[0]
    assert first[1] != second[1] and third == first
    assert digests(base, "reconciler") == first  # from the kept compact form
