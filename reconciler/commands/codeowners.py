"""``reconciler codeowners [PATH]``: write the CODEOWNERS file that the releases repo's Teams imply.

Prints it (``--syntax github|gitlab``), or writes it with ``--write [FILE]`` (default: where the repo already has
one, else ``.github/CODEOWNERS``), or with ``--check`` exits 1 when the committed file differs. The ownership
rules are :mod:`reconciler.core.codeowners`'; :func:`stale_codeowners` is also ``validate``'s warning. Called by
:mod:`reconciler.cli`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reconciler.core.codeowners import LOCATIONS, Syntax, codeowners
from reconciler.core.loader import Limits, load_repo
from reconciler.core.model import ReleasesRepo
from reconciler.source.fstree import DirectoryTree


def committed(root: Path) -> Path | None:
    """The CODEOWNERS file the forge would read in ``root``, if any."""
    return next((root / p for p in LOCATIONS if (root / p).is_file()), None)


def stale_codeowners(root: Path, repo: ReleasesRepo) -> str | None:
    """A warning when ``root`` has a CODEOWNERS that is not what the Teams imply (in either syntax), else None."""
    found = committed(root)
    if found is None or not repo.teams:
        return None
    text = found.read_text(encoding="utf-8", errors="replace")
    if text in (codeowners(repo, Syntax.GITHUB), codeowners(repo, Syntax.GITLAB)):
        return None
    where = found.relative_to(root)
    return f"{where}: stale: it is not what the Teams and Applications imply (run `reconciler codeowners --write`)"


def run_codeowners(args: argparse.Namespace) -> int:
    root = Path(args.path)
    if not root.is_dir():
        print(f"reconciler codeowners: {args.path}: not a directory", file=sys.stderr)
        return 1
    result = load_repo(DirectoryTree.scan(root), Limits())
    if result.repo is None:
        for problem in result.all_problems():
            print(problem, file=sys.stderr)
        print(f"reconciler codeowners: {args.path}: not valid: fix it first (reconciler validate)", file=sys.stderr)
        return 1
    if not result.repo.teams:
        print(f"reconciler codeowners: {args.path}: no Team is declared: nothing to own", file=sys.stderr)
        return 1
    text = codeowners(result.repo, Syntax(args.syntax))
    if args.check:
        warning = stale_codeowners(root, result.repo)
        if committed(root) is None:
            warning = "no CODEOWNERS file (looked for " + ", ".join(LOCATIONS) + ")"
        if warning:
            print(warning, file=sys.stderr)
            return 1
        return 0
    if args.write is None:
        sys.stdout.write(text)
        return 0
    target = root / args.write if args.write else (committed(root) or root / LOCATIONS[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}", file=sys.stderr)
    return 0
