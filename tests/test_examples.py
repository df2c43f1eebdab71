"""The example CI files for the releases repo are valid YAML and call the public CLI as documented."""

from __future__ import annotations

from pathlib import Path

import yaml

from reconciler.cli import build_parser

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "ci"


def test_ci_files_parse_and_use_existing_commands() -> None:
    files = [EXAMPLES / "github" / "reconciler-plan.yml", EXAMPLES / "gitlab" / ".gitlab-ci.yml"]
    parser = build_parser()
    for path in files:
        data = yaml.safe_load(path.read_text())
        assert isinstance(data, dict)
        text = path.read_text()
        for line in text.splitlines():
            stripped = line.strip().lstrip("- ").removeprefix("set +e; ").replace("${{ github.base_ref }}", "main")
            if stripped.startswith("reconciler "):
                argv = stripped.split(">")[0].split(";")[0].split()[1:]
                argv = [a.strip('"') for a in argv]
                args = parser.parse_args(argv)  # raises SystemExit on an unknown option
                assert args.command in ("validate", "plan")
