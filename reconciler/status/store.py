"""The status branch: environment status files and the audit trail, committed back to the releases repo's remote.

The engine writes one commit per cycle with :meth:`StatusStore.write` (``environments/<env>.yaml`` replaced,
``audit/*.jsonl`` lines appended); ``reconciler status`` and ``reconciler history`` read it with :meth:`read` and
:meth:`audit_lines`. The branch lives in the same remote as the tracked branch but is never the tracked branch, and
it is only ever fast-forwarded (invariant 4): when someone else pushed in between, we fetch, rebuild our change on
their head (appends land after their lines, their files survive) and push again. No working tree and no index: each
commit is built by one ``git fast-import`` in the bare repo ``cache_dir/status.git``, which reads only the trees
on the changed paths, so a write costs the same however long the audit trail has grown. This module moves bytes;
callers produce the YAML/JSON (the engine writes each cycle's audit entries as new files, never rewriting old ones).
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from reconciler.core.problems import PermanentError, TemporaryError
from reconciler.core.tree import blob_id
from reconciler.source.gitrepo import BareRepo, BlobReader, check_branch_name, load_tree

DEFAULT_BRANCH = "reconciler-status"
GC_EVERY = 50  # status commits between two ``git gc --auto`` of the cache
_BUILD_REF = b"refs/reconciler/status-build"  # where fast-import leaves the commit it built (the cache only)
log = logging.getLogger(__name__)


@runtime_checkable
class AuditTrail(Protocol):
    """A store that can read back its audit trail (the controller learns from it at start-up what ran where since
    when, for promotion soak)."""

    def audit_lines(self, prefix: str = "audit/") -> Iterator[dict[str, Any]]:
        """Every audit entry under ``prefix``, oldest first."""
        ...


@dataclass(frozen=True)
class StatusSnapshot:
    """The status branch at ``head`` (None: the branch does not exist yet): ``environments/*.yaml`` -> bytes."""

    head: str | None
    files: dict[str, bytes]


def _short(ref: str) -> str:
    return ref.removeprefix("refs/heads/")


class StatusStore(AuditTrail):
    """Reads and fast-forwards the status branch of ``url``. Thread-safe (one operation at a time)."""

    def __init__(
        self,
        url: str,
        branch: str,
        cache_dir: Path,
        author_name: str,
        author_email: str,
        timeout: float = 60.0,
        max_retries: int = 5,
        *,
        tracked_branch: str | None = None,
    ) -> None:
        self.branch = _short(branch)
        check_branch_name(self.branch)
        if tracked_branch is not None and self.branch == _short(tracked_branch):
            raise PermanentError(f"the status branch must not be the tracked branch ({self.branch!r})")
        self.author_name, self.author_email = author_name, author_email
        self.max_retries = max_retries
        self.repo = BareRepo(Path(cache_dir) / "status.git", url, timeout)
        self._blobs = BlobReader(self.repo)
        self._lock = threading.RLock()
        self._head: str | None = None
        self._fetched = False
        self.skipped_audit_lines = 0
        self._writes = 0
        self.before_push: Callable[[], None] | None = None  # test hook: runs just before every push attempt

    # reading

    def _fetch(self) -> str | None:
        self._head = self.repo.fetch(self.branch)
        self._fetched = True
        return self._head

    def read(self) -> StatusSnapshot:
        """Fetch the branch; ``controller.yaml`` and every ``environments/*.yaml`` at its head."""
        with self._lock:
            head = self._fetch()
            if head is None:
                return StatusSnapshot(None, {})
            tree = load_tree(self.repo, self._blobs, head, ("environments", "controller.yaml"))
            wanted = [p for p in tree.paths() if p.startswith("environments/") and p.count("/") == 1]
            wanted += [p for p in ("controller.yaml",) if p in tree]
            return StatusSnapshot(head, {p: tree.read(p) for p in sorted(wanted) if p.endswith(".yaml")})

    def _last_head(self) -> str | None:
        if not self._fetched:
            self._fetch()
        return self._head

    def refresh(self) -> None:
        """Fetch the branch: the next reads see what other replicas pushed."""
        with self._lock:
            self._fetch()

    def read_file(self, path: str) -> bytes | None:
        """``path`` at the last fetched head (fetching once if nothing was fetched yet); None if absent."""
        with self._lock:
            head = self._last_head()
            return None if head is None else self._blobs.read(f"{head}:{path}")

    def audit_lines(self, prefix: str = "audit/") -> Iterator[dict[str, Any]]:
        """Every JSON object of every ``.jsonl`` file under ``<prefix>`` at the last fetched head, files in name order.

        Lines that are not a JSON object are skipped and counted in :attr:`skipped_audit_lines`.
        """
        with self._lock:
            head = self._last_head()
            names = [] if head is None else self._list(head, prefix)
        self.skipped_audit_lines = 0
        for name in names:
            data = self._blobs.read(f"{head}:{name}") or b""
            for number, line in enumerate(data.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = None
                if isinstance(entry, dict):
                    yield entry
                else:
                    self.skipped_audit_lines += 1
                    log.warning("skipping malformed audit line %s:%d", name, number)

    def _list(self, head: str, prefix: str) -> list[str]:
        """The ``.jsonl`` files at any depth under ``prefix``, in name order: the order they were written in, for
        the engine's ``audit/YYYY-MM/DD/HHMMSS.micros-*.jsonl``, after the month's file of earlier versions,
        ``YYYY-MM.jsonl``."""
        done = self.repo.run("ls-tree", "-r", "-z", "--name-only", "--full-tree", head, "--", prefix)
        if done.returncode:
            raise TemporaryError(f"cannot list {prefix} of the status branch: {self.repo.tail(done)}")
        names = (n.decode("utf-8", "replace") for n in done.stdout.split(b"\x00") if n)
        return sorted(n for n in names if n.endswith(".jsonl") and n.startswith(prefix))

    # writing

    def write(self, replace: Mapping[str, bytes], append: Mapping[str, bytes], message: str) -> str | None:
        """One commit on the branch's latest head: ``replace`` files set, ``append`` bytes added as lines.

        A path in both is replaced, then appended to. Returns the pushed sha, or None when nothing would change.
        Retries on a concurrent push up to ``max_retries`` times, then raises :class:`TemporaryError`.
        Never force-pushes.
        """
        for path in [*replace, *append]:
            _check_path(path)
        with self._lock:
            for attempt in range(self.max_retries + 1):
                # first try on the head we know (our last push, or the last fetch): one network round trip fewer
                # on every cycle; if the branch moved meanwhile the push is rejected and we fetch and rebuild
                head = self._head if attempt == 0 and self._fetched else self._fetch()
                commit = self._build(head, replace, append, message)
                if commit is None:
                    return None
                if self.before_push is not None:
                    self.before_push()
                if self._push(commit):
                    self.repo.run("update-ref", f"refs/remotes/origin/{self.branch}", commit)
                    self._head = commit
                    return commit
                log.info("status branch %s moved during our write; rebuilding (attempt %d)", self.branch, attempt + 1)
                time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.5))  # jitter
        raise TemporaryError(
            f"status branch {self.branch!r} kept moving; gave up after {self.max_retries + 1} attempts", delay=1.0
        )

    def _build(
        self, head: str | None, replace: Mapping[str, bytes], append: Mapping[str, bytes], message: str
    ) -> str | None:
        current = self._blob_ids(head, list(replace)) if head is not None and replace else {}
        contents: dict[str, bytes] = {}
        for path, data in replace.items():
            if current.get(path) != blob_id(data):
                contents[path] = data
        for path, data in append.items():
            base = contents.get(path, replace.get(path))
            if base is None:
                base = (self._blobs.read(f"{head}:{path}") or b"") if head is not None else b""
            if base and not base.endswith(b"\n"):
                base += b"\n"
            contents[path] = base + data + (b"" if data.endswith(b"\n") else b"\n")
        if not contents:  # otherwise some path gets new bytes, so the tree differs from the head's
            return None
        return self._commit(head, contents, message)

    def _blob_ids(self, head: str, paths: list[str]) -> dict[str, str]:
        """Blob id of each of ``paths`` that exists at ``head``: one ``ls-tree`` of their directories only (the
        audit trail, which grows without end, is not listed)."""
        scopes = sorted({p.rsplit("/", 1)[0] if "/" in p else p for p in paths})
        tree = load_tree(self.repo, self._blobs, head, scopes)
        return {p: tree.digest(p) for p in paths if p in tree}

    def _commit(self, head: str | None, contents: Mapping[str, bytes], message: str) -> str:
        """A commit of ``contents`` on ``head`` from one ``git fast-import``: blobs, trees and the commit are
        written without an index, and only the trees on the changed paths are read, however large the branch."""
        who = f"{_ident(self.author_name)} <{_ident(self.author_email)}> {int(time.time())} +0000"
        body = (message if message.endswith("\n") else message + "\n").encode()
        with tempfile.TemporaryFile() as stream:  # fast-import reads it: a cold cycle's audit is not copied in memory
            stream.write(b"reset %s\ncommit %s\nmark :1\n" % (_BUILD_REF, _BUILD_REF))
            stream.write(f"author {who}\ncommitter {who}\n".encode() + b"data %d\n%s\n" % (len(body), body))
            if head is not None:
                stream.write(f"from {head}\n".encode())
            for path, data in contents.items():
                stream.write(b"M 100644 inline %s\ndata %d\n" % (_quoted(path), len(data)))
                stream.write(data)
                stream.write(b"\n")
            stream.write(b"\nget-mark :1\ndone\n")
            stream.seek(0)
            out = self._git(("fast-import", "--quiet", "--done", "--force", "--date-format=raw"), stdin=stream)
        self._writes += 1
        if self._writes % GC_EVERY == 0:  # fast-import leaves small imports as loose objects: pack them now and then
            self.repo.run("gc", "--auto", "--quiet")
        return out.strip().decode()

    def _git(
        self, args: tuple[str, ...], stdin: bytes | BinaryIO | None = None, env: Mapping[str, str] | None = None
    ) -> bytes:
        done = self.repo.run(*args, stdin=stdin, env=env)
        if done.returncode:
            raise TemporaryError(f"git {args[0]} failed in the status cache: {self.repo.tail(done)}")
        return done.stdout

    def _push(self, commit: str) -> bool:
        """Push ``commit`` as the branch (fast-forward only); False when the remote moved (rejected)."""
        done = self.repo.run("push", "--porcelain", "--no-verify", "origin", f"{commit}:refs/heads/{self.branch}")
        if done.returncode == 0:
            return True
        report = done.stdout + done.stderr
        lost_race = (b"[rejected]", b"non-fast-forward", b"fetch first", b"cannot lock ref", b"failed to update ref")
        if any(marker in report for marker in lost_race):
            return False  # someone else pushed first (or at the same moment): rebuild on their commit and retry
        raise TemporaryError(f"cannot push the status branch to {self.repo.display_url}: {self.repo.tail(done)}",
                             delay=30.0)  # fmt: skip

    def close(self) -> None:
        self._blobs.close()


def _ident(text: str) -> str:
    """A name or e-mail as a commit header takes it (no angle brackets or line breaks)."""
    return "".join(c for c in text if c not in "<>\n\r").strip() or "reconciler"


def _quoted(path: str) -> bytes:
    """``path`` as fast-import reads it: C-style quoted (checked paths hold no newline or NUL)."""
    return b'"%s"' % path.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"')


def _check_path(path: str) -> None:
    bad_part = any(p in ("", ".", "..", ".git") for p in path.split("/"))
    if bad_part or "\x00" in path or "\n" in path:
        raise ValueError(f"invalid status file path {path!r}")
