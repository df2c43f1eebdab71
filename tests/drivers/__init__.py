"""Tests of the target drivers (local, script, ssh) against real files, real processes and a real sshd.

Shared helpers: :func:`make_unit` builds a :class:`DesiredUnit` by hand (with its real fingerprint) and
:func:`wait_until` polls a condition with a deadline (the tests never sleep to synchronise); :class:`Reads`
counts the files the local driver reads.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from reconciler.core.desired import DesiredComponent, DesiredUnit, fingerprint


def artifact(name: str, version: str, kind: str = "cobol") -> dict[str, str]:
    """An artifact descriptor as ``render_unit`` builds it for script targets."""
    file = f"{name.lower()}-{version}.tar.gz"
    return {"name": name, "type": kind, "artifact": file, "checksum": f"sha256:{'ab' * 32}", "version": version}


def make_unit(
    files: Mapping[str, Mapping[str, bytes]] | None = None,
    artifacts: Mapping[str, Mapping[str, str]] | None = None,
    *,
    environment: str = "recette",
    application: str = "shop",
    version: str = "1.0.0",
    target: str = "t1",
    parameters: Mapping[str, Any] | None = None,
) -> DesiredUnit:
    """A unit with template components ``files`` (component -> file -> bytes) and artifact components."""
    comps = [DesiredComponent(name, "local", dict(content)) for name, content in (files or {}).items()]
    for name, art in (artifacts or {}).items():
        descriptor = (json.dumps(dict(art), indent=2, sort_keys=True) + "\n").encode()
        comps.append(DesiredComponent(name, "aix", {"artifact.json": descriptor}, dict(art)))
    components = tuple(comps)
    return DesiredUnit(
        environment, application, version, target, components, dict(parameters or {}), fingerprint(components, version)
    )


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


class Reads:
    """Counts the files the local driver reads (wraps the one function it reads files with)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import reconciler.drivers.local_state as local_state

        self.paths: list[str] = []
        real = local_state.read_with_stamp

        def counting(path: str) -> Any:
            self.paths.append(path)
            return real(path)

        monkeypatch.setattr(local_state, "read_with_stamp", counting)

    def take(self) -> list[str]:
        """The files read since the last call, as ``<component>/<file>``, sorted."""
        taken, self.paths = self.paths, []
        return sorted(os.path.relpath(p, os.path.dirname(os.path.dirname(p))) for p in taken)
