"""The releases repo read from Git: fetch a branch into a local cache and read revisions without a checkout.

The engine calls :meth:`GitSource.fetch` every cycle (and on a webhook), then :meth:`GitSource.tree` for the head,
:meth:`GitSource.commit` for traceability (author, trailers) and :meth:`GitSource.changed_paths` to skip unchanged
environments. :class:`reconciler.status.store.StatusStore` reuses :class:`BareRepo`, :class:`BlobReader` and
:func:`load_tree`. We drive the ``git`` CLI rather than GitPython: one ``ls-tree`` plus one long-running
``cat-file --batch`` reads a whole revision in milliseconds, every call gets a timeout that kills its process group,
and the behaviour (transports, credentials helpers, SSH config) is exactly the operator's ``git``.

Credentials: the remote URL is handed to git through ``GIT_CONFIG_*`` environment variables, so it is neither on a
command line (visible in ``ps``) nor in the cache's config; messages show :func:`redact_url` and :func:`redact` text.
Symlinks are resolved inside the revision (chains up to 40 hops, symlinked directories are followed once, as
:mod:`reconciler.source.fstree` does); links that leave the repo, dangle or loop become problems. Submodules are
skipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

from reconciler.core.problems import PermanentError, Problem, TemporaryError
from reconciler.core.tree import PathEscapes, resolve_symlink

MAX_SYMLINK_HOPS = 40
MAX_LISTED_PATHS = 100_000
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/?#\s'\"]*)@")
_SSH_SCHEMES = ("ssh://", "git+ssh://", "ssh+git://")
# inherited variables that would point git at another repository or prompt; GIT_CONFIG_* go too, except the
# GIT_CONFIG_GLOBAL / _SYSTEM / _NOSYSTEM that choose the operator's config files
_DROPPED_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
                "GIT_NAMESPACE", "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_PREFIX", "GIT_ASKPASS",
                "SSH_ASKPASS")  # fmt: skip
_KEPT_CONFIG_ENV = ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_CONFIG_NOSYSTEM")


def redact_url(url: str) -> str:
    """``url`` without its password or token (``https://user:***@host``); scp-style ``git@host:path`` unchanged."""
    return _URL.sub(_redact_userinfo, url)


def _redact_userinfo(match: re.Match[str]) -> str:
    scheme, user = match["scheme"], match["user"]
    if ":" in user:
        return f"{scheme}{user.split(':', 1)[0]}:***@"
    if scheme.lower() in _SSH_SCHEMES:  # ssh://git@host: a user name, authentication is by key
        return match[0]
    return f"{scheme}***@"  # https://token@host: hosting services take tokens in the user name


def url_secrets(url: str) -> tuple[str, ...]:
    """The secret parts of ``url`` (as written and percent-decoded) for :func:`redact`."""
    found = [m["user"].partition(":")[2] or m["user"] for m in _URL.finditer(url) if redact_url(m[0]) != m[0]]
    return tuple(dict.fromkeys(s for raw in found for s in (raw, unquote(raw)) if s))


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every known secret replaced by ``***`` and every URL's userinfo redacted."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return redact_url(text)


def git_env(config: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every git call: no prompts, C locale, ``config`` passed as ``GIT_CONFIG_*``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _DROPPED_ENV and (k in _KEPT_CONFIG_ENV or not k.startswith("GIT_CONFIG"))
    }
    env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C", LANGUAGE="C", GIT_CONFIG_COUNT=str(len(config)))
    for i, (key, value) in enumerate(config.items()):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    env.update(extra or {})
    return env


def run_git(
    args: Sequence[str], env: Mapping[str, str], timeout: float, stdin: bytes | BinaryIO | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git *args``; on timeout kill its whole process group (helpers, ssh) and raise TemporaryError.

    ``stdin``: bytes to send, or an open file that git reads by itself (large input, no copy in memory)."""
    source: int | BinaryIO = (
        subprocess.PIPE if isinstance(stdin, bytes) else subprocess.DEVNULL if stdin is None else stdin
    )
    proc = subprocess.Popen(
        ["git", *args],
        stdin=source,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(stdin if isinstance(stdin, bytes) else None, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise TemporaryError(f"git {args[0]} timed out after {timeout:g}s") from None
    except BaseException:
        _kill(proc)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # a grandchild escaped the group and holds a pipe: stop waiting for it
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()


class BareRepo:
    """A bare repository at ``path`` (created on first use) whose ``origin`` is ``url``; runs git in it."""

    def __init__(self, path: Path, url: str, timeout: float) -> None:
        self.path, self.timeout = path, timeout
        self.display_url = redact_url(url)
        self.secrets = url_secrets(url)
        config = {"remote.origin.url": url, "gc.autoDetach": "false", "core.hooksPath": os.devnull}
        self.env = git_env(config, {"GIT_DIR": str(path)})
        self._init_lock = threading.Lock()

    def ensure(self) -> None:
        with self._init_lock:
            if (self.path / "HEAD").is_file():
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            env = {k: v for k, v in self.env.items() if k != "GIT_DIR"}
            done = run_git(["init", "--bare", "--quiet", str(self.path)], env, self.timeout)
            if done.returncode:
                raise PermanentError(f"cannot create the git cache {self.path}: {self.tail(done)}")

    def run(
        self, *args: str, stdin: bytes | BinaryIO | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return run_git(args, {**self.env, **(env or {})}, self.timeout, stdin)

    def tail(self, done: subprocess.CompletedProcess[bytes], lines: int = 3) -> str:
        """The last lines of git's stderr, secrets redacted, for an error message."""
        text = [line.strip() for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        return redact(" | ".join(text[-lines:]), self.secrets)[-600:] or "no output"

    def fetch(self, branch: str) -> str | None:
        """Fetch ``branch`` into ``refs/remotes/origin/<branch>``; its sha, or None when the remote lacks it."""
        check_branch_name(branch)
        self.ensure()
        ref = f"refs/remotes/origin/{branch}"
        done = self.run("fetch", "--prune", "--no-tags", "--no-write-fetch-head", "--quiet", "origin",
                        f"+refs/heads/{branch}:{ref}")  # fmt: skip
        if done.returncode:
            if b"couldn't find remote ref" in done.stderr:
                self.run("update-ref", "-d", ref)
                return None
            raise TemporaryError(f"cannot fetch {self.display_url} (branch {branch}): {self.tail(done)}")
        return self.loose_ref(ref) or self.resolve(ref)

    def loose_ref(self, ref: str) -> str | None:
        """The object id in ``ref``'s file, when the ref is stored loose (as ``git fetch`` leaves what it updated):
        a file read instead of a ``git rev-parse`` process on every poll. None when it is packed (or not a plain
        object id): then ask git."""
        try:
            text = (self.path / ref).read_bytes().decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if _OBJECT_ID.fullmatch(text) else None

    def resolve(self, revision: str) -> str | None:
        """The commit sha ``revision`` names in this repo, or None when unknown."""
        if not revision or revision.startswith("-") or "\n" in revision:
            return None
        done = self.run("rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}")
        return done.stdout.decode().strip() if done.returncode == 0 else None


_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def check_branch_name(branch: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._/-]+", branch) or branch.startswith(("-", "/")) or ".." in branch:
        raise PermanentError(f"invalid branch name {branch!r}")


class BlobReader:
    """One long-running ``git cat-file --batch`` shared by every thread; a lock serialises request/response."""

    def __init__(self, repo: BareRepo) -> None:
        self._repo = repo
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False

    def read(self, name: str) -> bytes | None:
        """The blob ``name`` (an object id or ``rev:path``) names, or None if it is missing or not a blob."""
        if "\n" in name or "\r" in name:
            raise ValueError(f"invalid object name {name!r}")
        with self._lock:
            for attempt in (1, 2):
                if self._closed:
                    raise ValueError("the git source is closed")
                if self._proc is None:
                    self._proc = subprocess.Popen(
                        ["git", "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL, env=self._repo.env, start_new_session=True,
                    )  # fmt: skip
                try:
                    return self._request(self._proc, name.encode())
                except (OSError, EOFError, ValueError):
                    self._stop()
                    if attempt == 2:
                        raise TemporaryError("git cat-file stopped unexpectedly") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _request(proc: subprocess.Popen[bytes], name: bytes) -> bytes | None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(name + b"\n")
        proc.stdin.flush()
        header = proc.stdout.readline()
        if not header.endswith(b"\n"):
            raise EOFError
        fields = header.split()
        if len(fields) != 3:  # "<name> missing" / "<name> ambiguous"
            return None
        size = int(fields[2])
        data = proc.stdout.read(size + 1)
        if len(data) != size + 1:
            raise EOFError
        return data[:-1] if fields[1] == b"blob" else None

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _kill(proc)  # an idle cat-file holds no state worth a graceful exit

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop()


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author_name: str
    author_email: str
    authored_at: datetime
    committer_name: str
    committer_email: str
    committed_at: datetime
    subject: str
    parents: tuple[str, ...]
    trailers: dict[str, str]  # repeated keys: values joined with ", " (every value in order: trailer_items)
    trailer_items: tuple[tuple[str, str], ...] = ()
    message: str = ""


_COMMIT_FORMAT = "%x00".join(["%H", "%an", "%ae", "%aI", "%cn", "%ce", "%cI", "%P", "%s",
                              "%(trailers:only,unfold)", "%B"])  # fmt: skip


class GitSource:
    """The tracked branch of the releases repo, fetched into ``cache_dir/source.git``. Thread-safe."""

    def __init__(
        self, url: str, branch: str, cache_dir: Path, timeout: float = 60.0, *, git_dir: Path | None = None
    ) -> None:
        """``git_dir`` opens an existing repository in place instead (read-only use: no fetch)."""
        if git_dir is None:
            check_branch_name(branch)
        self.branch = branch
        self.repo = BareRepo(git_dir or Path(cache_dir) / "source.git", url, timeout)
        self.display_url = self.repo.display_url if git_dir is None else str(git_dir)
        self._blobs = BlobReader(self.repo)
        self._fetch_lock = threading.Lock()

    def fetch(self) -> str:
        """Fetch the branch and return its head sha (re-resolved every time, so force-pushes are followed)."""
        with self._fetch_lock:
            head = self.repo.fetch(self.branch)
        if head is None:
            raise PermanentError(f"branch {self.branch!r} does not exist in {self.display_url}")
        return head

    def _commit_sha(self, revision: str) -> str:
        self.repo.ensure()
        sha = self.repo.resolve(revision)
        if sha is None:
            raise PermanentError(f"unknown revision {revision!r} in {self.display_url}")
        return sha

    def tree(self, revision: str) -> GitTree:
        return load_tree(self.repo, self._blobs, self._commit_sha(revision))

    def commit(self, revision: str) -> CommitInfo:
        sha = self._commit_sha(revision)
        done = self.repo.run("-c", "log.showSignature=false", "log", "-1", f"--format={_COMMIT_FORMAT}", sha, "--")
        if done.returncode:
            raise TemporaryError(f"cannot read commit {sha}: {self.repo.tail(done)}")
        f = done.stdout.decode("utf-8", "replace").split("\x00", 10)
        items = tuple(
            (key.strip(), value.strip())
            for key, sep, value in (line.partition(":") for line in f[9].splitlines())
            if sep and key.strip()
        )
        trailers: dict[str, str] = {}
        for key, value in items:
            trailers[key] = f"{trailers[key]}, {value}" if key in trailers else value
        return CommitInfo(
            sha=f[0], author_name=f[1], author_email=f[2], authored_at=datetime.fromisoformat(f[3]),
            committer_name=f[4], committer_email=f[5], committed_at=datetime.fromisoformat(f[6]), subject=f[8],
            parents=tuple(f[7].split()), trailers=trailers, trailer_items=items, message=f[10].rstrip("\n"),
        )  # fmt: skip

    def changed_paths(self, old: str, new: str) -> set[str] | None:
        """Paths that differ between two revisions (a rename is its two paths); None if ``old`` is unknown."""
        self.repo.ensure()
        old_sha = self.repo.resolve(old)
        if old_sha is None:
            return None
        new_sha = self._commit_sha(new)
        done = self.repo.run("diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", old_sha, new_sha, "--")
        if done.returncode:
            raise TemporaryError(f"cannot diff {old_sha}..{new_sha}: {self.repo.tail(done)}")
        return {p.decode("utf-8", "replace") for p in done.stdout.split(b"\x00") if p}

    def is_ancestor(self, a: str, b: str) -> bool:
        """True if ``a`` is ``b`` or an ancestor of it; False as well when either is unknown here."""
        self.repo.ensure()
        a_sha, b_sha = self.repo.resolve(a), self.repo.resolve(b)
        if a_sha is None or b_sha is None:
            return False
        return self.repo.run("merge-base", "--is-ancestor", a_sha, b_sha).returncode == 0

    def close(self) -> None:
        self._blobs.close()

    def __enter__(self) -> GitSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Entry:
    mode: str
    oid: str
    size: int


_LINK = "120000"


@dataclass(eq=False)
class GitTree:
    """One revision's files (a :class:`~reconciler.core.tree.SourceTree`); contents are read on demand."""

    revision: str | None
    _blobs: BlobReader
    _files: dict[str, _Entry]
    problems: list[Problem] = field(default_factory=list)

    def paths(self) -> Iterable[str]:
        return self._files.keys()

    def size(self, path: str) -> int:
        return self._files[path].size

    def digest(self, path: str) -> str:
        return self._files[path].oid

    def read(self, path: str) -> bytes:
        entry = self._files[path]
        data = self._blobs.read(entry.oid)
        if data is None:
            raise TemporaryError(f"object {entry.oid} of {path} is missing from the git cache")
        return data

    def __contains__(self, path: object) -> bool:
        return path in self._files


def load_tree(repo: BareRepo, blobs: BlobReader, sha: str, paths: Sequence[str] = ()) -> GitTree:
    """The tree of commit ``sha`` from one ``git ls-tree``; symlinks resolved, submodules skipped.

    ``paths``: only the files at or under these paths (the whole tree when empty)."""
    done = repo.run("ls-tree", "-r", "-z", "--full-tree", "-l", sha, *(("--", *paths) if paths else ()))
    if done.returncode:
        raise TemporaryError(f"cannot list {sha}: {repo.tail(done)}")
    entries: dict[str, _Entry] = {}
    for record in done.stdout.split(b"\x00"):
        meta, _, raw_path = record.partition(b"\t")
        fields = meta.split()
        if len(fields) == 4 and fields[1] == b"blob":  # commits are submodules: skipped
            entries[raw_path.decode("utf-8", "replace")] = _Entry(fields[0].decode(), fields[2].decode(),
                                                                   int(fields[3]))  # fmt: skip
    tree = GitTree(sha, blobs, {p: e for p, e in entries.items() if e.mode != _LINK})
    _Links(entries, blobs, tree).resolve_all()
    return tree


class _LinkError(Exception):
    pass


class _Links:
    """Symlink resolution over the entries of one tree, like a kernel path walk but inside the repo only."""

    def __init__(self, entries: dict[str, _Entry], blobs: BlobReader, tree: GitTree) -> None:
        self.entries, self.blobs, self.tree = entries, blobs, tree
        self.dirs = {p.rsplit("/", i)[0] for p in entries for i in range(1, p.count("/") + 1)} | {""}
        self.work = len(tree._files)  # paths listed + links followed: bounds pathological link graphs

    def resolve_all(self) -> None:
        for path, entry in list(self.entries.items()):
            if entry.mode == _LINK:
                self._link(path, path, _ancestors(path))

    def _link(self, alias: str, real: str, seen: frozenset[str]) -> None:
        self._spend()
        try:
            target = self._walk(real)
        except PathEscapes:
            self.tree.problems.append(Problem(alias, None, "symlink points outside the repository"))
            return
        except _LinkError as exc:
            self.tree.problems.append(Problem(alias, None, str(exc)))
            return
        if target in self.entries:
            self._add(alias, self.entries[target])
        elif target not in self.dirs:
            self.tree.problems.append(Problem(alias, None, "dangling symlink"))
        elif target in seen:  # a link to a directory that contains it
            self.tree.problems.append(Problem(alias, None, "symlink loop"))
        else:
            prefix = f"{target}/" if target else ""
            for child, entry in list(self.entries.items()):
                if child.startswith(prefix):
                    sub = f"{alias}/{child[len(prefix) :]}"
                    if entry.mode == _LINK:
                        self._link(sub, child, seen | _ancestors(child))
                    else:
                        self._add(sub, entry)

    def _add(self, path: str, entry: _Entry) -> None:
        self._spend()
        self.tree._files[path] = entry

    def _spend(self) -> None:
        self.work += 1
        if self.work > MAX_LISTED_PATHS:
            raise PermanentError(f"more than {MAX_LISTED_PATHS} paths or links through symlinked directories")

    def _walk(self, path: str) -> str:
        """The real path (a file or directory, maybe absent) that ``path`` names after following every link."""
        parts, done, hops = path.split("/"), "", 0
        while parts:
            cur = f"{done}/{parts[0]}" if done else parts[0]
            parts = parts[1:]
            entry = self.entries.get(cur)
            if entry is None or entry.mode != _LINK:
                done = cur
                continue
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise _LinkError("symlink loop")
            raw = self.blobs.read(entry.oid)
            if not raw:
                raise _LinkError("dangling symlink")
            target = resolve_symlink(cur, raw.decode("utf-8", "replace"))
            parts, done = ([] if target == "." else target.split("/")) + parts, ""
        return done


def _ancestors(path: str) -> frozenset[str]:
    return frozenset(path.rsplit("/", i)[0] for i in range(1, path.count("/") + 1)) | {""}
