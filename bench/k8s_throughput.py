"""Kubernetes throughput: applications applied per second by the kubernetes driver, beside the plain SSA floor.

    python -m bench.k8s_throughput [--kubeconfig FILE] [--environments 35] [--concurrency 8] [--qps 0]

The workload is the Kubernetes share of the example fleet's dev stage: every unit that the 35 branch environments
``<branch>-dev`` of ``examples/releases-repo`` send to a ``k8s-*`` target (Deployment, Service and ConfigMap per
component), rendered as the controller renders them, in fresh namespaces of a run-unique suffix. It measures

* cold: ``KubernetesDriver.apply`` of every unit on an empty cluster (inventory journal, server-side dry-run of
  every object, server-side apply, inventory),
* warm: the same applies again (nothing changes: reads and dry-runs only, no write),
* floor cold / warm: the same objects sent as plain server-side apply PATCHes in a loop with the same client
  (no reads, no dry-run, no inventory, no prune): what the API server costs at the least,

environments in parallel (``--concurrency``, like the controller's workers), the units of one environment one
after the other. Without ``--kubeconfig`` it starts a private test API server (``tools/kube-test-server``) and
stops it afterwards. It also checks that no two objects of one environment collide (same kind, namespace and
name). The last line of stdout is a JSON summary (read by ``bench/run.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from reconciler.core.desired import DesiredUnit, render_unit, targets_of
from reconciler.core.loader import load_repo
from reconciler.drivers.k8s_api import APPLY_PATCH
from reconciler.drivers.k8s_store import api_client_for
from reconciler.drivers.kubernetes import KubernetesDriver
from reconciler.source.fstree import DirectoryTree

PROJECT = Path(__file__).resolve().parents[1]
EXAMPLE = PROJECT / "examples" / "releases-repo"
SERVER = PROJECT / "tools" / "kube-test-server"


def dev_units(environments: int, suffix: str) -> dict[str, list[DesiredUnit]]:
    """Environment -> its Kubernetes units, in namespaces and environment names ending in ``-suffix``."""
    tree = DirectoryTree.scan(EXAMPLE)
    repo = load_repo(tree).repo
    assert repo is not None, "examples/releases-repo does not load"
    envs = sorted(
        (e for e in repo.environments.values() if e.stage == "dev" and e.labels.get("scope") == "branch"),
        key=lambda e: e.name,
    )[:environments]
    units: dict[str, list[DesiredUnit]] = {}
    for env in envs:
        renamed = replace(
            env, name=f"{env.name}-{suffix}", parameters={**env.parameters, "namespace": f"{env.name}-{suffix}"}
        )
        for app_name, version in repo.desired_versions(env).items():
            app = repo.applications[app_name]
            release = repo.releases[(app_name, version)]
            for target in targets_of(renamed, app):
                if target.startswith("k8s-"):
                    unit = render_unit(repo, renamed, app, release, target, tree.read)
                    units.setdefault(renamed.name, []).append(unit)
    return units


def collisions(driver: KubernetesDriver, units: dict[str, list[DesiredUnit]]) -> list[str]:
    """Objects that two units (or two components) of one environment both define."""
    found = []
    for env, env_units in units.items():
        seen: dict[tuple[str, str, str, str], str] = {}
        for unit in env_units:
            for p in driver._desired(unit):  # also refuses duplicates inside one unit
                key = p.ref.identity
                if key in seen:
                    found.append(f"{env}: {p.ref} in {unit.application} and {seen[key]}")
                seen[key] = f"{unit.application}/{p.source}"
    return found


def timed(units: dict[str, list[DesiredUnit]], concurrency: int, work: Callable[[DesiredUnit], None]) -> float:
    def one_environment(env_units: list[DesiredUnit]) -> None:
        for unit in env_units:
            work(unit)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one_environment, units.values()))
    return time.perf_counter() - started


def create_namespaces(driver: KubernetesDriver, units: dict[str, list[DesiredUnit]]) -> None:
    for env in units:
        driver.api.request("POST", "/api/v1/namespaces", body={"metadata": {"name": env}})


@contextmanager
def api_server(kubeconfig: str | None) -> Iterator[str]:
    if kubeconfig:
        yield kubeconfig
        return
    with tempfile.TemporaryDirectory(prefix="k8s-bench-") as tmp:
        env = {"KUBE_TEST_SERVER_PYTHON": sys.executable}
        subprocess.run([str(SERVER), "start", tmp], check=True, capture_output=True, env={**os.environ, **env})
        try:
            yield f"{tmp}/kubeconfig"
        finally:
            subprocess.run([str(SERVER), "stop", tmp], check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", help="a running API server (default: start tools/kube-test-server)")
    p.add_argument("--environments", type=int, default=35, help="how many <branch>-dev environments (35)")
    p.add_argument("--concurrency", type=int, default=8, help="environments in parallel (8, the default workers)")
    p.add_argument("--qps", type=float, default=0, help="the driver's rate limit (0: none; the target default is 50)")
    args = p.parse_args(argv)
    with api_server(args.kubeconfig) as kubeconfig:
        client = api_client_for("bench", kubeconfig=kubeconfig, context=None)
        client.configuration.connection_pool_maxsize = max(10, args.concurrency * 2)
        driver = KubernetesDriver("bench", client, qps=args.qps or None, burst=max(1, int(args.qps)))
        run = uuid.uuid4().hex[:6]
        units = dev_units(args.environments, f"d{run}")
        floor_units = dev_units(args.environments, f"f{run}")
        apps = sum(len(u) for u in units.values())
        clashes = collisions(driver, units)
        create_namespaces(driver, units)
        create_namespaces(driver, floor_units)
        objects = {u.fingerprint + u.environment: driver._desired(u) for us in floor_units.values() for u in us}
        n_objects = sum(len(v) for v in objects.values())

        def floor(unit: DesiredUnit) -> None:
            for planned in objects[unit.fingerprint + unit.environment]:
                path = planned.resource.path(planned.ref.namespace, planned.ref.name)
                driver.api.request("PATCH", path, query=[("fieldManager", "reconciler")], body=planned.body,
                                   content_type=APPLY_PATCH)  # fmt: skip

        rows = {}
        for name, work, batch in (
            ("cold", lambda u: driver.apply(u), units),
            ("warm", lambda u: driver.apply(u), units),
            ("floor_cold", floor, floor_units),
            ("floor_warm", floor, floor_units),
        ):
            calls = driver.api.calls
            seconds = timed(batch, args.concurrency, work)
            rows[name] = (seconds, driver.api.calls - calls)
        warm_changes = sum(driver.apply(u).changed for us in list(units.values())[:3] for u in us)
    print(f"workload: {len(units)} environments, {apps} applications, {n_objects} objects; "
          f"concurrency {args.concurrency}, qps limit {args.qps or 'none'}")  # fmt: skip
    print(f"collisions (same kind/namespace/name in one environment): {len(clashes)}")
    for clash in clashes[:10]:
        print(f"  {clash}")
    print(f"{'run':<11} {'seconds':>8} {'apps/s':>8} {'objects/s':>10} {'requests':>9} {'req/app':>8}")
    for name, (seconds, calls) in rows.items():
        print(f"{name:<11} {seconds:8.1f} {apps / seconds:8.1f} {n_objects / seconds:10.1f} {calls:9d} "
              f"{calls / apps:8.1f}")  # fmt: skip
    print(f"re-applying unchanged units wrote nothing: {warm_changes == 0}")
    summary = {
        "applications": apps,
        "objects": n_objects,
        "cold_apps_per_s": round(apps / rows["cold"][0], 2),
        "warm_apps_per_s": round(apps / rows["warm"][0], 2),
        "floor_cold_apps_per_s": round(apps / rows["floor_cold"][0], 2),
        "floor_warm_apps_per_s": round(apps / rows["floor_warm"][0], 2),
        "requests_per_app_cold": round(rows["cold"][1] / apps, 1),
        "requests_per_app_warm": round(rows["warm"][1] / apps, 1),
        "collisions": len(clashes),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
