"""Cycles of a fleet whose Kubernetes components are Kustomize overlays, beside their floor (issue 17).

``python -m bench.kustomize_cycles [--runs N] [--out FILE]``: the committed example fleet (235 environments, 60
applications) with every Kubernetes component turned into a Kustomize base (its three templates, the image named
without a tag) and one overlay per stage (``kustomize: kustomize/overlays/${env.stage}``, ``substitute: true``), in
a real Git repository, local targets; the same fleet with its templates is measured beside it. Measured, each the
median of ``--runs``: the cold cycle (a new controller:
empty render cache, empty targets) and the incremental cycle (one release bumped in one stage). The floor of each
is the same ``kubectl kustomize`` renders alone: every distinct (overlay, wrapper) the cycle rendered, run through a
fresh renderer with the controller's concurrency. The cycle minus its floor is what the controller adds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from bench.fleet import BenchFleet
from reconciler.commands.common import load_config
from reconciler.commands.run import build_controller
from reconciler.core.plan import Phase
from reconciler.engine.controller import Controller, CycleReport
from reconciler.source.kustomize import KubectlKustomize

K = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
STAGES = ("dev", "integration", "recette", "preproduction", "production")


class Recording:
    """The controller's renderer, recording each distinct call (what the floor replays)."""

    def __init__(self, inner: KubectlKustomize) -> None:
        self.inner = inner
        self.calls: dict[tuple[str, bytes, tuple[str, ...]], Mapping[str, bytes]] = {}

    def __call__(self, files: Mapping[str, bytes], overlay: str, wrapper: bytes) -> bytes:
        self.calls.setdefault((overlay, wrapper, tuple(sorted(files))), dict(files))
        return self.inner(files, overlay, wrapper)


def kustomized(work: Path) -> set[str]:
    """Turn every templated Kubernetes component of the fleet in ``work`` into a base + 5 overlays; the
    applications changed."""
    images = _images(work)
    apps: set[str] = set()
    for app_file in sorted(work.glob("applications/*/application.yaml")):
        doc = yaml.safe_load(app_file.read_text())
        changed = False
        for comp in doc["spec"]["components"]:
            if "templates" not in comp or comp["target"] != "kubernetes":
                continue
            if any("sops:" in (app_file.parent / t).read_text() for t in comp["templates"]):
                continue  # (a SOPS-encrypted Secret stays a template: decrypted per file at apply time)
            base = app_file.parent / "kustomize" / comp["name"] / "base"
            base.mkdir(parents=True)
            for template in comp.pop("templates"):
                text = (app_file.parent / template).read_text()
                image = images.get((doc["metadata"]["name"], comp["name"]), "")
                text = text.replace("${component.image}", image.rpartition(":")[0] or image)
                (base / Path(template).name).write_text(text)
            files = sorted(p.name for p in base.iterdir())
            (base / "kustomization.yaml").write_text(K + "resources:\n" + "".join(f"- {f}\n" for f in files))
            for stage in STAGES:
                overlay = base.parent / "overlays" / stage
                overlay.mkdir(parents=True)
                (overlay / "kustomization.yaml").write_text(K + "resources:\n- ../../base\n")
            comp["kustomize"] = f"kustomize/{comp['name']}/overlays/${{env.stage}}"
            comp["substitute"] = True
            changed = True
            apps.add(doc["metadata"]["name"])
        if changed:
            app_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    return apps


def _images(work: Path) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for path in sorted(work.glob("releases/*/*.yaml")):
        spec = yaml.safe_load(path.read_text())["spec"]
        for name, comp in (spec.get("components") or {}).items():
            if comp.get("image"):
                found[(spec["application"], name)] = comp["image"]
    return found


def fresh_controller(fleet: BenchFleet, name: str, concurrency: int) -> tuple[Controller, Recording]:
    fleet.reset_targets_and_status()
    state = fleet.root / f"state-{name}"
    shutil.rmtree(state, ignore_errors=True)
    config = load_config(str(fleet.write_config(name, concurrency, "0s", state)))
    controller = build_controller(config)
    recording = Recording(getattr(controller, "kustomize", None) or KubectlKustomize())
    if hasattr(controller, "kustomize"):  # (the code before issue 17 has none: --shapes templates measures it)
        controller.kustomize = recording
    controller.restore()
    return controller, recording


def floor(calls: Mapping[tuple[str, bytes, tuple[str, ...]], Mapping[str, bytes]], concurrency: int) -> float:
    """Seconds to run the same renders alone, ``concurrency`` at a time, with an empty cache."""
    renderer = KubectlKustomize()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda item: renderer(item[1], item[0][0], item[0][1]), calls.items()))
    return time.perf_counter() - started


def measure(runs: int, concurrency: int, root: Path, overlays: bool) -> dict[str, Any]:
    """The cold and incremental figures of the example fleet, its Kubernetes components as Kustomize overlays
    (``overlays``) or as the templates it has."""
    fleet = BenchFleet(root, 35, 60)
    apps = kustomized(fleet.work) if overlays else set()
    if overlays:
        fleet.commit("Kubernetes components as Kustomize overlays")
    bump = fleet.find_bump("dev", among=apps or None)
    cold: list[tuple[float, float, int]] = []
    incremental: list[tuple[float, float, int]] = []
    for run in range(runs):
        controller, recording = fresh_controller(fleet, f"cold{run}", concurrency)
        started = time.perf_counter()
        report = controller.cycle("manual")
        seconds = time.perf_counter() - started
        _check(report, "cold")
        cold.append((seconds, floor(recording.calls, concurrency), len(recording.calls)))
        recording.calls.clear()
        fleet.set_version(bump, bump.versions[(run + 1) % 2])
        fleet.commit(f"bump {bump.application}")
        started = time.perf_counter()
        report = controller.cycle("poll")
        seconds = time.perf_counter() - started
        _check(report, "incremental")
        incremental.append((seconds, floor(recording.calls, concurrency), len(recording.calls)))
        controller.close()
    return {"kustomize_applications": len(apps), "bump": f"{bump.application} in {bump.stage}",
            "cold": _figure(cold), "incremental": _figure(incremental)}  # fmt: skip


def _check(report: CycleReport, what: str) -> None:
    bad = [f"{o.environment}: {o.phase}: {o.message}" for o in report.outcomes.values()
           if o.phase not in (Phase.SYNCED, Phase.BLOCKED)]  # fmt: skip
    if report.source_error or report.invalid or bad:
        raise RuntimeError(f"{what} cycle failed: {report.source_error or report.invalid[:3] or bad[:3]}")


def _figure(runs: list[tuple[float, float, int]]) -> dict[str, Any]:
    seconds = statistics.median(r[0] for r in runs)
    floor_s = statistics.median(r[1] for r in runs)
    return {
        "seconds": round(seconds, 2),
        "floor_seconds": round(floor_s, 2),
        "renders": runs[0][2],
        "over_floor_seconds": round(seconds - floor_s, 2),
        "runs": [[round(a, 2), round(b, 2), n] for a, b, n in runs],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    p.add_argument("--shapes", default="kustomize,templates", help="which fleets (kustomize, templates)")
    args = p.parse_args()
    result: dict[str, Any] = {"concurrency": args.concurrency, "runs": args.runs}
    for shape in args.shapes.split(","):
        overlays = shape == "kustomize"
        with tempfile.TemporaryDirectory(prefix=f"bench-{shape}-") as tmp:
            result[shape] = measure(args.runs, args.concurrency, Path(tmp), overlays)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
