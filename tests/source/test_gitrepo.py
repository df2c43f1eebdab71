"""GitSource and GitTree against real repositories: local paths, file:// and a real git daemon (git://)."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from reconciler.core.problems import PermanentError, Problem, TemporaryError
from reconciler.core.tree import blob_id
from reconciler.source import gitrepo
from reconciler.source.gitrepo import GitSource, redact, redact_url, url_secrets
from tests.source import Daemon, Link, Upstream, free_port, git


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    up = Upstream(tmp_path)
    up.commit({"README.md": b"hello\n"}, "initial")
    up.push()
    return up


@pytest.fixture
def source(upstream: Upstream, tmp_path: Path) -> Iterator[GitSource]:
    with GitSource(str(upstream.bare), "main", tmp_path / "cache", timeout=30) as src:
        yield src


# URLs and secrets


def test_redact_url() -> None:
    assert redact_url("https://user:tok@host/x") == "https://user:***@host/x"
    assert redact_url("https://tok@host/x.git") == "https://***@host/x.git"
    assert redact_url("http://u:p@ss@host:8080/x") == "http://u:***@host:8080/x"
    assert redact_url("git@github.com:org/repo.git") == "git@github.com:org/repo.git"
    assert redact_url("ssh://git@host/x") == "ssh://git@host/x"
    assert redact_url("ssh://git:pw@host/x") == "ssh://git:***@host/x"
    assert redact_url("/srv/git/releases.git") == "/srv/git/releases.git"
    assert (
        redact_url("fatal: unable to access 'https://a:b@h/x/': 403")
        == "fatal: unable to access 'https://a:***@h/x/': 403"
    )


def test_redact_text_with_known_secrets() -> None:
    secrets = url_secrets("https://bot:p%40ss-w0rd@host/x")
    assert set(secrets) == {"p%40ss-w0rd", "p@ss-w0rd"}
    assert redact("auth failed for p@ss-w0rd and p%40ss-w0rd", secrets) == "auth failed for *** and ***"


# fetching


def test_fetch_from_local_path_and_file_url(upstream: Upstream, tmp_path: Path) -> None:
    for url in (str(upstream.bare), upstream.bare.as_uri()):
        with GitSource(url, "main", tmp_path / url.replace("/", "_")) as src:
            assert src.fetch() == upstream.head()
            assert src.tree(upstream.head()).read("README.md") == b"hello\n"


def test_fetch_over_git_daemon(git_daemon: Daemon, tmp_path: Path) -> None:
    up = Upstream(git_daemon.base, "fetch-test.git")
    sha = up.commit({"a.yaml": b"a: 1\n"})
    up.push()
    with GitSource(git_daemon.url("fetch-test.git"), "main", tmp_path / "cache") as src:
        assert src.fetch() == sha
        sha2 = up.commit({"a.yaml": b"a: 2\n"})
        up.push()
        assert src.fetch() == sha2
        assert src.tree(sha2).read("a.yaml") == b"a: 2\n"
        assert src.tree(sha).read("a.yaml") == b"a: 1\n"
        with pytest.raises(PermanentError, match="does not exist"):
            GitSource(git_daemon.url("fetch-test.git"), "nope", tmp_path / "cache2").fetch()


def test_unreachable_remote_is_temporary_and_redacted(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there any more
    src = GitSource(f"http://user:s3cr3t-token@127.0.0.1:{port}/x.git", "main", tmp_path / "c1")
    with pytest.raises(TemporaryError) as caught:
        src.fetch()
    assert "s3cr3t-token" not in str(caught.value)
    assert f"http://user:***@127.0.0.1:{port}/x.git" in str(caught.value)
    with pytest.raises(TemporaryError, match="cannot fetch"):
        GitSource(str(tmp_path / "nonexistent.git"), "main", tmp_path / "c2").fetch()


def test_hanging_remote_times_out(tmp_path: Path) -> None:
    with socket.socket() as server:  # accepts connections (backlog) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        url = f"git://127.0.0.1:{server.getsockname()[1]}/x.git"
        started = time.monotonic()
        with pytest.raises(TemporaryError, match="timed out"):
            GitSource(url, "main", tmp_path / "cache", timeout=1.0).fetch()
        assert time.monotonic() - started < 10


def test_missing_branch_is_permanent(upstream: Upstream, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="'release' does not exist"):
        GitSource(str(upstream.bare), "release", tmp_path / "cache").fetch()


def test_invalid_branch_name_is_refused(tmp_path: Path) -> None:
    for bad in ("", "-x", "a..b", "a b", "x:y"):
        with pytest.raises(PermanentError):
            GitSource("/nowhere", bad, tmp_path)


def test_force_push_is_followed(upstream: Upstream, source: GitSource) -> None:
    base = upstream.head()
    old = upstream.commit({"v.yaml": b"old\n"})
    upstream.push()
    assert source.fetch() == old
    source.tree(old).read("v.yaml")  # starts the cat-file process before the rewrite
    git("reset", "--hard", "--quiet", base, cwd=upstream.work)
    new = upstream.commit({"v.yaml": b"new\n"}, "rewritten")
    upstream.push(force=True)
    assert source.fetch() == new
    assert source.tree(new).read("v.yaml") == b"new\n"
    assert source.tree(old).read("v.yaml") == b"old\n"  # still in the cache
    assert not source.is_ancestor(old, new)
    assert source.is_ancestor(base, new)
    assert not source.is_ancestor("0" * 40, new)


def test_fetch_reads_the_loose_ref_and_asks_git_when_refs_are_packed(
    upstream: Upstream, source: GitSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = upstream.commit({"v.yaml": b"1\n"})
    upstream.push()
    processes: list[tuple[str, ...]] = []
    real = source.repo.run
    monkeypatch.setattr(source.repo, "run", lambda *a, **k: processes.append(a) or real(*a, **k))
    assert source.fetch() == first
    assert [a[0] for a in processes] == ["fetch"]  # the updated ref is a file: no rev-parse
    git("pack-refs", "--all", "--prune", cwd=source.repo.path)  # what gc does: the ref is no longer a file
    processes.clear()
    assert source.fetch() == first and [a[0] for a in processes] == ["fetch", "rev-parse"]
    second = upstream.commit({"v.yaml": b"2\n"})
    upstream.push()
    assert source.fetch() == second  # fetch writes the updated ref loose again, over the packed one


# reading trees


def test_tree_paths_sizes_digests(upstream: Upstream, source: GitSource) -> None:
    binary = bytes(range(256)) * 40 + b"\x00\n\xff"
    big = os.urandom(300_000)
    files: dict[str, bytes] = {
        "apps/a/application.yaml": b"kind: Application\n",
        "apps/a/templates/deploy.yaml": b"x: ${y}\n",
        "deep/er/and/deeper/file.txt": b"deep\n",
        "bin/blob.dat": binary,
        "bin/big.dat": big,
        "empty.yaml": b"",
        "unicode/été.yaml": "clé: valeur\n".encode(),
    }
    upstream.commit(dict(files))
    upstream.push()
    sha = source.fetch()
    tree = source.tree(sha)
    assert tree.revision == sha
    assert set(tree.paths()) == {*files, "README.md"}
    assert tree.problems == []
    for path, data in files.items():
        assert path in tree
        assert tree.read(path) == data
        assert tree.size(path) == len(data)
        assert tree.digest(path) == blob_id(data)
    assert "apps" not in tree and "missing.yaml" not in tree
    with pytest.raises(KeyError):
        tree.read("missing.yaml")


def test_symlinks(upstream: Upstream, source: GitSource) -> None:
    upstream.commit(
        {
            "real/app.yaml": b"app\n",
            "real/sub/leaf.yaml": b"leaf\n",
            "link.yaml": Link("real/app.yaml"),
            "real/sub/up.yaml": Link("../app.yaml"),
            "chain1.yaml": Link("chain2.yaml"),
            "chain2.yaml": Link("link.yaml"),
            "dirlink": Link("real/sub"),
            "via-dir.yaml": Link("dirlink/leaf.yaml"),
            "outside.yaml": Link("../../etc/passwd"),
            "absolute.yaml": Link("/etc/passwd"),
            "loop-a.yaml": Link("loop-b.yaml"),
            "loop-b.yaml": Link("loop-a.yaml"),
            "self.yaml": Link("self.yaml"),
            "dangling.yaml": Link("nothing/here.yaml"),
            "real/parent": Link(".."),
        }
    )
    upstream.push()
    tree = source.tree(source.fetch())
    assert tree.read("link.yaml") == b"app\n"
    assert tree.read("real/sub/up.yaml") == b"app\n"
    assert tree.read("chain1.yaml") == b"app\n"
    assert tree.read("via-dir.yaml") == b"leaf\n"
    assert tree.read("dirlink/leaf.yaml") == b"leaf\n"
    assert tree.read("dirlink/up.yaml") == b"app\n"
    assert tree.digest("link.yaml") == blob_id(b"app\n") and tree.size("link.yaml") == 4
    assert set(tree.problems) == {
        Problem("outside.yaml", None, "symlink points outside the repository"),
        Problem("absolute.yaml", None, "symlink points outside the repository"),
        Problem("loop-a.yaml", None, "symlink loop"),
        Problem("loop-b.yaml", None, "symlink loop"),
        Problem("self.yaml", None, "symlink loop"),
        Problem("dangling.yaml", None, "dangling symlink"),
        Problem("real/parent", None, "symlink loop"),
    }
    listed = set(tree.paths())
    assert not {p.path for p in tree.problems} & listed
    assert not any(p.startswith("real/parent/") for p in listed)


def test_link_graph_explosion_is_bounded(
    upstream: Upstream, source: GitSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    # d1 has 3 links to d2, d2 has 3 to d3, d3 has 3 to d4: 3 + 9 + 27 aliases of d4/f.yaml, and more links
    files: dict[str, bytes | Link | None] = {"d4/f.yaml": b"f\n"}
    for level in (1, 2, 3):
        files.update({f"d{level}/l{i}": Link(f"../d{level + 1}") for i in range(3)})
    upstream.commit(files)
    upstream.push()
    sha = source.fetch()
    tree = source.tree(sha)
    assert tree.read("d1/l0/l1/l2/f.yaml") == b"f\n"
    assert len([p for p in tree.paths() if p.endswith("f.yaml")]) == 1 + 3 + 9 + 27
    monkeypatch.setattr(gitrepo, "MAX_LISTED_PATHS", 40)
    with pytest.raises(PermanentError, match="symlinked directories"):
        source.tree(sha)


def test_submodules_are_skipped(upstream: Upstream, source: GitSource) -> None:
    git("update-index", "--add", "--cacheinfo", f"160000,{upstream.head()},vendor/lib", cwd=upstream.work)
    git("commit", "--quiet", "-m", "add a submodule", cwd=upstream.work)
    upstream.push()
    tree = source.tree(source.fetch())
    assert set(tree.paths()) == {"README.md"} and tree.problems == []


def test_unknown_revision(source: GitSource) -> None:
    source.fetch()
    for bad in ("0" * 40, "no-such-branch", "--output=/tmp/x"):
        with pytest.raises(PermanentError, match="unknown revision"):
            source.tree(bad)


def _many_files(count: int) -> dict[str, bytes]:
    return {f"apps/app{i % 25}/env{i}.yaml": f"name: env{i}\nvalue: {'x' * (i % 700)}\n".encode() for i in range(count)}


def test_concurrent_reads_are_correct(upstream: Upstream, source: GitSource) -> None:
    files = _many_files(200)
    upstream.commit(dict(files))
    upstream.push()
    tree = source.tree(source.fetch())
    errors: list[str] = []

    def reader(seed: int) -> None:
        order = list(files)
        random.Random(seed).shuffle(order)
        for path in order:
            if tree.read(path) != files[path]:
                errors.append(path)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_timing_read_every_file_of_250(upstream: Upstream, source: GitSource) -> None:
    files = _many_files(250)
    upstream.commit(dict(files))
    upstream.push()
    sha = source.fetch()
    source.tree(sha).read("README.md")  # the cat-file process is started once per source
    started = time.perf_counter()
    tree = source.tree(sha)
    listed = time.perf_counter()
    contents = {p: tree.read(p) for p in tree.paths()}
    done = time.perf_counter()
    assert len(contents) == 251
    print(f"\n250-file tree: ls-tree {1000 * (listed - started):.1f} ms, read all {1000 * (done - listed):.1f} ms")


# commits and history


def test_commit_info(upstream: Upstream, source: GitSource) -> None:
    message = (
        "Hotfix prod\n\nLonger explanation.\n\nOverride-Reason: INC-1234 outage\nApproved-by: carol\nApproved-by: dan\n"
    )
    env = {"GIT_AUTHOR_NAME": "Zoë Ångström-Łukasz", "GIT_AUTHOR_EMAIL": "zoe@exämple.org"}
    parent = upstream.head()
    sha = upstream.commit({"x.yaml": b"x\n"}, message, env=env)
    upstream.push()
    source.fetch()
    info = source.commit(sha)
    assert info.sha == sha and info.parents == (parent,)
    assert (info.author_name, info.author_email) == ("Zoë Ångström-Łukasz", "zoe@exämple.org")
    assert (info.committer_name, info.committer_email) == ("Bob Ops", "bob@example.org")
    assert info.authored_at == datetime(2024, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=1)))
    assert info.committed_at == datetime(2024, 3, 1, 11, 30, tzinfo=UTC) + timedelta(hours=1)
    assert info.authored_at.tzinfo is not None
    assert info.subject == "Hotfix prod"
    assert info.trailers == {"Override-Reason": "INC-1234 outage", "Approved-by": "carol, dan"}
    assert info.trailer_items == (
        ("Override-Reason", "INC-1234 outage"),
        ("Approved-by", "carol"),
        ("Approved-by", "dan"),
    )
    assert info.message.startswith("Hotfix prod\n\nLonger explanation.")
    assert source.commit(parent).trailers == {}


def test_merge_commit_parents(upstream: Upstream, source: GitSource) -> None:
    base = upstream.head()
    git("checkout", "--quiet", "-b", "feature", cwd=upstream.work)
    side = upstream.commit({"side.yaml": b"s\n"})
    git("checkout", "--quiet", "main", cwd=upstream.work)
    main = upstream.commit({"main.yaml": b"m\n"})
    git("merge", "--quiet", "--no-edit", "feature", cwd=upstream.work)
    upstream.push()
    info = source.commit(source.fetch())
    assert info.parents == (main, side)
    assert source.changed_paths(base, info.sha) == {"side.yaml", "main.yaml"}


def test_changed_paths(upstream: Upstream, source: GitSource) -> None:
    old = upstream.commit({"keep.yaml": b"k\n", "mod.yaml": b"1\n", "gone.yaml": b"g\n", "ren/a.yaml": b"r\n"})
    upstream.push()
    source.fetch()
    upstream.commit({"mod.yaml": b"2\n", "gone.yaml": None, "new/added.yaml": b"n\n", "ren/a.yaml": None,
                     "ren/b.yaml": b"r\n"})  # fmt: skip
    upstream.push()
    new = source.fetch()
    assert source.changed_paths(old, new) == {"mod.yaml", "gone.yaml", "new/added.yaml", "ren/a.yaml", "ren/b.yaml"}
    assert source.changed_paths(new, new) == set()
    assert source.changed_paths("f" * 40, new) is None


def test_closed_source_refuses_reads(upstream: Upstream, tmp_path: Path) -> None:
    src = GitSource(str(upstream.bare), "main", tmp_path / "cache")
    tree = src.tree(src.fetch())
    assert tree.read("README.md") == b"hello\n"
    src.close()
    with pytest.raises(ValueError, match="closed"):
        tree.read("README.md")
