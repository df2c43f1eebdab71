"""StatusStore against real remotes (a local bare repo and a git daemon): commits, appends, concurrent pushes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.core.problems import PermanentError, TemporaryError
from reconciler.status import DEFAULT_BRANCH, StatusStore
from tests.source import Daemon, Upstream, free_port, git

ENV_A = b"environment: a\nphase: Synced\n"
ENV_B = b"environment: b\nphase: Failed\n"


def make_store(url: str, cache: Path, **kwargs: object) -> StatusStore:
    return StatusStore(url, DEFAULT_BRANCH, cache, "Reconciler", "reconciler@example.org", 30.0, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    up = Upstream(tmp_path)
    up.commit({"stages/prod.yaml": b"kind: Stage\n"}, "releases")
    up.push()
    return up


@pytest.fixture
def store(upstream: Upstream, tmp_path: Path) -> Iterator[StatusStore]:
    s = make_store(str(upstream.bare), tmp_path / "cache", tracked_branch="main")
    yield s
    s.close()


def human_push(upstream: Upstream, files: dict[str, bytes], name: str = "human") -> str:
    """Someone else pushes to the status branch from their own clone."""
    clone = upstream.work.parent / f"{name}-clone"
    if not clone.exists():
        git("clone", "--quiet", str(upstream.bare), str(clone), cwd=upstream.work.parent)
    git("fetch", "--quiet", "origin", cwd=clone)
    git("checkout", "--quiet", "-B", DEFAULT_BRANCH, f"origin/{DEFAULT_BRANCH}", cwd=clone)
    for path, data in files.items():
        target = clone / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(target.read_bytes() + data if target.exists() and path.endswith(".jsonl") else data)
    git("add", "-A", cwd=clone)
    git("commit", "--quiet", "-m", f"{name} edit", cwd=clone)
    git("push", "--quiet", "origin", f"HEAD:refs/heads/{DEFAULT_BRANCH}", cwd=clone)
    return git("rev-parse", "HEAD", cwd=clone)


def remote_file(upstream: Upstream, path: str) -> bytes:
    return git("show", f"refs/heads/{DEFAULT_BRANCH}:{path}", cwd=upstream.bare).encode() + b"\n"


def test_refuses_the_tracked_branch(upstream: Upstream, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="tracked branch"):
        StatusStore(str(upstream.bare), "main", tmp_path, "r", "r@x", tracked_branch="main")
    with pytest.raises(PermanentError, match="tracked branch"):
        StatusStore(str(upstream.bare), "refs/heads/main", tmp_path, "r", "r@x", tracked_branch="main")


def test_absent_branch_reads_empty(store: StatusStore) -> None:
    snap = store.read()
    assert snap.head is None and snap.files == {}
    assert store.read_file("environments/a.yaml") is None
    assert list(store.audit_lines()) == []


def test_first_write_creates_orphan_then_identical_write_is_noop(store: StatusStore, upstream: Upstream) -> None:
    tracked = upstream.remote_sha("main")
    sha = store.write({"environments/a.yaml": ENV_A, "environments/b.yaml": ENV_B}, {}, "status: 2 environments")
    assert sha is not None and upstream.remote_sha(DEFAULT_BRANCH) == sha
    assert git("rev-list", "--parents", "-n", "1", sha, cwd=upstream.bare) == sha  # orphan: no parent
    log = git("log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", sha, cwd=upstream.bare)
    assert log == "Reconciler <reconciler@example.org>|Reconciler <reconciler@example.org>|status: 2 environments"

    assert store.write({"environments/a.yaml": ENV_A}, {}, "again") is None
    assert upstream.remote_sha(DEFAULT_BRANCH) == sha

    snap = store.read()
    assert snap.head == sha
    assert snap.files == {"environments/a.yaml": ENV_A, "environments/b.yaml": ENV_B}
    assert upstream.remote_sha("main") == tracked  # the tracked branch is never written


def test_replace_keeps_other_files_and_ignores_non_env_files_in_snapshot(store: StatusStore) -> None:
    store.write({"environments/a.yaml": ENV_A, "notes/x.txt": b"x", "environments/sub/c.yaml": b"c"}, {}, "1")
    sha = store.write({"environments/a.yaml": b"environment: a\nphase: OutOfSync\n"}, {}, "2")
    assert sha is not None
    snap = store.read()
    assert snap.files == {"environments/a.yaml": b"environment: a\nphase: OutOfSync\n"}
    assert store.read_file("notes/x.txt") == b"x"
    assert store.read_file("environments/sub/c.yaml") == b"c"


def test_append_accumulates_lines(store: StatusStore, upstream: Upstream) -> None:
    first = json.dumps({"n": 1}).encode()
    store.write({}, {"audit/2024-03.jsonl": first}, "audit 1")
    store.write({}, {"audit/2024-03.jsonl": json.dumps({"n": 2}).encode() + b"\n"}, "audit 2")
    store.write({"environments/a.yaml": ENV_A}, {"audit/2024-03.jsonl": json.dumps({"n": 3}).encode()}, "audit 3")
    assert remote_file(upstream, "audit/2024-03.jsonl") == b'{"n": 1}\n{"n": 2}\n{"n": 3}\n'
    assert [e["n"] for e in store.audit_lines()] == [1, 2, 3]
    count = git("rev-list", "--count", f"refs/heads/{DEFAULT_BRANCH}", cwd=upstream.bare)
    assert count == "3"


def test_concurrent_human_push_over_git_daemon(git_daemon: Daemon, tmp_path: Path) -> None:
    up = Upstream(git_daemon.base, "status-race.git")
    up.commit({"stages/prod.yaml": b"kind: Stage\n"})
    up.push()
    tracked = up.remote_sha("main")
    store = make_store(git_daemon.url("status-race.git"), tmp_path / "cache", tracked_branch="main")
    try:
        store.write({"environments/a.yaml": ENV_A}, {"audit/log.jsonl": b'{"who": "controller", "n": 1}'}, "first")
        human: list[str] = []

        def race() -> None:
            if not human:  # only before the first attempt: the retry must then succeed
                human.append(human_push(up, {"notes/human.txt": b"hi\n", "audit/log.jsonl": b'{"who": "human"}\n'}))

        store.before_push = race
        final = store.write({"environments/b.yaml": ENV_B}, {"audit/log.jsonl": b'{"who": "controller", "n": 2}'}, "2")
        assert final is not None and up.remote_sha(DEFAULT_BRANCH) == final
        assert remote_file(up, "notes/human.txt") == b"hi\n"
        assert remote_file(up, "environments/b.yaml") == ENV_B
        assert remote_file(up, "environments/a.yaml") == ENV_A
        assert [e["who"] for e in store.audit_lines()] == ["controller", "human", "controller"]
        git("merge-base", "--is-ancestor", human[0], final, cwd=up.bare)  # linear: the human commit survives
        assert git("rev-list", "--parents", "-n", "1", final, cwd=up.bare).split()[1:] == [human[0]]
        assert up.remote_sha("main") == tracked
    finally:
        store.close()


def test_retries_exhausted(store: StatusStore, upstream: Upstream) -> None:
    store.write({"environments/a.yaml": ENV_A}, {}, "seed")
    store.max_retries = 2
    calls: list[str] = []

    def always_race() -> None:
        calls.append(human_push(upstream, {"notes/human.txt": f"{len(calls)}\n".encode()}))

    store.before_push = always_race
    with pytest.raises(TemporaryError, match="gave up after 3 attempts"):
        store.write({"environments/a.yaml": ENV_B}, {}, "lost race")
    assert len(calls) == 3
    assert upstream.remote_sha(DEFAULT_BRANCH) == calls[-1]  # nothing of ours was forced over theirs
    assert remote_file(upstream, "environments/a.yaml") == ENV_A


def test_audit_lines_skip_malformed(store: StatusStore) -> None:
    store.write(
        {
            "audit/2024-02.jsonl": b'{"n": 2}\n',
            "audit/2024-01.jsonl": b'{"n": 1}\nnot json\n\n[1, 2]\n{"n": 1.5}\n',
            "audit/readme.txt": b"ignored",
            "other/2024-01.jsonl": b'{"n": 99}\n',
        },
        {},
        "audit",
    )
    assert [e["n"] for e in store.audit_lines()] == [1, 1.5, 2]
    assert store.skipped_audit_lines == 2


def test_unreachable_remote_is_temporary_and_redacted(tmp_path: Path) -> None:
    url = f"http://user:s3cr3t-token@127.0.0.1:{free_port()}/x.git"
    store = make_store(url, tmp_path / "cache")
    for call in (store.read, lambda: store.write({"environments/a.yaml": ENV_A}, {}, "x")):
        with pytest.raises(TemporaryError) as caught:
            call()
        assert "s3cr3t-token" not in str(caught.value)


def test_invalid_paths_are_refused(store: StatusStore) -> None:
    for bad in ("/abs", "../up", "a//b", ".git/config", ""):
        with pytest.raises(ValueError, match="invalid status file path"):
            store.write({bad: b"x"}, {}, "bad")


def test_audit_files_at_any_depth_are_read_in_time_order_after_the_months_file(store: StatusStore) -> None:
    """Earlier versions appended to ``audit/YYYY-MM.jsonl``; the engine now adds ``audit/YYYY-MM/DD/HHMMSS-x.jsonl``
    per commit: both are read, the month's single file first."""
    store.write({}, {"audit/2024-03.jsonl": b'{"n": 1}\n{"n": 2}\n'}, "an earlier version's trail")
    store.write({}, {"audit/2024-03/07/101500-bbbb.jsonl": b'{"n": 4}\n'}, "later")
    store.write({}, {"audit/2024-03/07/090000-aaaa.jsonl": b'{"n": 3}\n'}, "earlier, pushed late")
    store.write({}, {"audit/2024-04/01/000001-cccc.jsonl": b'{"n": 5}\n', "audit/2024-02.jsonl": b'{"n": 0}\n'}, "x")
    assert [e["n"] for e in store.audit_lines()] == [0, 1, 2, 3, 4, 5]


