"""The package's architecture holds: the import-linter contracts of pyproject.toml (``[tool.importlinter]``) pass.

Layers, lowest first: ``reconciler.core`` (pure: no I/O) <- ``source`` | ``observability`` <- ``drivers`` |
``status`` <- ``engine`` <- ``http`` <- ``commands`` <- ``cli``; drivers and source independent; the read-only
commands without the engine; no import cycles at any depth. ``lint-imports`` runs here (so the suite fails when a
contract breaks) and in ``./dev lint``. The second test proves the checker sees each kind of violation, on a copy
of the package with one bad import per contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACTS = {
    "layers": "Packages import only downwards",
    "drivers-source": "Drivers and the source are independent",
    "read-only-commands": "validate, plan, status and history work without the engine",
    "pure-core": "The core is pure",
    "no-cycles": "No import cycles between sibling packages or modules",
}


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package under ``root`` with the contracts of ``root/pyproject.toml``."""
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "400"}  # the copy, not the installed package
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_import_contracts_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_the_checker_sees_a_violation_of_every_contract(tmp_path: Path) -> None:
    shutil.copytree(REPO / "reconciler", tmp_path / "reconciler", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    pkg = tmp_path / "reconciler"
    # layers: the observability package reaches up into the engine
    _append(pkg / "observability" / "logging.py", "\nfrom reconciler.engine import hooks as _hooks  # noqa\n")
    # independence: a driver reads git
    _append(pkg / "drivers" / "memory.py", "\nfrom reconciler.source import gitrepo as _gitrepo  # noqa\n")
    # forbidden: a read-only command imports the engine
    _append(pkg / "commands" / "status.py", "\nfrom reconciler.engine import controller as _controller  # noqa\n")
    # forbidden: the pure core does I/O
    _append(pkg / "core" / "problems.py", "\nimport subprocess as _subprocess  # noqa\n")
    # a cycle, dodged both ways people dodge one: an import inside a function and one under TYPE_CHECKING
    _append(
        pkg / "status" / "document.py",
        "\n\ndef _store():\n    from reconciler.status import store\n\n    return store\n",
    )
    _append(
        pkg / "status" / "store.py",
        "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from reconciler.status import document  # noqa\n",
    )

    result = lint_imports(tmp_path)

    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert f"Contracts: 0 kept, {len(CONTRACTS)} broken." in out, out
    broken = out[out.index("Broken contracts") :]
    for name in CONTRACTS.values():
        assert name in broken, f"{name!r} not reported broken:\n{out}"
    assert "reconciler.observability.logging -> reconciler.engine.hooks" in broken
    assert "reconciler.drivers.memory -> reconciler.source.gitrepo" in broken
    assert "reconciler.commands.status -> reconciler.engine.controller" in broken
    assert "reconciler.core.problems -> subprocess" in broken
    assert "No cycles are allowed in reconciler.status" in broken
