"""Reading history and signatures from Git: which commits changed some paths, and who signed them.

Protected stages need every commit that introduced a change signed by a key the operator allows. This module
lists those commits (``git log old..new -- paths``) and checks each with ``git verify-commit`` itself: SSH
signatures against the operator's allowed-signers file (``gpg.ssh.allowedSignersFile``), OpenPGP signatures
against the operator's keyring (``GNUPGHOME``). Also opens an existing local repository (a checkout or a bare
repo) for ``reconciler plan``. Called by the controller and the ``plan`` command.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from reconciler.core.policy import Signature
from reconciler.core.problems import PermanentError, TemporaryError
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
