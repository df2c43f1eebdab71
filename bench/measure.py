"""Measure one fleet size: load, cold / no-op / incremental cycles, commit-to-live latency, peak RSS, with floors.

:func:`measure_size` runs in its own process (``python -m bench.run --worker ...``, started by :mod:`bench.run`)
so that its peak RSS is its own. Every figure is the median of several runs; each run of a figure is followed by
a run of its floor (:mod:`bench.floors`), so both see the same machine load, and the figure is reported as a
ratio to the floor's median. Wall-clock seconds are the figures; process CPU seconds (every thread of this
process, git children excluded) are recorded beside them because they are less sensitive to a loaded machine.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fleet import BenchFleet, Bump, fleet_spec, git
from bench.floors import FetchFloor, WriteFloor, deployed_files, rehash_floor, unit_files, yaml_floor
from reconciler.commands.common import load_config
from reconciler.commands.run import build_controller
from reconciler.core.desired import render_unit, targets_of
from reconciler.core.loader import Limits, forget_last_load, load_repo
from reconciler.core.model import ReleasesRepo
from reconciler.core.plan import Phase
from reconciler.core.tree import SourceTree, is_manifest_path
from reconciler.drivers.local_state import INVENTORY
from reconciler.engine.controller import Controller, CycleReport
from reconciler.engine.reconcile import Job, render_desired
from reconciler.source.gitrepo import GitSource
from reconciler.source.kustomize import KubectlKustomize

KUSTOMIZE = KubectlKustomize()  # kustomize components, rendered as the controller renders them

PROJECT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Options:
    branches: int
    apps: int
    runs: int = 3
    cold_runs: int = 3
    noop_runs: int = 5
    concurrency: int = 4
    latency_commits: int = 20
    latency_budget: float = 900.0  # seconds: fewer commits when a fleet is too slow to do them all
    workdir: Path = Path("/tmp")
    keep: bool = False
    metrics: bool = True  # report to PrometheusMetrics, as `reconciler run` does


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def figure(wall: list[float], cpu: list[float], floor: list[float] | None, floor_name: str | None) -> dict[str, Any]:
    """A figure's record: runs, medians, its floor and the ratio of the medians."""
    value, floor_value = median(wall), median(floor or [])
    return {
        "median_s": value,
        "runs_s": wall,
        "cpu_median_s": median(cpu),
        "cpu_runs_s": cpu,
        "floor": floor_name,
        "floor_median_s": floor_value,
        "floor_runs_s": floor or [],
        "ratio": value / floor_value if value is not None and floor_value else None,
    }


def _wait_applied(inventories: dict[str, list[str]], version: str, t0: float, deadline_s: float) -> dict[str, float]:
    """Seconds from ``t0`` until each environment's inventories say ``version`` (polled every 2 ms: a stat per
    file, a read only when the file changed)."""
    pending = {name: list(paths) for name, paths in inventories.items()}
    stamps: dict[str, tuple[int, int]] = {}
    done: dict[str, float] = {}
    while pending:
        if time.perf_counter() - t0 > deadline_s:
            raise RuntimeError(f"{version} not applied in {sorted(pending)[:3]} after {deadline_s:.0f}s")
        for name in list(pending):
            pending[name] = [p for p in pending[name] if not _holds(p, version, stamps)]
            if not pending[name]:
                done[name] = time.perf_counter() - t0
                del pending[name]
        time.sleep(0.002)
    return done


def _holds(path: str, version: str, stamps: dict[str, tuple[int, int]]) -> bool:
    """The inventory at ``path`` records ``version`` (read again only when its stat changed)."""
    try:
        st = os.stat(path)
        stamp = (st.st_ino, st.st_mtime_ns)
    except FileNotFoundError:
        return False
    if stamps.get(path) == stamp:
        return False
    try:
        with open(path, "rb") as fh:
            found = json.loads(fh.read()).get("version")
    except (OSError, ValueError):
        return False  # (being replaced: read again next time)
    stamps[path] = stamp
    return bool(found == version)


