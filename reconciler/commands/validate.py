"""``reconciler validate [PATH]``: load a releases repo from a directory and report every problem.

Exit 0 with a one-line summary when valid; exit 1 with one ``path:line: message`` line per problem otherwise
(``--format json`` prints one JSON object instead). Called by :mod:`reconciler.cli`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from reconciler.commands.codeowners import stale_codeowners
from reconciler.core.desired import overlay_problems
from reconciler.core.loader import Limits, load_repo
from reconciler.source.fstree import DirectoryTree
from reconciler.source.kustomize import KubectlKustomize


def run_validate(args: argparse.Namespace) -> int:
    root = Path(args.path)
    if not root.is_dir():
        print(f"reconciler validate: {args.path}: not a directory", file=sys.stderr)
        return 1
    started = time.perf_counter()
    tree = DirectoryTree.scan(root)
    result = load_repo(tree, Limits(max_file_size=args.max_file_size, max_repo_size=args.max_repo_size))
    elapsed = time.perf_counter() - started
    problems = result.all_problems()
    if result.repo is not None and not problems:  # Kustomize overlays: rendered once each, as written
        problems = overlay_problems(result.repo, tree.read, KubectlKustomize())
    counts = result.repo.counts() if result.repo else {}
    warnings = [w for w in [stale_codeowners(root, result.repo) if result.repo else None] if w]
    if result.repo is not None and not result.repo.teams and result.repo.applications:
        warnings.append("no Team is declared: application owners are free text and CODEOWNERS cannot be derived")
    if args.format == "json":
        print(
            json.dumps(
                {
                    "valid": not problems,
                    "counts": counts,
                    "files": result.files,
                    "seconds": round(elapsed, 3),
                    "problems": [p.as_dict() for p in problems],
                    "warnings": warnings,
                },
                indent=2,
            )
        )
        return 0 if not problems else 1
    if problems:
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {args.path}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"valid: {counts['applications']} applications, {counts['releases']} releases, "
        f"{counts['environments']} environments, {counts['stages']} stages, "
        f"{counts['freezeWindows']} freeze windows, {counts['teams']} teams "
        f"({result.files} files, {elapsed:.2f}s)"
    )
    return 0
