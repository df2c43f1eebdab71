"""Scale-out: the consistent hash, static shards, the Lease protocol (step by step, with a controlled clock, against
the real API server) and three controller processes sharing a fleet, one of them killed (``slow``)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from reconciler.core.loader import load_repo
from reconciler.drivers.k8s_api import KubeApi
from reconciler.engine.sharding import (
    SHARD_PREFIX,
    LeaseCoordinator,
    StaticShards,
    lease_name_for,
    rearm,
    rendezvous,
    shard_of,
)
from reconciler.source.fstree import DirectoryTree
from tests.drivers import k8s_support
from tests.drivers.k8s_support import new_namespace
from tests.engine import ENVIRONMENTS, Fleet
from tests.source import Upstream, git
from tests.support.kube import KubeServer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "releases-repo"

api = k8s_support.api  # fixture


@pytest.fixture(scope="module")
def example_names() -> list[str]:
    repo = load_repo(DirectoryTree.scan(EXAMPLE)).repo
    assert repo is not None
    return sorted(repo.environments)


def test_the_hash_spreads_the_example_fleet_evenly(example_names: list[str]) -> None:
    assert len(example_names) == 235
    for shards in (2, 3, 5):
        sizes = Counter(shard_of(name, shards) for name in example_names)
        assert set(sizes) == set(range(shards))
        assert max(sizes.values()) <= 1.25 * len(example_names) / shards, sizes
        assert min(sizes.values()) >= 0.75 * len(example_names) / shards, sizes


def test_changing_the_shard_count_moves_few_environments(example_names: list[str]) -> None:
    before = {n: shard_of(n, 3) for n in example_names}
    after = {n: shard_of(n, 4) for n in example_names}
    moved = [n for n in example_names if before[n] != after[n]]
    assert all(after[n] == 3 for n in moved)  # only to the new shard, never between old ones
    assert len(moved) <= 1.3 * len(example_names) / 4
    back = {n: shard_of(n, 3) for n in example_names}
    assert back == before
    assert rendezvous("lille-dev", ["a", "b"]) == rendezvous("lille-dev", ["b", "a"])  # order does not matter
    with pytest.raises(ValueError):
        rendezvous("x", [])


def test_static_shards_partition_the_environments(example_names: list[str]) -> None:
    replicas = [StaticShards(i, 3) for i in range(3)]
    for name in example_names:
        assert sum(r.owns(name) for r in replicas) == 1
    with pytest.raises(ValueError):
        StaticShards(3, 3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def coordinator(api: KubeApi, namespace: str, replica: str, clock: Clock, acquired: list[set[int]]) -> LeaseCoordinator:
    return LeaseCoordinator(api, shards=3, replica=replica, namespace=namespace, duration=15.0, clock=clock,
                            on_acquire=acquired.append)  # fmt: skip


def holders(api: KubeApi, namespace: str) -> dict[int, str]:
    items = api.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases")["items"]
    return {
        int(i["metadata"]["name"].removeprefix(SHARD_PREFIX)): i["spec"].get("holderIdentity") or ""
        for i in items
        if i["metadata"]["name"].startswith(SHARD_PREFIX)
    }


def test_leases_are_shared_rebalanced_and_taken_over(api: KubeApi, example_names: list[str]) -> None:
    namespace = new_namespace(api, "leases")
    clock = Clock()
    got_a: list[set[int]] = []
    got_b: list[set[int]] = []
    a = coordinator(api, namespace, "replica-a", clock, got_a)
    b = coordinator(api, namespace, "replica-b", clock, got_b)

    a.step()  # alone: takes every shard
    assert (
        a.held() == [0, 1, 2]
        and got_a == [{0, 1, 2}]
        and holders(api, namespace) == dict.fromkeys(range(3), "replica-a")
    )
    b.step()  # sees a alive and every lease held: takes nothing yet
    assert b.held() == []
    a.step()  # sees b: holds ceil(3/2) = 2 and hands one back, which it stops owning at once
    assert len(a.held()) == 2
    (released,) = set(range(3)) - set(a.held())
    name = next(n for n in example_names if shard_of(n, 3) == released)
    assert not a.owns(name) and holders(api, namespace)[released] == "replica-a"  # cleared after a grace period
    clock.now += a.renew_deadline
    a.step()
    assert holders(api, namespace)[released] == ""
    b.step()
    assert b.held() == [released] and got_b == [{released}]
    for env in example_names:
        assert a.owns(env) + b.owns(env) == 1, env

    # b stops renewing (killed): its ownership ends before a may take its lease over
    clock.now += b.renew_deadline + 0.1
    a.step()
    assert all(not b.owns(env) for env in example_names) and b.held() == []
    assert holders(api, namespace)[released] == "replica-b"  # not expired yet for a
    clock.now += b.duration + 0.1
    a.step()
    assert a.held() == [0, 1, 2] and holders(api, namespace) == dict.fromkeys(range(3), "replica-a")
    assert got_a[-1] == {released}

    # a lease taken by someone else is dropped at the next round
    lease = api.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{SHARD_PREFIX}0") or {}
    lease["spec"]["holderIdentity"] = "intruder"
    api.request("PUT", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{SHARD_PREFIX}0", body=lease)
    a.step()
    assert 0 not in a.held()
    a.stop(release=True)
    assert sorted(holders(api, namespace).values()) == ["", "", "intruder"]


def test_a_stale_write_loses_the_race(api: KubeApi) -> None:
    namespace = new_namespace(api, "race")
    clock = Clock()
    a = coordinator(api, namespace, "a", clock, [])
    b = coordinator(api, namespace, "b", clock, [])
    a.step()
    seen_by_b = b._list()  # both read the same resourceVersion
    a.step()  # a renews: the version b read is stale now
    lease = seen_by_b[f"{SHARD_PREFIX}0"]
    assert b._write(lease, lease.name, "shard", "b", acquire=True) is False
    assert holders(api, namespace)[0] == "a"


def test_rearm_and_lease_names() -> None:
    class State:
        attempted_key: str | None = "key"

    states = {n: State() for n in ("lille-dev", "rennes-dev", "paris-dev", "nice-dev")}
    shard = shard_of("lille-dev", 3)
    rearm(states, {shard}, 3)
    assert {n for n, s in states.items() if s.attempted_key is None} == {n for n in states if shard_of(n, 3) == shard}
    assert lease_name_for("ctl-0") == "reconciler-replica-ctl-0"
    assert lease_name_for("Host_1:42").startswith("reconciler-replica-host-1-42-")


# -- three controller processes on one fleet ------------------------------------------------------------------------
DURATION = 10.0  # --lease-duration of the replicas
BRANCHES = ["lille", "rennes", "paris", "lyon", "nice", "brest", "metz", "pau", "caen", "dijon", "tours", "reims"]


def sharded_repo(revision: int) -> dict[str, bytes]:
    listed = "".join(f"      - {{branch: {b}}}\n" for b in BRANCHES)
    docs = {
        "applications/web/application.yaml": "apiVersion: reconciler.io/v1\nkind: Application\nmetadata: {name: web}\n"
        "spec:\n  owner: team-web\n  components:\n    - {name: api, target: kubernetes, templates: [templates/config.yaml]}\n",
        "applications/web/templates/config.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"
        f'  namespace: ${{params.namespace}}\ndata:\n  version: "${{release.version}}"\n  revision: "{revision}"\n',
        "releases/web/1.0.yaml": "apiVersion: reconciler.io/v1\nkind: Release\nmetadata: {name: web-1.0}\nspec:\n"
        '  application: web\n  version: "1.0"\n  components:\n    api: {image: "registry.example.org/web:1.0"}\n',
        "stages/dev.yaml": "apiVersion: reconciler.io/v1\nkind: Stage\nmetadata: {name: dev}\n"
        'spec:\n  releases: {web: "1.0"}\n',
        "environments/branches.yaml": "apiVersion: reconciler.io/v1\nkind: EnvironmentSet\nmetadata: {name: branches}\n"
        f'spec:\n  generator:\n    list:\n{listed}  template:\n    metadata: {{name: "${{branch}}-dev"}}\n'
        '    spec:\n      stage: dev\n      targets: {kubernetes: "local-${branch}"}\n'
        '      parameters: {namespace: "${branch}-dev"}\n',
    }
    return {path: text.encode() for path, text in docs.items()}


class Replicas:
    """Three ``reconciler run --shards 3`` processes (each in its own session, killed by pid at the end)."""

    def __init__(self, root: Path, bare: Path, kubeconfig: Path, lease_namespace: str) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for i in range(3):
            config = {
                "apiVersion": "reconciler.io/v1", "kind": "ControllerConfig",
                "source": {"url": str(bare), "branch": "main", "interval": "1s", "timeout": "30s"},
                "stateDir": str(root / f"state-{i}"), "concurrency": 4, "applyTimeout": "60s",
                "driftCheckInterval": "1h", "backoff": {"initial": "1s", "max": "2s"}, "listen": "127.0.0.1:0",
                "targets": {}, "targetPatterns": [{"match": "*", "driver": "local", "path": str(root / "targets" / "${target}")}],
            }  # fmt: skip
            path = root / f"controller-{i}.yaml"
            path.write_text(yaml.safe_dump(config))
            log = (root / f"replica-r{i}.log").open("wb")
            self.procs[f"r{i}"] = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "run", "--config", str(path), "--shards", "3",
                 "--lease-kubeconfig", str(kubeconfig), "--lease-namespace", lease_namespace,
                 "--replica-id", f"r{i}", "--lease-duration", str(DURATION), "--log-level", "info"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip

    def kill(self, replica: str) -> None:
        proc = self.procs[replica]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for replica, proc in self.procs.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill(replica)


def poll(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Check ``condition`` twice a second (each check runs git) until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


def _audit(bare: Path) -> list[dict[str, object]]:
    try:
        files = git("ls-tree", "-r", "--name-only", "reconciler-status", "audit/", cwd=bare).split()
    except AssertionError:
        return []
    lines = [line for f in files for line in git("show", f"reconciler-status:{f}", cwd=bare).splitlines()]
    return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.slow
def test_three_replicas_share_a_fleet_and_survive_a_kill(kube_server: KubeServer, api: KubeApi, tmp_path: Path) -> None:
    envs = [f"{b}-dev" for b in BRANCHES]
    upstream = Upstream(tmp_path)
    upstream.commit(sharded_repo(1), "fleet")
    upstream.push()
    lease_namespace = new_namespace(api, "shards")
    replicas = Replicas(tmp_path, upstream.bare, kube_server.kubeconfig, lease_namespace)
    try:
        # the replicas settle on one shard each
        poll(lambda: sorted(holders(api, lease_namespace).values()) == ["r0", "r1", "r2"], timeout=8 * DURATION,
             what="one shard lease per replica")  # fmt: skip
        owner_of_shard = holders(api, lease_namespace)

        def applied(revision: str) -> bool:  # the audit trail: status docs of a failed push are not retried
            done = {e["environment"] for e in _audit(upstream.bare) if e["revision"] == revision}
            return done == set(envs)

        upstream.commit(
            {"applications/web/templates/config.yaml": sharded_repo(2)["applications/web/templates/config.yaml"]}
        )
        upstream.push()
        second = upstream.head()
        poll(lambda: applied(second), timeout=6 * DURATION, what="every environment at the second revision")
        by_env: dict[str, set[str]] = {}
        for entry in _audit(upstream.bare):
            if entry["revision"] == second:
                by_env.setdefault(str(entry["environment"]), set()).add(str(entry["replica"]))
        assert by_env == {e: {owner_of_shard[shard_of(e, 3)]} for e in envs}  # each by its shard's holder, once
        assert {r for rs in by_env.values() for r in rs} == {"r0", "r1", "r2"}

        victim = owner_of_shard[0]
        orphaned = [e for e in envs if shard_of(e, 3) == 0]
        replicas.kill(victim)
        upstream.commit(
            {"applications/web/templates/config.yaml": sharded_repo(3)["applications/web/templates/config.yaml"]}
        )
        upstream.push()
        third = upstream.head()
        poll(lambda: applied(third), timeout=3 * DURATION, what="every environment at the third revision")
        takers = {
            str(e["replica"]) for e in _audit(upstream.bare) if e["revision"] == third and e["environment"] in orphaned
        }
        assert takers and victim not in takers
        for env in envs:
            assert (
                (tmp_path / "targets" / f"local-{env.removesuffix('-dev')}" / env / "web" / "api" / "config.yaml")
                .read_text()
                .endswith('revision: "3"\n')
            )
    finally:
        replicas.stop()

    # never two replicas applying one environment at once
    entries = sorted(_audit(upstream.bare), key=lambda e: (str(e["environment"]), str(e["start"]), str(e["end"])))
    for before, after in itertools.pairwise(entries):
        if before["environment"] == after["environment"] and before["replica"] != after["replica"]:
            assert str(after["start"]) >= str(before["end"]), (before, after)


# -- the run command's scale-out options ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard-index", "0"], "--shard-index and --shard-count go together"),
        (["--shard-index", "2", "--shard-count", "2"], "--shard-index must be in 0..1"),
        (["--shards", "2", "--shard-index", "0", "--shard-count", "2"], "not both"),
        (["--shards", "0", "--lease-kubeconfig", "kc"], "--shards must be at least 1"),
        (["--shards", "2", "--lease-kubeconfig", "kc", "--lease-duration", "1"], "at least 3 seconds"),
        (["--shards", "2"], "--shards needs --lease-kubeconfig FILE (or running inside a cluster)"),
        (["--shards", "2", "--lease-kubeconfig", "/nonexistent/kc"], "cannot load kubeconfig /nonexistent/kc"),
    ],
)
def test_run_refuses_bad_scale_out_options(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert fleet.once(*args) == 1
    assert message in capsys.readouterr().err


def test_static_shards_split_the_fleet_between_two_runs(fleet: Fleet) -> None:
    owned = {i: {e for e in ENVIRONMENTS if shard_of(e, 2) == i} for i in range(2)}
    assert owned[0] and owned[1]
    assert fleet.once("--shard-index", "0", "--shard-count", "2", "--replica-id", "static-0") == 0
    assert {e["environment"] for e in fleet.audit()} == owned[0]
    assert fleet.once("--shard-index", "1", "--shard-count", "2", "--replica-id", "static-1") == 0
    by_replica = {(e["environment"], e["replica"]) for e in fleet.audit()}
    assert by_replica == {(e, f"static-{i}") for i, envs in owned.items() for e in envs}


def test_one_replica_with_leases_takes_every_shard_and_hands_them_back(
    fleet: Fleet, kube_server: KubeServer, api: KubeApi
) -> None:
    lease_namespace = f"solo-{os.getpid()}-{int(time.time())}"  # created by the coordinator on first use
    code = fleet.once("--shards", "3", "--lease-kubeconfig", str(kube_server.kubeconfig), "--lease-namespace",
                      lease_namespace, "--replica-id", "solo")  # fmt: skip
    assert code == 0
    assert {e["replica"] for e in fleet.audit()} == {"solo"}
    assert {e["environment"] for e in fleet.audit()} == set(ENVIRONMENTS)
    assert holders(api, lease_namespace) == dict.fromkeys(range(3), "")  # released at exit