def code_state() -> dict[str, Any]:
    """The commit and the uncommitted product files this process runs (imported at its start)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=PROJECT, capture_output=True, text=True, check=False)
        return done.stdout if done.returncode == 0 else ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "reconciler").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD").strip() or "unknown", "dirty": dirty, "at": time.strftime("%H:%M:%S")}


def proc_status(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@contextmanager
def timed(wall: list[float], cpu: list[float]) -> Iterator[None]:
    c0, t0 = time.process_time(), time.perf_counter()
    yield
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)


class Size:
    """The state of one size's measurements (see :func:`measure_size`)."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.envs, self.label = fleet_spec(opts.branches, opts.apps)
        self.root = opts.workdir / f"fleet-{self.envs}"
        if self.root.exists():
            shutil.rmtree(self.root)
        self.result: dict[str, Any] = {"label": self.label, "branches": opts.branches, "apps": opts.apps}
        self.result["code"] = code_state()  # other engineers may change the code between sizes
        self.notes: list[str] = []
        self.figures: dict[str, Any] = {}
        self.controller: Controller | None = None

    # --- helpers ---------------------------------------------------------------------------------------------
    def new_controller(self, name: str, drift: str) -> Controller:
        from reconciler.observability.metrics import PrometheusMetrics

        state = self.root / f"state-{name}"
        shutil.rmtree(state, ignore_errors=True)
        config = load_config(str(self.fleet.write_config(name, self.opts.concurrency, drift, state)))
        controller = build_controller(config, metrics=PrometheusMetrics() if self.opts.metrics else None)
        controller.restore()
        return controller

    def render_units(
        self,
        repo: ReleasesRepo,
        tree: SourceTree,
        revision: str,
        envs: list[str],
        app: str | None,
        sink: Callable[[list[tuple[str, bytes]]], None],
    ) -> int:
        """Render the units of ``envs`` (only ``app``'s when given) and hand their files to ``sink``, env by env."""
        units = 0
        for name in envs:
            env = repo.environments[name]
            if app is None:  # the controller's own render path
                rendered, errors = render_desired(
                    Job(env=env, repo=repo, tree=tree, revision=revision, build=KUSTOMIZE)
                )
                if errors:
                    raise RuntimeError(f"{name}: render errors: {errors}")
                chosen = list(rendered.values())
            else:
                application = repo.applications[app]
                release = repo.releases[(app, repo.desired_versions(env)[app])]
                chosen = [render_unit(repo, env, application, release, target, tree.read, KUSTOMIZE)
                          for target in targets_of(env, application)]  # fmt: skip
            units += len(chosen)
            sink(list(unit_files(chosen)))
        return units

    def write_floor(self, name: str, envs: list[str], app: str | None = None) -> tuple[float, WriteFloor, int]:
        assert self.controller is not None and self.controller.good is not None
        good = self.controller.good
        floor = WriteFloor(self.root / f"floor-{name}")
        try:
            units = self.render_units(good.repo, good.tree, good.revision, envs, app, floor.write)
        finally:
            floor.remove()
        return floor.seconds, floor, units

    def cycle(self, controller: Controller, trigger: str = "poll") -> CycleReport:
        report = controller.cycle(trigger)
        if report.source_error or report.invalid:
            raise RuntimeError(f"cycle failed: {report.source_error or report.invalid[:3]}")
        return report

    # --- phases ----------------------------------------------------------------------------------------------
    def setup(self) -> None:
        log(f"{self.label}: writing the fleet and seeding {self.root / 'releases.git'}")
        self.fleet = BenchFleet(self.root, self.opts.branches, self.opts.apps)
        self.bump: Bump = self.fleet.find_bump("dev")
        self.result["fleet"] = self.fleet.info
        self.result["bump"] = {
            "stage": self.bump.stage,
            "application": self.bump.application,
            "versions": list(self.bump.versions),
            "watched_environment": self.bump.environment,
        }

    def load(self) -> None:
        opts = self.opts
        source = GitSource("", "", self.root, git_dir=self.fleet.bare)
        head = git("rev-parse", "main", cwd=self.fleet.bare)
        tree = source.tree(head)
        blobs = [tree.read(p) for p in sorted(tree.paths()) if is_manifest_path(p)]
        wall: list[float] = []
        cpu: list[float] = []
        floor: list[float] = []
        repo = None
        for _ in range(opts.runs):
            forget_last_load()  # a load from scratch, not the cached re-load
            with timed(wall, cpu):
                result = load_repo(source.tree(head), Limits())
            if result.repo is None or not result.ok:
                raise RuntimeError(f"the fleet does not load: {result.all_problems()[:3]}")
            repo = result.repo
            floor.append(yaml_floor(blobs))
        source.close()
        assert repo is not None
        self.figures["load"] = figure(wall, cpu, floor, "PyYAML C loader on the same manifest files")
        self.result["environments"] = len(repo.environments)
        self.result["applications"] = len(repo.applications)
        self.result["manifest_files"] = len(blobs)
        self.result["manifest_bytes"] = sum(len(b) for b in blobs)
        self.rss_model = proc_status("VmRSS")  # imports + one loaded model: the floor of the peak RSS
        log(f"{self.label}: load+validate {median(wall):.3f}s (YAML floor {median(floor):.3f}s)")

    def cold(self) -> None:
        opts = self.opts
        wall: list[float] = []
        cpu: list[float] = []
        floor: list[float] = []
        for i in range(opts.cold_runs):
            if self.controller is not None:
                self.controller.close()
                self.controller = None
            self.fleet.reset_targets_and_status()
            controller = self.new_controller(f"cold{i}", "24h")
            with timed(wall, cpu):
                report = self.cycle(controller, "manual")
            self.controller = controller
            phases = Counter(str(o.phase) for o in report.outcomes.values())
            if phases != {"Synced": self.envs}:
                bad = [f"{n}: {o.message}" for n, o in report.outcomes.items() if o.phase is not Phase.SYNCED]
                raise RuntimeError(f"cold cycle did not sync everything: {dict(phases)}; {bad[:3]}")
            assert controller.good is not None
            seconds, written, units = self.write_floor(f"cold{i}", sorted(controller.good.repo.environments))
            floor.append(seconds)
            self.result["units"], self.result["files"], self.result["bytes"] = units, written.files, written.bytes
            log(
                f"{self.label}: cold cycle {wall[-1]:.2f}s (cpu {cpu[-1]:.2f}s), write floor {seconds:.2f}s "
                f"({written.files} files)"
            )
        self.figures["cold"] = figure(wall, cpu, floor, "open/write/rename of the same rendered files")
        self.result["deployed_files"] = len(deployed_files(self.fleet.targets))

    def noop(self) -> None:
        assert self.controller is not None
        controller = self.controller
        fetch = self.fetch_floor = FetchFloor(self.root / "fetch-floor.git", self.fleet.bare)
        wall: list[float] = []
        cpu: list[float] = []
        floor: list[float] = []
        for _ in range(self.opts.noop_runs):
            with timed(wall, cpu):
                report = self.cycle(controller)
            if report.outcomes:
                raise RuntimeError(f"no-op cycle reconciled {len(report.outcomes)} environments")
            floor.append(fetch.fetch())
        self.figures["noop"] = figure(wall, cpu, floor, "git fetch of an unchanged remote")
        log(f"{self.label}: no-op cycle {median(wall):.3f}s (fetch floor {median(floor):.3f}s)")

        paths = deployed_files(self.fleet.targets)
        wall, cpu, floor = [], [], []
        for _ in range(self.opts.runs):
            controller.last_drift_check = None
            with timed(wall, cpu):
                report = self.cycle(controller)
            if len(report.outcomes) != self.envs or any(o.changed for o in report.outcomes.values()):
                raise RuntimeError("the drift check did not look at every environment, or changed something")
            floor.append(rehash_floor(paths))
            log(f"{self.label}: no-op cycle with drift check {wall[-1]:.2f}s, re-hash floor {floor[-1]:.2f}s")
        self.figures["noop_drift"] = figure(wall, cpu, floor, "read + sha256 of every deployed file")

    def incremental(self) -> None:
        assert self.controller is not None
        controller, bump = self.controller, self.bump
        wall: list[float] = []
        cpu: list[float] = []
        floor: list[float] = []
        stage_envs = self._bump_envs()
        for i in range(self.opts.runs):
            version = bump.versions[(i + 1) % 2]
            self.fleet.set_version(bump, version)
            self.fleet.commit(f"{bump.application} {version} in {bump.stage}")
            with timed(wall, cpu):
                report = self.cycle(controller)
            changed = [n for n, o in report.outcomes.items() if o.changed]
            if sorted(changed) != stage_envs:
                raise RuntimeError(f"incremental cycle changed {len(changed)} environments, {len(stage_envs)} expected")
            fetched = self.fetch_floor.fetch()
            seconds, _written, units = self.write_floor(f"incr{i}", stage_envs, bump.application)
            floor.append(fetched + seconds)
            self.result["incremental_units"] = units
            log(
                f"{self.label}: incremental cycle {wall[-1]:.2f}s ({len(report.outcomes)} environments), "
                f"floor {floor[-1]:.3f}s"
            )
        self.current_version = bump.versions[self.opts.runs % 2]
        self.figures["incremental"] = figure(
            wall, cpu, floor, "git fetch of the commit + write of the changed files only"
        )

    def _bump_envs(self) -> list[str]:
        assert self.controller is not None and self.controller.good is not None
        repo = self.controller.good.repo
        bump = self.bump
        return sorted(
            n
            for n, e in repo.environments.items()
            if e.stage == bump.stage and bump.application in repo.desired_versions(e)
        )

    def latency(self) -> None:
        """Commit-to-live through the webhook path: from the push of a one-stage bump to the new version running on
        every environment of the stage (each target's inventory says so: what a user of the target would see),
        then to the status branch saying Synced (the status commit closes the same cycle)."""
        assert self.controller is not None
        controller, bump, fleet = self.controller, self.bump, self.fleet
        finished = threading.Event()
        reports: list[Any] = []

        def ended(report: Any) -> None:
            reports.append(report)
            finished.set()

        controller.listeners.append(ended)
        stop = threading.Event()
        thread = threading.Thread(target=controller.run_forever, args=(stop,), name="bench-run-forever", daemon=True)
        thread.start()
        finished.wait(600)  # the first cycle of run_forever (nothing to do)
        incremental = self.figures["incremental"]["median_s"] or 10.0
        deadline_s = max(60.0, 10 * incremental)
        inventories = self._inventories()
        samples: dict[str, list[float]] = {"live": [], "watched": [], "status": []}
        breakdown: list[dict[str, float]] = []
        started = time.perf_counter()
        version = self.current_version
        try:
            for i in range(self.opts.latency_commits):
                if i >= 3 and time.perf_counter() - started > self.opts.latency_budget:
                    self.notes.append(
                        f"commit-to-live: {i} commits instead of {self.opts.latency_commits} "
                        f"(time budget {self.opts.latency_budget:.0f}s)"
                    )
                    break
                version = bump.versions[1] if version == bump.versions[0] else bump.versions[0]
                fleet.set_version(bump, version)
                before = fleet.status_head()
                finished.clear()
                fleet.commit(f"{bump.application} {version} in {bump.stage} (latency {i})")
                t0 = time.perf_counter()
                controller.trigger()
                live = _wait_applied(inventories, version, t0, deadline_s)
                samples["live"].append(max(live.values()))
                samples["watched"].append(live[bump.environment])
                samples["status"].append(self._wait_status(bump, version, before, t0, deadline_s))
                finished.wait(deadline_s)  # the cycle's end (status is written just before it)
                if reports:  # where this commit's time went: waiting for the cycle, then its phases
                    last = reports[-1]
                    breakdown.append({"wait": max(0.0, last.started - t0), **last.timings})
        finally:
            stop.set()
            controller.wake.set()
            thread.join(600)
        self._latency_figure(samples, breakdown, len(inventories))

    def _inventories(self) -> dict[str, list[str]]:
        """Each environment of the bump's stage: the inventory file of the bumped application on its targets."""
        assert self.controller is not None and self.controller.good is not None
        repo, bump = self.controller.good.repo, self.bump
        application = repo.applications[bump.application]
        return {
            name: [str(self.fleet.targets / t / name / bump.application / INVENTORY)
                   for t in targets_of(repo.environments[name], application)]
            for name in self._bump_envs()
        }  # fmt: skip

    def _latency_figure(self, samples: dict[str, list[float]], breakdown: list[dict[str, float]], envs: int) -> None:
        live, status = samples["live"], samples["status"]
        self.figures["latency"] = {
            "p50_s": percentile(live, 50),
            "p95_s": percentile(live, 95),
            "max_s": max(live) if live else None,
            "samples_s": live,
            "what": f"commit pushed -> the new version applied on all {envs} environments of the stage",
            "watched_p50_s": percentile(samples["watched"], 50),  # one environment of the stage (the bench's watched)
            "watched_samples_s": samples["watched"],
            # commit pushed -> the status branch says Synced at the new version (the cycle's end)
            "status_p50_s": percentile(status, 50),
            "status_p95_s": percentile(status, 95),
            "status_samples_s": status,
            "floor": "incremental floor (git fetch of the commit + write of the changed files)",
            "floor_median_s": self.figures["incremental"]["floor_median_s"],
            # the median seconds of each phase over the samples: wait (trigger to cycle start), fetch, load, plan,
            # reconcile (decisions, drift check of the changed environments, applies), status (commit and push)
            "breakdown_s": {
                phase: round(statistics.median(b.get(phase, 0.0) for b in breakdown), 4)
                for phase in ("wait", "fetch", "load", "plan", "reconcile", "status", "after")
            } if breakdown else {},
        }  # fmt: skip
        fig = self.figures["latency"]
        known = fig["p50_s"] is not None and fig["floor_median_s"]
        fig["ratio"] = fig["p50_s"] / fig["floor_median_s"] if known else None
        log(
            f"{self.label}: commit-to-live (all {envs} environments) p50 {fig['p50_s']:.3f}s "
            f"p95 {fig['p95_s']:.3f}s; commit-to-status p50 {fig['status_p50_s']:.3f}s "
            f"p95 {fig['status_p95_s']:.3f}s over {len(live)} commits"
        )

    def _wait_status(self, bump: Bump, version: str, before: str | None, t0: float, deadline_s: float) -> float:
        seen = before
        while time.perf_counter() - t0 < deadline_s:
            head = self.fleet.status_head()
            if head is not None and head != seen:
                seen = head
                doc = self.fleet.env_status(bump.environment, head)
                app = ((doc or {}).get("applications") or {}).get(bump.application) or {}
                if app.get("live") == version and app.get("phase") == "Synced":
                    return time.perf_counter() - t0
            time.sleep(0.01)
        raise RuntimeError(f"{bump.application} {version} not live in {bump.environment} after {deadline_s:.0f}s")

    def memory(self) -> None:
        hwm = proc_status("VmHWM")
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak = hwm if hwm is not None else maxrss
        floor = self.rss_model
        self.figures["peak_rss"] = {
            "peak_mb": peak,
            "ru_maxrss_mb": maxrss,
            "floor": "RSS after imports and one loaded model (no controller yet)",
            "floor_mb": floor,
            "ratio": peak / floor if floor else None,
        }
        log(f"{self.label}: peak RSS {peak:.0f} MiB (model floor {floor or 0:.0f} MiB)")

    def close(self) -> None:
        if self.controller is not None:
            self.controller.close()
        if not self.opts.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def measure_size(opts: Options) -> dict[str, Any]:
    """Every figure for one fleet size (see the module docstring); the result is JSON-serialisable."""
    from reconciler.observability import logging as logs

    logs.configure(level="warning")
    size = Size(opts)
    wall_started = time.perf_counter()
    try:
        size.setup()
        size.load()
        size.cold()
        size.noop()
        size.incremental()
        size.latency()
        size.memory()
    finally:
        size.close()
    envs = size.result["environments"]
    cold = size.figures["cold"]["median_s"]
    size.result.update(
        figures=size.figures,
        per_environment_cold_ms=1000 * cold / envs,
        incremental_share_of_cold=size.figures["incremental"]["median_s"] / cold,
        notes=size.notes,
        runs={"runs": opts.runs, "cold": opts.cold_runs, "noop": opts.noop_runs, "concurrency": opts.concurrency},
        duration_s=time.perf_counter() - wall_started,
        pid=os.getpid(),
    )
    return size.result
