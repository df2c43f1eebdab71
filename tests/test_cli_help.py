"""``--help`` tells a newcomer what every command and option does (issue 18): each subcommand has a description,
each option a help text, defaults are shown, and no help points into the source tree."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from reconciler.cli import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_and_option_is_described() -> None:
    missing: list[str] = []
    for name, sub in _subcommands().items():
        if not sub.description:
            missing.append(f"{name}: no description")
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = action.help or ""
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not text.strip():
                missing.append(f"{where}: no help")
            if re.search(r"\.py\b|reconciler/", text):
                missing.append(f"{where}: points into the source: {text}")
    assert missing == []


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_help_shows_defaults_and_exits_0(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: reconciler {name}")
    sub = _subcommands()[name]
    shown = [a for a in sub._actions if a.option_strings and a.default not in (None, False, argparse.SUPPRESS)
             and not isinstance(a, argparse._HelpAction)]  # fmt: skip
    options = out[out.index("options:") :]
    for action in shown:
        flag = action.option_strings[-1]
        start = re.search(rf"^\s+(?:-\w, )?{re.escape(flag)}\b", options, re.MULTILINE)
        assert start is not None, (name, flag)
        rest = options[start.end() :]
        following = re.search(r"^\s{2}-", rest, re.MULTILINE)
        text = rest[: following.start() if following else len(rest)]
        assert "default" in text, (name, flag, text)


def test_errors_are_prefixed_by_their_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert capsys.readouterr().err.startswith("reconciler status: ")
    assert main(["validate", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.startswith("reconciler validate: ")
    assert main(["plan", "--live"]) == 1
    assert capsys.readouterr().err.startswith("reconciler plan: --live needs --config")