def test_paths_with_quotes_spaces_and_backslashes_round_trip(store: StatusStore, upstream: Upstream) -> None:
    odd = 'environments/we "ird" \\ name.yaml'
    store.write({odd: ENV_A, "environments/a.yaml": ENV_B}, {}, "odd names")
    names = git("ls-tree", "-r", "-z", "--name-only", f"refs/heads/{DEFAULT_BRANCH}", cwd=upstream.bare).split("\0")
    assert odd in names and store.read().files[odd] == ENV_A


def test_a_commit_carries_exactly_the_changed_files_and_its_author(store: StatusStore, upstream: Upstream) -> None:
    first = store.write({"environments/a.yaml": ENV_A, "environments/b.yaml": ENV_B}, {}, "two")
    assert store.write({"environments/a.yaml": ENV_A}, {}, "nothing new") is None
    second = store.write({"environments/a.yaml": ENV_B, "environments/b.yaml": ENV_B}, {"audit/x.jsonl": b"{}"}, "one")
    assert second is not None and first is not None
    changed = git("diff", "--name-status", first, second, cwd=upstream.bare).splitlines()
    assert changed == ["A\taudit/x.jsonl", "M\tenvironments/a.yaml"]
    assert git("log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", second, cwd=upstream.bare) == (
        "Reconciler <reconciler@example.org>|Reconciler <reconciler@example.org>|one"
    )
    assert git("rev-list", "--parents", "-n", "1", second, cwd=upstream.bare).split()[1:] == [first]


def test_a_commit_git_cannot_build_is_a_temporary_error_naming_the_cache(
    store: StatusStore, upstream: Upstream
) -> None:
    store.write({"environments/a.yaml": ENV_A}, {}, "seed")
    before = upstream.remote_sha(DEFAULT_BRANCH)
    with pytest.raises(TemporaryError, match="git fast-import failed in the status cache"):
        store._commit("1" * 40, {"environments/a.yaml": ENV_B}, "on a commit the cache does not have")
    assert upstream.remote_sha(DEFAULT_BRANCH) == before and remote_file(upstream, "environments/a.yaml") == ENV_A
