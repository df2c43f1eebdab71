"""Turn the benchmark's JSON into verdicts against the issue's targets and a Markdown table.

Called by :mod:`bench.run` after every size has been measured; ``docs/performance.md`` quotes the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Every size record holds these figures, and each figure these fields (the smoke test checks them all).
FIGURE_FIELDS: dict[str, tuple[str, ...]] = {
    "load": ("median_s", "runs_s", "cpu_median_s", "floor", "floor_median_s", "ratio"),
    "cold": ("median_s", "runs_s", "cpu_median_s", "floor", "floor_median_s", "ratio"),
    "noop": ("median_s", "runs_s", "cpu_median_s", "floor", "floor_median_s", "ratio"),
    "noop_drift": ("median_s", "runs_s", "cpu_median_s", "floor", "floor_median_s", "ratio"),
    "incremental": ("median_s", "runs_s", "cpu_median_s", "floor", "floor_median_s", "ratio"),
    "latency": (
        "p50_s",
        "p95_s",
        "max_s",
        "samples_s",
        "watched_p50_s",
        "status_p50_s",
        "status_p95_s",
        "status_samples_s",
        "floor",
        "floor_median_s",
        "ratio",
    ),
    "peak_rss": ("peak_mb", "ru_maxrss_mb", "floor", "floor_mb", "ratio"),
}
SIZE_FIELDS = (
    "label",
    "environments",
    "applications",
    "units",
    "files",
    "figures",
    "per_environment_cold_ms",
    "incremental_share_of_cold",
    "runs",
    "notes",
)
TOP_FIELDS = ("machine", "code", "options", "sizes", "scaling", "kubernetes", "targets")


def missing_fields(doc: Mapping[str, Any]) -> list[str]:
    """The fields of a results document that are absent (an empty list when it is complete)."""
    missing = [f for f in TOP_FIELDS if f not in doc]
    for i, size in enumerate(doc.get("sizes") or []):
        missing += [f"sizes[{i}].{f}" for f in SIZE_FIELDS if f not in size]
        figures = size.get("figures") or {}
        for name, fields in FIGURE_FIELDS.items():
            if name not in figures:
                missing.append(f"sizes[{i}].figures.{name}")
                continue
            missing += [f"sizes[{i}].figures.{name}.{f}" for f in fields if f not in figures[name]]
    if not doc.get("sizes"):
        missing.append("sizes[0]")
    return missing


# --- targets --------------------------------------------------------------------------------------------------------
def _target(
    name: str, size: str, value: float | None, limit: float, unit: str, text: str, at_least: bool = False
) -> dict[str, Any]:
    return {
        "target": name,
        "size": size,
        "value": value,
        "limit": limit,
        "unit": unit,
        "text": text,
        "ok": value is not None and (value >= limit if at_least else value <= limit),
    }


def check_targets(
    sizes: Sequence[Mapping[str, Any]], scaling: Mapping[str, Any], kubernetes: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The issue's targets (performance round two), judged on the measured sizes (the 235-environment ones on the
    smallest size, the scaling ones on the largest) and, when it ran, ``bench/k8s_throughput.py`` beside kubectl."""
    out: list[dict[str, Any]] = []
    shapes = ((kubernetes or {}).get("result") or {}).get("shapes") or {}
    for shape, fig in shapes.items():
        if not isinstance(fig, Mapping) or "cold_vs_kubectl" not in fig:
            continue
        label = f"{fig.get('applications')} {shape} apps via {fig.get('via', 'driver')}"
        out.append(_target(f"Kubernetes {shape}: cold cycle / kubectl apply --server-side loop", label,
                           fig.get("cold_vs_kubectl"), 1.0, "x", "> 1x (faster)", at_least=True))  # fmt: skip
        out.append(_target(f"Kubernetes {shape}: no-op cycle / kubectl's no-op re-apply", label,
                           fig.get("noop_vs_kubectl"), 20.0, "x", ">= 20x", at_least=True))  # fmt: skip
    if not sizes:
        return out
    small = sizes[0]
    f, label = small["figures"], small["label"]
    out.append(_target("incremental cycle / its floor", label, f["incremental"]["ratio"], 1.5, "x", "<= 1.5x floor"))
    latency = f["latency"]
    out.append(_target("commit-to-live p50 (the whole stage)", label, latency["p50_s"], 0.4, "s", "<= 0.4 s"))
    out.append(_target("commit-to-live p95 (the whole stage)", label, latency["p95_s"], 0.8, "s", "<= 0.8 s"))
    if len(sizes) > 1:
        large = sizes[-1]
        g, big = large["figures"], large["label"]
        out.append(_target("per-environment cold cost, largest / smallest fleet", big,
                           scaling.get("per_environment_cold_ratio"), 1.0, "x", "<= 1.0x"))  # fmt: skip
        out.append(_target("peak RSS", big, g["peak_rss"]["peak_mb"], 1.2e9 / 2**20, "MiB", "<= 1.2 GB"))
        out.append(_target("no-op cycle, no drift check", big, g["noop"]["median_s"], 0.1, "s", "< 100 ms"))
        out.append(_target("first drift check / its re-hash floor", big, first_ratio(g["noop_drift"]), 1.5, "x",
                           "<= 1.5x floor"))  # fmt: skip
    return out


