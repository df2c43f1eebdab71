"""The pure core stays pure, and packages import only downwards.

Layers, lowest first: ``reconciler.core`` (models, loading, validation, rendering, planning: no I/O) <- effects
(``source``, ``drivers``, ``status`` ...) <- ``engine`` <- ``commands``/``cli``/``http``. A module may import
only from its own layer or lower ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "reconciler"

# modules the pure core must never import (I/O, processes, network, clocks of the host are passed in)
CORE_FORBIDDEN = {
    "git",
    "kubernetes",
    "prometheus_client",
    "structlog",
    "socket",
    "subprocess",
    "http",
    "urllib",
    "requests",
    "os",
    "shutil",
    "threading",
    "asyncio",
    "multiprocessing",
    "signal",
    "select",
    "selectors",
    "ssl",
    "tempfile",
    "pathlib",
    "io",
    "time",
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_core_imports_no_io() -> None:
    offenders = []
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in CORE_FORBIDDEN or (top == "reconciler" and not name.startswith("reconciler.core")):
                offenders.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_the_checker_sees_imports() -> None:
    # guard against a checker that passes because it finds nothing
    assert "yaml" in imports_of(PACKAGE / "core" / "yamlsafe.py")
    assert "reconciler.core.problems" in imports_of(PACKAGE / "core" / "loader.py")


LAYER = {
    "core": 0,
    "schemas": 0,
    "source": 1,
    "drivers": 1,
    "status": 1,
    "observability": 1,
    "engine": 2,
    "http": 3,
    "commands": 4,
    "cli": 4,
    "__main__": 5,
    "demo": 4,
}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "reconciler" or len(parts) < 2:
        return None
    return LAYER.get(parts[1])


def test_packages_import_downwards_only() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        own = _layer(module)
        if own is None:
            continue
        for name in imports_of(path):
            other = _layer(name)
            if other is not None and other > own:
                offenders.append(f"{module} (layer {own}) imports {name} (layer {other})")
    assert not offenders, "\n".join(offenders)
