"""Reading history and signatures from Git: which commits changed some paths, and who signed them.

Protected stages need every commit that introduced a change signed by a key the operator allows. This module
lists those commits (``git log old..new -- paths``) and checks each with ``git verify-commit`` itself: SSH
signatures against the operator's allowed-signers file (``gpg.ssh.allowedSignersFile``), OpenPGP signatures
against the operator's keyring (``GNUPGHOME``). Also opens an existing local repository (a checkout or a bare
repo) for ``reconciler plan``. Called by the controller and the ``plan`` command.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from reconciler.core.model import ReleasesRepo, Stage
from reconciler.core.policy import Signature
from reconciler.core.problems import PermanentError, TemporaryError
from reconciler.core.yamlsafe import parse_file
from reconciler.source.gitrepo import BareRepo, GitSource


def open_repository(path: str | os.PathLike[str], timeout: float = 60.0) -> GitSource:
    """A :class:`GitSource` over an existing repository on disk (no fetch, no cache)."""
    root = Path(path).resolve()
    git_dir = root / ".git" if (root / ".git").exists() else root
    if not (git_dir / "HEAD").is_file():
        raise PermanentError(f"{path}: not a git repository")
    return GitSource("", "", root, timeout, git_dir=git_dir)


def commits_touching(source: GitSource, old: str | None, new: str, paths: tuple[str, ...]) -> list[str]:
    """The commit of the tracked branch that last changed any of ``paths`` in ``old..new`` (or up to ``new``).

    First-parent history: with a merge workflow that is the (signed) merge commit, not the commits of the
    merged branch. Its signer attests the content of those paths as they are at ``new``.
    """
    return list(_commits_touching(source.repo, old, new, paths))


@lru_cache(maxsize=4096)
def _commits_touching(repo: BareRepo, old: str | None, new: str, paths: tuple[str, ...]) -> tuple[str, ...]:
    if old is not None and repo.resolve(old) is None:
        old = None  # history was rewritten: judge by the newest commit
    span = [f"{old}..{new}"] if old else [new]
    done = repo.run("log", "-1", "--first-parent", "--format=%H", "--no-show-signature", *span, "--", *paths)
    if done.returncode:
        raise TemporaryError(f"cannot list the commits of {new[:12]}: {repo.tail(done)}")
    return tuple(line for line in done.stdout.decode().split() if line)


MAX_CHANGES = 200  # commits per application and span looked at by the ownership rule (the newest ones)


def commits_changing(source: GitSource, old: str | None, new: str, paths: tuple[str, ...]) -> list[str]:
    """Every first-parent commit in ``old..new`` that changed any of ``paths``, newest first (at most
    :data:`MAX_CHANGES`); with no ``old`` (a first apply, or rewritten history) only the newest one."""
    if not paths:
        return []
    return list(_commits_changing(source.repo, old, new, paths))


@lru_cache(maxsize=4096)
def _commits_changing(repo: BareRepo, old: str | None, new: str, paths: tuple[str, ...]) -> tuple[str, ...]:
    if old is not None and repo.resolve(old) is None:
        old = None
    span = [f"{old}..{new}"] if old else [new]
    count = str(MAX_CHANGES) if old else "1"
    done = repo.run("log", f"-{count}", "--first-parent", "--format=%H", "--no-show-signature", *span, "--", *paths)
    if done.returncode:
        raise TemporaryError(f"cannot list the commits of {new[:12]}: {repo.tail(done)}")
    return tuple(line for line in done.stdout.decode().split() if line)


def changed_rows(source: GitSource, sha: str, path: str) -> frozenset[str]:
    """The applications whose row (``spec.releases.<app>``) in the stage file ``path`` commit ``sha`` changed,
    added or removed, compared with its first parent (every row when the file is new or unreadable)."""
    return _changed_rows(source.repo, sha, path)


def _releases(repo: BareRepo, revision: str, path: str) -> dict[str, str] | None:
    done = repo.run("show", f"{revision}:{path}")
    if done.returncode:
        return None
    docs, problems = parse_file(path, done.stdout)  # bounded: an old revision was never validated
    doc = docs[0].data if docs and not problems else None
    spec = doc.get("spec") if isinstance(doc, dict) else None
    releases = spec.get("releases") if isinstance(spec, dict) else None
    return {str(k): str(v) for k, v in releases.items()} if isinstance(releases, dict) else None


@lru_cache(maxsize=4096)
def _changed_rows(repo: BareRepo, sha: str, path: str) -> frozenset[str]:
    after = _releases(repo, sha, path) or {}
    before = _releases(repo, f"{sha}^1", path)
    if before is None:
        return frozenset(after)
    return frozenset(a for a in set(before) | set(after) if before.get(a) != after.get(a))


def application_changes(
    source: GitSource,
    repo: ReleasesRepo,
    stage: Stage,
    application: str,
    version: str,
    since: str | None,
    head: str,
    allowed_signers: str | None,
) -> tuple[Signature, ...]:
    """The first-parent commits in ``since..head`` that changed ``application`` at ``head`` (its directory, its
    release file, its row in ``stage``'s file), newest first, verified, with their authors: what the ownership rule
    of :func:`reconciler.core.policy.ownership_hold` reads, at apply time and in ``plan``."""
    app = repo.applications.get(application)
    release = repo.releases.get((application, version))
    paths = {posixpath.dirname(app.origin.path) or app.origin.path} if app is not None else set()
    if release is not None:
        paths.add(release.origin.path)
    own = set(commits_changing(source, since, head, tuple(sorted(paths))))
    every = commits_changing(source, since, head, tuple(sorted(paths | {stage.origin.path})))
    commits = [c for c in every if c in own or application in changed_rows(source, c, stage.origin.path)]
    return tuple(replace(verify_signature(source, c, allowed_signers), authors=change_authors(source, c))
                 for c in commits)  # fmt: skip


def change_authors(source: GitSource, sha: str) -> tuple[str, ...]:
    """The e-mail addresses (lower case, sorted) of the authors of what ``sha`` brought to the first-parent history:
    its own author and, for a merge, the authors of the commits it merged."""
    return _change_authors(source.repo, sha)


@lru_cache(maxsize=4096)
def _change_authors(repo: BareRepo, sha: str) -> tuple[str, ...]:
    done = repo.run("log", "-1", "--format=%P", sha)
    if done.returncode:
        raise TemporaryError(f"cannot read commit {sha[:12]}: {repo.tail(done)}")
    parents = done.stdout.decode().split()
    span = [sha, "--not", parents[0]] if parents else [sha]
    done = repo.run("log", "--format=%ae", "--no-show-signature", *span)
    if done.returncode:
        raise TemporaryError(f"cannot list the authors of {sha[:12]}: {repo.tail(done)}")
    return tuple(sorted({line.strip().lower() for line in done.stdout.decode().splitlines() if line.strip()}))


def verify_signature(
    source: GitSource, sha: str, allowed_signers: str | None, gpg_home: str | None = None
) -> Signature:
    """Whether ``sha`` carries a good signature by an allowed key; never raises for a bad or missing one."""
    return _verify(source.repo, sha, allowed_signers, gpg_home)


@lru_cache(maxsize=4096)
def _verify(repo: BareRepo, sha: str, allowed_signers: str | None, gpg_home: str | None) -> Signature:
    if not allowed_signers and not gpg_home:
        return Signature(sha, False, detail="no allowed signers are configured")
    config = ["-c", f"gpg.ssh.allowedSignersFile={allowed_signers or os.devnull}"]
    env = {"GNUPGHOME": gpg_home} if gpg_home else {}
    done = repo.run(*config, "log", "-1", "--format=%G?%x00%GS%x00%GK", sha, env=env)
    if done.returncode:
        return Signature(sha, False, detail="cannot read the commit")
    status, signer, key = [*done.stdout.decode("utf-8", "replace").strip().split("\x00"), "", ""][:3]
    if status == "G":
        return Signature(sha, True, signer=signer or key)
    reasons = {
        "N": "unsigned",
        "B": "bad signature",
        "U": "signed by an unknown key",
        "X": "expired signature",
        "Y": "signed by an expired key",
        "R": "signed by a revoked key",
        "E": "signed by a key that is not allowed",
    }
    return Signature(sha, False, signer=signer, detail=reasons.get(status, f"signature status {status!r}"))
