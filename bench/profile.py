"""Profile the controller's cycles: ``python -m bench.profile [--size 235] [--concurrency 1] [--out DIR]``.

Builds the same benchmark fleet as :mod:`bench.run` (all targets ``local``) and runs, under :mod:`cProfile`, a
cold cycle, a no-op cycle without and with the drift check, and an incremental cycle (one release bumped in one
stage). cProfile only sees the thread that enabled it, so every environment worker thread gets its own profiler
(``reconcile_environment`` is wrapped) and the statistics are merged. With ``--concurrency 1`` (the default) the
attribution is clean; with more workers a blocking call's time includes waiting for the GIL.

Prints, per cycle: wall and CPU time, the time inside selected functions (fetch, load, render, observe, apply,
health, status write...), the time by module (``tottime`` summed per file / built-in) and the top functions; writes
``DIR/<cycle>.prof`` (``python -m pstats``, snakeviz) and ``DIR/profile.txt``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.fleet import BenchFleet
from bench.run import branches_for

# (label, file suffix, function name): cumulative time shown for each cycle
SELECTED = (
    ("cycle", "engine/controller.py", "cycle"),
    ("fetch", "source/gitrepo.py", "fetch"),
    ("load + validate", "engine/revision.py", "load"),
    ("input keys", "engine/revision.py", "input_key"),
    ("governance facts", "engine/governance.py", "facts"),
    ("reconcile (all environments)", "engine/reconcile.py", "reconcile_environment"),
    ("  render", "engine/reconcile.py", "render_desired"),
    ("    blob reads (git cat-file)", "source/gitrepo.py", "read"),
    ("  list owned applications", "drivers/local.py", "owned_applications"),
    ("  observe", "drivers/local.py", "observe"),
    ("  apply", "drivers/local.py", "apply"),
    ("    atomic_write", "drivers/local.py", "atomic_write"),
    ("  health", "drivers/local.py", "health"),
    ("status documents", "engine/publish.py", "write"),
    ("  YAML dump", "status/document.py", "dump"),
    ("  status commit + push", "status/store.py", "write"),
    ("metrics", "engine/controller.py", "_report_metrics"),
)


# built-ins whose self time is mostly waiting: the main thread for its workers, a worker for a lock or the GIL,
# git subprocesses (communicate -> poll, cat-file -> readline)
WAITING = ("acquire", "select.poll", "readline", "_thread.lock")


class ThreadProfiles:
    """One :class:`cProfile.Profile` per environment worker thread, installed by wrapping the reconcile call."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self.enabled = False

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return fn(*args, **kwargs)
            profile = getattr(self._local, "profile", None)
            if profile is None:
                profile = self._local.profile = cProfile.Profile()
                with self._lock:
                    self.profiles.append(profile)
            profile.enable()
            try:
                return fn(*args, **kwargs)
            finally:
                profile.disable()

        return wrapped

    def reset(self) -> None:
        with self._lock:
            for profile in self.profiles:
                profile.clear()