def first_ratio(fig: Mapping[str, Any]) -> float | None:
    """The first run of a figure over the first run of its floor (the first drift check after a cold cycle)."""
    runs, floors = fig.get("runs_s") or [], fig.get("floor_runs_s") or []
    return runs[0] / floors[0] if runs and floors and floors[0] else None


def scaling_of(sizes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    if len(sizes) < 2:
        return {"note": "one size measured: no scaling figure"}
    small, large = sizes[0], sizes[-1]
    ratio = large["per_environment_cold_ms"] / small["per_environment_cold_ms"]
    return {
        "smallest": small["label"],
        "largest": large["label"],
        "per_environment_cold_ratio": ratio,
        "per_environment_cold_cpu_ratio": cpu_per_env_ms(large) / cpu_per_env_ms(small),
        "per_environment_cold_ms": {s["label"]: s["per_environment_cold_ms"] for s in sizes},
        "per_environment_cold_cpu_ms": {s["label"]: cpu_per_env_ms(s) for s in sizes},
    }


def cpu_per_env_ms(size: Mapping[str, Any]) -> float:
    """Process CPU of the cold cycle per environment (less sensitive to the machine's load than wall time)."""
    return float(1000 * size["figures"]["cold"]["cpu_median_s"] / size["environments"])


# --- Markdown -------------------------------------------------------------------------------------------------------
def _s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s" if seconds < 100 else f"{seconds:.0f} s"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"


def _cell(fig: Mapping[str, Any]) -> str:
    return f"{_s(fig['median_s'])} ({_x(fig['ratio'])} of {_s(fig['floor_median_s'])})"


ROWS = (
    ("load", "load + validate", "-", "YAML parse (C loader)"),
    ("cold", "cold cycle (everything applied, status committed)", "<= 3x floor", "write the rendered files"),
    ("noop", "no-op cycle, no drift check", "< 100 ms", "no-op git fetch"),
    ("noop_drift", "no-op cycle with drift check", "<= 1.5x floor", "read + sha256 every deployed file"),
    ("incremental", "incremental cycle (1 release, 1 stage)", "<= 1.5x floor", "fetch + write the changed files"),
)


def k8s_summary(k8s: Mapping[str, Any]) -> str:
    """``bench/k8s_throughput.py``'s JSON summary in one cell (its own figures when it has the expected keys)."""
    r = k8s.get("result")
    if not isinstance(r, dict):
        return str(k8s.get("summary", "-"))
    found = r.get("shapes")
    shapes: dict[str, Any] = found if isinstance(found, dict) else {"realistic": r}
    what = {"configmap": "one ~2 KB ConfigMap per application", "realistic": "the example dev stage"}
    cells = []
    for shape, f in shapes.items():
        try:
            cold, warm = f["cold_apps_per_s"], f["warm_apps_per_s"]
            floor_cold, floor_warm = f["floor_cold_apps_per_s"], f["floor_warm_apps_per_s"]
            cells.append(
                f"{shape} ({what.get(shape, shape)}), {f['applications']} applications ({f['objects']} objects) via "
                f"{f.get('via', 'driver')}: cold {cold:.1f} apps/s ({floor_cold / cold:.2f}x the floor, "
                f"{floor_cold:.1f} apps/s), unchanged {warm:.1f} apps/s ({floor_warm / warm:.2f}x of "
                f"{floor_warm:.1f} apps/s); {f['requests_per_app_cold']} / {f['requests_per_app_warm']} requests per "
                "application"
            )
        except (KeyError, TypeError, ZeroDivisionError):
            cells.append(f"{shape}: " + ", ".join(f"{k}: {v}" for k, v in f.items()))
    return "; ".join(cells)


def markdown(doc: Mapping[str, Any]) -> str:
    sizes = doc["sizes"]
    head = "| figure | target | floor | " + " | ".join(s["label"] for s in sizes) + " |"
    rule = "|---|---|---|" + "---|" * len(sizes)
    lines = [head, rule]
    for key, title, target, floor in ROWS:
        cells = [_cell(s["figures"][key]) for s in sizes]
        if key == "incremental":
            cells = [f"{c}; {s['incremental_share_of_cold']:.0%} of cold" for c, s in zip(cells, sizes, strict=True)]
        lines.append(f"| {title} | {target} | {floor} | " + " | ".join(cells) + " |")
    cells = [
        f"{_s(s['figures']['latency']['p50_s'])} / {_s(s['figures']['latency']['p95_s'])} "
        f"({len(s['figures']['latency']['samples_s'])} commits)"
        for s in sizes
    ]
    lines.append("| commit-to-live p50 / p95 (new version on every environment of the stage) | <= 0.4 s / <= 0.8 s | "
                 "incremental floor | " + " | ".join(cells) + " |")  # fmt: skip
    cells = [
        f"{_s(s['figures']['latency'].get('watched_p50_s'))} / {_s(s['figures']['latency'].get('status_p50_s'))} / "
        f"{_s(s['figures']['latency'].get('status_p95_s'))}"
        for s in sizes
    ]
    lines.append("| commit-to-live p50 of one environment / commit-to-status p50 / p95 | status within the cycle | - | "
                 + " | ".join(cells) + " |")  # fmt: skip
    cells = [
        ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in (s["figures"]["latency"].get("breakdown_s") or {}).items())
        or "-"
        for s in sizes
    ]
    lines.append("| commit-to-live, median by phase | - | - | " + " | ".join(cells) + " |")
    base = sizes[0]["per_environment_cold_ms"]
    cells = [f"{s['per_environment_cold_ms']:.0f} ms ({s['per_environment_cold_ms'] / base:.2f}x)" for s in sizes]
    lines.append("| cold cost per environment | largest <= 1.0x smallest | - | " + " | ".join(cells) + " |")
    cpu_base = cpu_per_env_ms(sizes[0])
    cells = [f"{cpu_per_env_ms(s):.0f} ms ({cpu_per_env_ms(s) / cpu_base:.2f}x)" for s in sizes]
    lines.append("| cold CPU per environment | (same, on CPU time) | - | " + " | ".join(cells) + " |")
    cells = [
        f"{s['figures']['peak_rss']['peak_mb']:.0f} MiB ({_x(s['figures']['peak_rss']['ratio'])} of "
        f"{s['figures']['peak_rss']['floor_mb'] or 0:.0f} MiB)"
        for s in sizes
    ]
    target = "< 300 MB (235) / <= 1.2 GB (5,000)"
    lines.append(f"| peak RSS | {target} | RSS of the loaded model | " + " | ".join(cells) + " |")
    cells = [f"{s['figures']['cold']['cpu_median_s']:.1f} s" for s in sizes]
    lines.append("| cold cycle, process CPU | - | - | " + " | ".join(cells) + " |")
    cells = [f"{s['figures']['noop_drift']['cpu_median_s']:.1f} s" for s in sizes]
    lines.append("| drift-check cycle, process CPU | - | - | " + " | ".join(cells) + " |")
    cells = [f"{s['units']} units, {s['files']} files" for s in sizes]
    lines.append("| work (cold) | - | - | " + " | ".join(cells) + " |")
    k8s = doc["kubernetes"]
    if k8s.get("status") == "ok":
        lines.append(f"| Kubernetes driver ({k8s.get('script')}) | - | plain server-side apply | {k8s_summary(k8s)} |"
                     + " |" * (len(sizes) - 1))  # fmt: skip
    else:
        lines.append(f"| Kubernetes | - | - | skipped: {k8s.get('note')} |" + " |" * (len(sizes) - 1))
    verdicts = ["", "| target | fleet | measured | limit | verdict |", "|---|---|---|---|---|"]
    for t in doc["targets"]:
        value = t["value"]
        shown = "-" if value is None else (f"{value:.0%}" if t["unit"] == "" else f"{value:.2f} {t['unit']}")
        verdicts.append(f"| {t['target']} | {t['size']} | {shown} | {t['text']} | {'met' if t['ok'] else 'MISSED'} |")
    machine = doc["machine"]
    notes = [n for s in sizes for n in s.get("notes", [])]
    footer = [
        "",
        f"Machine: {machine.get('cpu_model')} x {machine.get('nproc')} cores, {machine.get('memory_gib', 0):.0f} GiB, "
        f"{machine.get('disk')}; load average {machine.get('loadavg_start')} at start, "
        f"{machine.get('loadavg_end')} at the end. Code: {doc['code'].get('commit', '?')[:12]}"
        + (" + uncommitted changes" if doc["code"].get("dirty") else "")
        + ". Runs per size: "
        + "; ".join(
            f"{s['environments']} envs: {s['runs']['runs']} ({s['runs']['cold']} cold, {s['runs']['noop']} no-op)"
            for s in sizes
        )
        + f"; concurrency {sizes[0]['runs']['concurrency']}. Cells: median (ratio of medians to the floor's median).",
        *(f"Note: {n}" for n in notes),
    ]
    return "\n".join(lines + verdicts + footer) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.report RESULTS.json [--write]``: its Markdown table, verdicts recomputed from the sizes."""
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    p.add_argument("results", type=Path)
    p.add_argument("--write", action="store_true", help="rewrite the JSON's verdicts and the .md next to it")
    args = p.parse_args(argv)
    doc = json.loads(args.results.read_text())
    doc["scaling"] = scaling_of(doc["sizes"])  # verdicts are a function of the sizes: recomputed with this code
    doc["targets"] = check_targets(doc["sizes"], doc["scaling"], doc.get("kubernetes"))
    table = markdown(doc)
    if args.write:
        args.results.write_text(json.dumps(doc, indent=2) + "\n")
        args.results.with_suffix(".md").write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
