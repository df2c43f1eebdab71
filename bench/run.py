"""The performance harness: ``python -m bench.run [--sizes 235,1000,5000] [--runs N] [--quick] [--out DIR]``.

For each fleet size (235 environments: the committed example fleet; other sizes: synthetic fleets of the same
shape from :mod:`bench.fleetgen`) it starts one worker process (:func:`bench.measure.measure_size`, so each
size's peak RSS is its own) that measures, each as the median of several runs and each beside its floor:
load + validate, the cold cycle, the no-op cycle without and with the drift check, an incremental cycle (one
release bumped in one stage), commit-to-live latency through the webhook path (p50/p95 over 20 commits) and peak
RSS. Then it adds the Kubernetes throughput of ``bench/k8s_throughput.py`` when that script exists and runs (it
needs ``tools/kube-test-server start``), judges the issue's targets and writes ``DIR/results.json`` and
``DIR/results.md``. ``--quick`` measures one tiny fleet once (the smoke test). ``./dev bench`` runs this module.
Method and results: ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.measure import code_state
from bench.report import check_targets, markdown, missing_fields, scaling_of

PROJECT = Path(__file__).resolve().parents[1]
PLATFORMS, STAGES = 12, 5  # bench.fleetgen: environments = (branches + 12) x 5
QUICK = {"branches": 1, "apps": 5}  # 65 environments of 5 applications
MIB_PER_ENV = 4.0  # disk a size needs at its peak (targets + the write floor), per environment, with margin


def branches_for(envs: int) -> int:
    """The fleetgen branch count whose fleet has about ``envs`` environments (235 -> 35, 1,000 -> 188)."""
    branches = round(envs / STAGES) - PLATFORMS
    if branches < 1:
        raise argparse.ArgumentTypeError(f"{envs} environments: the smallest fleet has {(1 + PLATFORMS) * STAGES}")
    return branches


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes: a comma-separated list of numbers, not {text!r}") from None
    for n in sizes:
        branches_for(n)
    return sizes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        type=parse_sizes,
        default=[235, 1000],
        help="fleet sizes in environments (default 235,1000; 5000 takes hours on a small machine)",
    )
    p.add_argument("--runs", type=int, default=3, help="runs per figure (median; default 3)")
    p.add_argument(
        "--cold-runs",
        type=int,
        default=None,
        help="runs of the cold cycle (default: --runs up to 1,000 environments, 1 above)",
    )
    p.add_argument("--noop-runs", type=int, default=None, help="runs of the no-op cycle (default: max(5, --runs))")
    p.add_argument("--apps", type=int, default=60, help="applications of the synthetic fleets (default 60)")
    p.add_argument("--concurrency", type=int, default=4, help="the controller's concurrency (default 4)")
    p.add_argument("--latency-commits", type=int, default=20, help="commits for commit-to-live (default 20)")
    p.add_argument(
        "--latency-budget",
        type=float,
        default=900.0,
        help="seconds after which commit-to-live stops (at least 3 commits; default 900)",
    )
    p.add_argument("--quick", action="store_true", help="one tiny fleet (65 environments, 5 apps), one run each")
    p.add_argument("--out", type=Path, default=PROJECT / "bench" / "results", help="where results.json/.md go")
    p.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a new one in $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the scratch fleets (repos, targets) afterwards")
    p.add_argument("--no-k8s", action="store_true", help="skip bench/k8s_throughput.py")
    p.add_argument("--no-metrics", action="store_true", help="run the controller without PrometheusMetrics")
    p.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="a previous results.json: its sizes not measured now are reported too (e.g. add 5000 to 235,1000)",
    )
    # internal: one size in this process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--branches", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    return p


# --- the machine and the code ------------------------------------------------------------------------------------
def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info(workdir: Path) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kib = next(
        (int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal:")), 0
    )
    disk = "unknown"
    done = subprocess.run(["df", "-PT", str(workdir)], capture_output=True, text=True, check=False)
    if done.returncode == 0 and len(done.stdout.splitlines()) > 1:
        device, fstype, size_kib, *_ = done.stdout.splitlines()[1].split()
        name = Path(device).name
        rotational = _read(f"/sys/block/{name}/queue/rotational").strip()
        kind = {"0": "non-rotational", "1": "reported rotational"}.get(rotational, "")
        disk = f"{fstype} on {device} ({int(size_kib) / 1024**2:.0f} GiB{', ' + kind if kind else ''})"
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    import yaml

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": mem_kib / 1024**2,
        "disk": disk,
        "python": platform.python_version(),
        "git": git_version,
        "libyaml": bool(getattr(yaml, "__with_libyaml__", False)),
        "loadavg_start": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


# --- Kubernetes ---------------------------------------------------------------------------------------------------
def kubernetes(skip: str | None) -> dict[str, Any]:
    """The result of ``bench/k8s_throughput.py`` (its last stdout line, when JSON), or why the row is skipped."""
    script = PROJECT / "bench" / "k8s_throughput.py"
    if skip:
        return {"status": "skipped", "note": skip}
    if not script.exists():
        return {"status": "skipped", "note": "bench/k8s_throughput.py does not exist yet"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench.k8s_throughput"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"status": "skipped", "note": "bench/k8s_throughput.py timed out after 30 min"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {
            "status": "skipped",
            "note": f"bench/k8s_throughput.py exited {done.returncode} (needs tools/kube-test-server start): {tail}",
        }
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    summary = (
        ", ".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items())
        if isinstance(result, dict)
        else (lines[-1][:300] if lines else "no output")
    )
    return {"status": "ok", "script": "bench/k8s_throughput.py", "result": result, "summary": summary}


# --- orchestration ------------------------------------------------------------------------------------------------
def run_worker(args: argparse.Namespace) -> int:
    from bench.measure import Options, measure_size

    assert args.branches is not None and args.json_out is not None
    opts = Options(
        branches=args.branches,
        apps=args.apps,
        runs=args.runs,
        cold_runs=args.cold_runs or args.runs,
        noop_runs=args.noop_runs or max(5, args.runs),
        concurrency=args.concurrency,
        latency_commits=args.latency_commits,
        latency_budget=args.latency_budget,
        workdir=args.workdir,
        keep=args.keep,
        metrics=not args.no_metrics,
    )
    result = measure_size(opts)
    result["options"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()}
    args.json_out.write_text(json.dumps(result, indent=2))
    return 0


def worker_command(
    args: argparse.Namespace,
    branches: int,
    apps: int,
    runs: int,
    cold_runs: int,
    noop_runs: int,
    json_out: Path,
    workdir: Path,
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "bench.run",
        "--worker",
        "--branches",
        str(branches),
        "--apps",
        str(apps),
        "--runs",
        str(runs),
        "--cold-runs",
        str(cold_runs),
        "--noop-runs",
        str(noop_runs),
        "--concurrency",
        str(args.concurrency),
        "--latency-commits",
        str(args.latency_commits),
        "--latency-budget",
        str(args.latency_budget),
        "--workdir",
        str(workdir),
        "--json-out",
        str(json_out),
    ]
    return cmd + (["--keep"] if args.keep else []) + (["--no-metrics"] if args.no_metrics else [])


def reuse_sizes(path: Path, measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``measured`` plus the sizes of the results file ``path`` that were not measured now, by size."""
    previous = json.loads(path.read_text())
    done = {s["environments"] for s in measured}
    reused = []
    for size in previous.get("sizes", []):
        if size["environments"] not in done:
            note = (
                f"measured in an earlier run ({previous.get('started', '?')}, code {previous['code']['commit'][:12]})"
            )
            size = {**size, "notes": [*size.get("notes", []), note], "reused_from": previous.get("started")}
            reused.append(size)
    return sorted(measured + reused, key=lambda s: int(s["environments"]))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        return run_worker(args)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    own_workdir = args.workdir is None
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="reconciler-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(workdir)
    code = code_state()  # at the start: each size records its own too (bench.measure)
    if args.quick:
        plan = [(QUICK["branches"], QUICK["apps"])]
        runs = cold_runs = noop_runs = 1
        latency_commits = 3
    else:
        plan = [(branches_for(n), args.apps) for n in args.sizes]
        runs, latency_commits = args.runs, args.latency_commits
        noop_runs = args.noop_runs or max(5, runs)
    args.latency_commits = latency_commits
    sizes: list[dict[str, Any]] = []
    skipped: list[str] = []
    try:
        for branches, apps in plan:
            envs = (branches + PLATFORMS) * STAGES
            if not args.quick:
                cold_runs = args.cold_runs or (runs if envs <= 1000 else 1)
            free_mib = shutil.disk_usage(workdir).free / 1024**2
            if free_mib < envs * MIB_PER_ENV:
                skipped.append(
                    f"{envs} environments skipped: {free_mib:.0f} MiB free in {workdir}, "
                    f"about {envs * MIB_PER_ENV:.0f} MiB needed"
                )
                print(skipped[-1], file=sys.stderr)
                continue
            json_out = workdir / f"size-{envs}.json"
            cmd = worker_command(args, branches, apps, runs, cold_runs, noop_runs, json_out, workdir)
            print(f"[bench] {envs} environments: {' '.join(cmd[1:])}", flush=True)
            done = subprocess.run(cmd, cwd=PROJECT, check=False)
            if done.returncode != 0:
                print(f"[bench] the worker for {envs} environments failed (exit {done.returncode})", file=sys.stderr)
                return 1
            sizes.append(json.loads(json_out.read_text()))
    finally:
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.reuse is not None:
        sizes = reuse_sizes(args.reuse, sizes)
    if not sizes:
        print("[bench] nothing measured", file=sys.stderr)
        return 1
    machine["loadavg_end"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    scaling = scaling_of(sizes)
    if skipped:
        sizes[-1].setdefault("notes", []).extend(skipped)
    k8s = kubernetes("not run in --quick mode" if args.quick else "--no-k8s" if args.no_k8s else None)
    if k8s["status"] != "ok" and args.reuse is not None:
        previous = json.loads(args.reuse.read_text()).get("kubernetes", {})
        if previous.get("status") == "ok":
            k8s = {**previous, "note": f"from {args.reuse} (this run: {k8s['note']})"}
    doc: dict[str, Any] = {
        "schema": 1,
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "code": code,
        "options": {
            "sizes": [s["environments"] for s in sizes],
            "runs": runs,
            "quick": args.quick,
            "concurrency": args.concurrency,
            "latency_commits": latency_commits,
        },
        "sizes": sizes,
        "scaling": scaling,
        "kubernetes": k8s,
        "targets": check_targets(sizes, scaling, k8s),
    }
    missing = missing_fields(doc)
    if missing:
        print(f"[bench] incomplete results: {missing}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    table = markdown(doc)
    (args.out / "results.md").write_text(table)
    print(table)
    print(f"[bench] wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