def by_module(stats: pstats.Stats, top: int) -> list[tuple[str, float]]:
    """``tottime`` summed per source file (built-ins per name), largest first."""
    totals: dict[str, float] = defaultdict(float)
    for (filename, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if filename == "~":
            waiting = any(w in name for w in WAITING)
            key = f"{name} (waiting)" if waiting else name
        else:
            parts = Path(filename).parts
            key = "/".join(parts[parts.index("reconciler") :]) if "reconciler" in parts else Path(filename).name
        totals[key] += tottime
    return sorted(totals.items(), key=lambda kv: -kv[1])[:top]


def selected(stats: pstats.Stats) -> list[tuple[str, float, int]]:
    found = []
    for label, suffix, func in SELECTED:
        cum, calls = 0.0, 0
        for (filename, _line, name), (cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            if name == func and filename.endswith(suffix) and ct > cum:  # the outermost of same-named functions
                cum, calls = ct, cc
        found.append((label, cum, calls))
    return found


def report(name: str, wall: float, cpu: float, stats: pstats.Stats, top: int) -> str:
    out = io.StringIO()
    out.write(f"\n=== {name}: wall {wall:.2f}s, process CPU {cpu:.2f}s ===\n")
    out.write("time inside (cumulative, summed over threads; calls):\n")
    for label, cum, calls in selected(stats):
        out.write(f"  {label:<34} {cum:9.3f}s  {calls:>9}\n")
    out.write("self time by module / built-in:\n")
    for key, seconds in by_module(stats, 15):
        out.write(f"  {key:<60} {seconds:9.3f}s\n")
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def memory_report(name: str, top: int = 20) -> str:
    """Peak traced memory during the cycle and the allocation sites still holding the most afterwards."""
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    out = io.StringIO()
    out.write(f"memory after {name}: {current / 2**20:.1f} MiB held, peak {peak / 2**20:.1f} MiB (traced)\n")
    for stat in tracemalloc.take_snapshot().statistics("lineno")[:top]:
        frame = stat.traceback[0]
        parts = Path(frame.filename).parts
        where = "/".join(parts[parts.index("reconciler") :]) if "reconciler" in parts else Path(frame.filename).name
        out.write(f"  {stat.size / 2**20:8.1f} MiB {stat.count:>9} blocks  {where}:{frame.lineno}\n")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=235, help="environments (default 235: the example fleet)")
    p.add_argument("--apps", type=int, default=60, help="applications (default 60)")
    p.add_argument("--concurrency", type=int, default=1, help="environment workers (default 1: clean attribution)")
    p.add_argument("--top", type=int, default=25, help="functions listed per cycle (default 25)")
    p.add_argument("--out", type=Path, default=Path("bench/results/profile"), help="where .prof files go")
    p.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a new one in $TMPDIR)")
    p.add_argument(
        "--memory",
        action="store_true",
        help="also trace allocations (tracemalloc): peak and what is still held after each cycle; slow",
    )
    args = p.parse_args(argv)

    import reconciler.engine.controller as controller_module
    import reconciler.engine.reconcile as reconcile_module
    from reconciler.commands.common import load_config
    from reconciler.commands.run import build_controller
    from reconciler.observability import logging as logs
    from reconciler.observability.metrics import PrometheusMetrics

    logs.configure(level="warning")
    threads = ThreadProfiles()
    controller_module.__dict__["reconcile_environment"] = threads.wrap(reconcile_module.reconcile_environment)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="reconciler-profile-"))
    args.out.mkdir(parents=True, exist_ok=True)
    text: list[str] = []
    try:
        fleet = BenchFleet(workdir / "fleet", branches_for(args.size), args.apps)
        bump = fleet.find_bump("dev")
        fleet.reset_targets_and_status()
        config = load_config(str(fleet.write_config("profile", args.concurrency, "24h", workdir / "state")))
        controller = build_controller(config, metrics=PrometheusMetrics())
        controller.restore()

        def profiled(name: str, before: Callable[[], None] | None = None) -> None:
            if before:
                before()
            threads.reset()
            main_profile = cProfile.Profile()
            threads.enabled = True
            c0, t0 = time.process_time(), time.perf_counter()
            main_profile.enable()
            controller.cycle()
            main_profile.disable()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            threads.enabled = False
            stats = pstats.Stats(main_profile)
            for profile in threads.profiles:
                if profile.getstats():  # a worker that ran nothing in this cycle
                    stats.add(profile)
            stats.dump_stats(str(args.out / f"{name}.prof"))
            text.append(report(name, wall, cpu, stats, args.top))
            if args.memory:
                text[-1] += memory_report(name)
            print(text[-1], flush=True)

        def force_drift() -> None:
            controller.last_drift_check = None

        def bump_release() -> None:
            fleet.set_version(bump, bump.versions[1])
            fleet.commit("bump")

        if args.memory:
            tracemalloc.start(1)
        profiled("cold")
        profiled("noop")
        profiled("noop_drift", force_drift)
        profiled("incremental", bump_release)
        controller.close()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    (args.out / "profile.txt").write_text("".join(text))
    print(f"wrote {args.out}/*.prof and {args.out / 'profile.txt'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
