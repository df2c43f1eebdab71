"""``reconciler rollback --env E --app A [--to VERSION] [--repo DIR] [--branch NAME] [--no-push]``.

Git stays the source of truth, so a rollback is a commit, made in the operator's own clone of the releases repo
with their own identity (and their own signature when the stage is protected): it pins the environment's
application to the version it ran before (from the audit trail on the status branch: the stint before the current
one), or to ``--to``. A generated environment gets an entry in its EnvironmentSet's ``spec.overrides``; a declared
Environment a ``spec.pins`` entry. The commit carries a ``Rollback: <env>/<app> <from> -> <to>`` trailer, so the
controller audits the apply as ``rollback``; promotion rules let a version that already ran there come back. The
edit is checked by loading the repo before anything is committed. Then it is pushed to the tracked branch, or with
``--branch`` to a new branch for a pull request. The controller itself never writes the tracked branch. Called by
:mod:`reconciler.cli`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from reconciler.commands.plan import read_history
from reconciler.core.loader import load_repo
from reconciler.core.model import ReleasesRepo
from reconciler.core.problems import ReconcilerError
from reconciler.source.fstree import DirectoryTree
from reconciler.source.history import open_repository


class RollbackError(Exception):
    """Why no rollback commit was made."""


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RollbackError(f"git {args[0]}: {(done.stderr or done.stdout).strip()[-400:]}")
    return done.stdout.strip()


def _load(repo: Path) -> ReleasesRepo:
    result = load_repo(DirectoryTree.scan(repo))
    if result.repo is None:
        first = "; ".join(str(p) for p in result.all_problems()[:3])
        raise RollbackError(f"{repo} is not valid ({first})")
    return result.repo


def previous_version(repo: Path, env: str, app: str, current: str | None) -> str:
    """The version ``app`` ran in ``env`` before the one running now, from the audit trail in ``repo``."""
    try:
        history, ref = read_history(open_repository(str(repo)), None)
    except ReconcilerError as exc:
        raise RollbackError(f"cannot read the audit trail: {exc}") from exc
    if ref is None:
        raise RollbackError("no status branch in this clone (git fetch origin reconciler-status), or give --to")
    stints = history.get((env, app), [])
    earlier = [s.version for s in stints if s.version != (stints[-1].version if stints else current)]
    if not earlier:
        raise RollbackError(f"{app} ran no other version in {env} (audit trail on {ref}): give --to VERSION")
    return earlier[-1]


def pin(path: Path, env: str, app: str, version: str, reason: str, generated: bool) -> None:
    """Add the pin to the file that declares ``env`` (text edit: comments and layout are kept)."""
    text = path.read_text(encoding="utf-8")
    quoted = version.replace('"', "")
    if generated:
        entry = f'    {env}:\n      pins: {{{app}: "{quoted}"}}\n      reason: "{reason.replace(chr(34), "")}"\n'
        if "\n  overrides:\n" in text:
            if f"\n    {env}:\n" in text.split("\n  overrides:\n", 1)[1]:
                raise RollbackError(f"{path.name}: {env} has overrides already: edit them by hand")
            text = text.replace("\n  overrides:\n", "\n  overrides:\n" + entry, 1)
        else:
            text = text.rstrip("\n") + "\n  overrides:\n" + entry
    else:
        if "\n  pins:" in text:
            raise RollbackError(f"{path.name}: {env} has pins already: edit them by hand")
        text = text.rstrip("\n") + f'\n  pins: {{{app}: "{quoted}"}}\n'
    path.write_text(text, encoding="utf-8")


def run_rollback(args: argparse.Namespace) -> int:
    repo = Path(args.repo).resolve()
    try:
        return _rollback(repo, args)
    except RollbackError as exc:
        print(f"reconciler rollback: {exc}", file=sys.stderr)
        return 1


def _rollback(repo: Path, args: argparse.Namespace) -> int:
    if _git(repo, "status", "--porcelain"):
        raise RollbackError(f"{repo} has uncommitted changes: commit or stash them first")
    model = _load(repo)
    env = model.environments.get(args.env)
    if env is None:
        raise RollbackError(f"unknown environment {args.env!r}")
    current = model.desired_versions(env).get(args.app)
    if current is None:
        raise RollbackError(f"{args.app!r} is not deployed in {args.env}")
    target = args.to or previous_version(repo, args.env, args.app, current)
    if target == current:
        raise RollbackError(f"{args.app} {target} is already what {args.env} wants")
    if (args.app, target) not in model.releases:
        raise RollbackError(f"no release {target} of {args.app}")
    stage = model.stages.get(env.stage)
    protected = bool(stage and stage.protected)
    if protected and not _git_config(repo, "user.signingkey"):
        raise RollbackError(f"{env.stage} is protected: the commit must be signed, and git has no user.signingkey")
    path = repo / env.origin.path
    reason = args.reason or f"rollback of {args.app} from {current}"
    if args.branch:
        _git(repo, "checkout", "-q", "-b", args.branch)
    pin(path, args.env, args.app, target, reason, generated=env.generated_by is not None)
    after = load_repo(DirectoryTree.scan(repo))
    wanted = after.repo.desired_versions(after.repo.environments[args.env]).get(args.app) if after.repo else None
    if wanted != target:
        _git(repo, "checkout", "--", str(path))
        first = "; ".join(str(p) for p in after.all_problems()[:3]) or f"{args.env} would still run {wanted}"
        raise RollbackError(f"the pin did not take ({first}); nothing committed")
    message = (f"rollback: {args.app} {current} -> {target} in {args.env}\n\n{reason}\n\n"
               f"Rollback: {args.env}/{args.app} {current} -> {target}\n")  # fmt: skip
    _git(repo, "add", str(path))
    _git(repo, "commit", "-q", *(["-S"] if protected else []), "-m", message)
    sha = _git(repo, "rev-parse", "HEAD")
    if not args.no_push:
        _git(repo, "push", "-q", *(["-u", "origin", args.branch] if args.branch else ["origin", "HEAD"]))
    where = f"branch {args.branch}" if args.branch else "the tracked branch"
    print(f"rollback {args.app} {current} -> {target} in {args.env}: commit {sha[:12]}"
          f"{'' if args.no_push else f', pushed to {where}'}")  # fmt: skip
    return 0


def _git_config(repo: Path, key: str) -> str:
    done = subprocess.run(["git", "config", "--get", key], cwd=repo, capture_output=True, text=True, timeout=30)
    return done.stdout.strip()
