"""`reconciler diff` on a running fleet's local and script targets: nothing to show when live equals desired (exit
0), a hand edit shows as a unified diff (exit 1), a Secret's values are digests; a script agent shows what it
reports (``show``), one that does not implement it and an unknown environment are clear errors (exit 2). Nothing
is applied."""

from __future__ import annotations

import json

import pytest

from reconciler.cli import main
from tests.engine import Fleet

ENV = "lille-dev"


def deployed_file(fleet: Fleet) -> object:
    return next(p for p in sorted((fleet.targets / "k8s-nord" / ENV).rglob("*.yaml")))


def test_diff_shows_hand_edits_and_masks_secrets(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet.once() == 0
    capsys.readouterr()
    assert main(["diff", "--config", str(fleet.config), "--env", ENV, "--app", "ref"]) == 0
    assert f"{ENV}: live equals desired" in capsys.readouterr().out
    path = deployed_file(fleet)
    original = path.read_text()  # type: ignore[attr-defined]
    hand = original + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: leaked}\nstringData: {password: hunter2}\n"
    path.write_text(hand)  # type: ignore[attr-defined]
    assert main(["diff", "--config", str(fleet.config), "--env", ENV, "--app", "ref"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("--- live/ref/") and "+++ git/ref/" in out
    assert "hunter2" not in out and "<secret sha256:" in out
    assert path.read_text() == hand  # type: ignore[attr-defined]  # nothing applied
    assert main(["diff", "--config", str(fleet.config), "--env", ENV, "--app", "ref", "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["changed"] is True and {i["application"] for i in report["items"]} == {"ref"}


def test_diff_errors_are_named(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet.once() == 0
    capsys.readouterr()
    assert main(["diff", "--config", str(fleet.config), "--env", "nowhere"]) == 2
    assert "unknown environment 'nowhere'" in capsys.readouterr().err
    old_agent = fleet.root / "old-agent"  # an agent written before `show` existed: argparse refuses the verb
    old_agent.write_text("#!/bin/sh\necho \"usage: agent {apply,observe}: invalid choice: '$1'\" >&2\nexit 2\n")
    old_agent.chmod(0o755)
    fleet.write_config(targetPatterns=[
        {"match": "aix-*", "driver": "script", "command": [str(old_agent)]},
        {"match": "*", "driver": "local", "path": str(fleet.targets / "${target}")},
    ])  # fmt: skip
    assert main(["diff", "--config", str(fleet.config), "--env", ENV, "--app", "famille"]) == 2
    err = capsys.readouterr().err
    assert "script target aix-lille: show refused (exit 2)" in err and "invalid choice" in err, err


def test_diff_on_a_script_target_shows_what_the_agent_reports(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet.once() == 0
    capsys.readouterr()
    assert main(["diff", "--config", str(fleet.config), "--env", ENV, "--app", "famille"]) == 0
    assert f"{ENV}: live equals desired" in capsys.readouterr().out
    installed = next(p for p in (fleet.targets / "aix-lille" / ENV / "famille").rglob("*") if p.is_file()
                     and p.name != "installed.json")  # fmt: skip
    installed.write_text("patched by hand on the host\n")
    assert main(["diff", "--config", str(fleet.config), "--env", ENV, "--app", "famille"]) == 1
    out = capsys.readouterr().out
    assert "-patched by hand on the host" in out and "+version: " in out, out
    assert installed.read_text() == "patched by hand on the host\n"  # nothing applied
