"""The project as people install it (issue 18): a distribution name of its own, pinned wherever we tell someone to
install it, and a wheel that carries what its commands need: built with ``python -m build``, checked by
``twine check``, installed into a fresh virtual environment with no access to the checkout, where ``validate``
reads the packaged example and ``demo --once`` reconciles its 235 environments."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from tests.commands.test_demo import check_fleet

PROJECT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((PROJECT / "pyproject.toml").read_text())
NAME, VERSION = PYPROJECT["project"]["name"], PYPROJECT["project"]["version"]
INSTALL = re.compile(r"pip3?\s+install\b([^\n`]*)")


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=PROJECT, capture_output=True, text=True, check=True).stdout
    paths = [PROJECT / n for n in names.splitlines() if not n.startswith(("tests/", "bench/results"))]
    return [p for p in paths if p.is_file() and p.suffix not in (".png", ".whl", ".gz")]


def test_our_distribution_name_is_ours_and_the_command_stays() -> None:
    assert NAME == "release-reconciler"  # "reconciler" on PyPI is an unrelated pandas utility
    assert PYPROJECT["project"]["scripts"] == {"reconciler": "reconciler.cli:main"}


def test_nothing_tells_anyone_to_install_an_unpinned_or_foreign_reconciler() -> None:
    found: list[str] = []
    for path in _tracked_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for match in INSTALL.finditer(text):
            words = [w.strip("'\"") for w in match.group(1).split() if not w.startswith("-")]
            for word in words:
                bare = re.split(r"[=<>!~\[@ ]", word, maxsplit=1)[0]
                if bare == "reconciler" or (bare == NAME and f"{NAME}=={VERSION}" not in word):
                    found.append(f"{path.relative_to(PROJECT)}: {match.group(0).strip()}")
    assert found == []
    for ci in ("examples/ci/github/reconciler-plan.yml", "examples/ci/gitlab/.gitlab-ci.yml"):
        assert f'"{NAME}=={VERSION}"' in (PROJECT / ci).read_text(), ci


@pytest.mark.slow
def test_the_built_wheel_installs_and_runs_the_demo_without_the_checkout(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(PROJECT)],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheels = sorted(dist.glob("release_reconciler-*.whl"))
    assert len(wheels) == 1 and len(sorted(dist.glob("release_reconciler-*.tar.gz"))) == 1
    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    clean["PATH"] = f"{bin_dir}:{clean.get('PATH', '')}"
    install = subprocess.run([str(bin_dir / "pip"), "install", "-q", "--disable-pip-version-check", str(wheels[0])],
                             capture_output=True, text=True, timeout=900, env=clean, cwd=tmp_path)  # fmt: skip
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run([str(bin_dir / "python"), "-c", "import reconciler, sys; print(reconciler.__file__)"],
                           capture_output=True, text=True, env=clean, cwd=empty, timeout=60)  # fmt: skip
    assert str(env_dir) in where.stdout and str(PROJECT) not in where.stdout, where.stdout + where.stderr
    packaged = Path(where.stdout.strip()).parent / "bundled" / "releases-repo"
    assert packaged.is_dir() and not packaged.is_symlink()
    valid = subprocess.run([str(bin_dir / "reconciler"), "validate", str(packaged)],
                           capture_output=True, text=True, env=clean, cwd=empty, timeout=300)  # fmt: skip
    assert valid.returncode == 0 and "235 environments" in valid.stdout, valid.stdout + valid.stderr
    state = empty / "demo"
    demo = subprocess.run([str(bin_dir / "reconciler"), "demo", "--once", "--state-dir", str(state)],
                          capture_output=True, text=True, env=clean, cwd=empty, timeout=900)  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    check_fleet(state)
