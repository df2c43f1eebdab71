"""Kustomize and manifests components end to end (issue 17): a real releases repo, the controller as
``reconciler run --once`` runs it, local targets. The overlay is rendered with the release's image and the
environment's values; ``plan`` shows the rendered objects; an overlay that reaches outside the repository, asks
for Helm or an exec plugin, or renders more than the bound is refused with a clear error and nothing is applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.source import kustomize as runner
from tests.engine import Fleet

APPLICATION = "applications/ref/application.yaml"
K = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
BASE = {
    "applications/ref/k/base/kustomization.yaml": K + "resources: [configmap.yaml]\n",
    "applications/ref/k/base/configmap.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ref\ndata:\n"
    "  version: ${release.version}\n  environment: ${env.name}\n  image: placeholder\n",
    "applications/ref/k/overlays/dev/kustomization.yaml": K + "resources: [../../base]\nnamePrefix: dev-\n"
    "images:\n- name: registry.example.org/ref/api\n",
    "applications/ref/k/overlays/production/kustomization.yaml": K + "resources: [../../base]\n",
}
DEPLOYED = ("k8s-nord", "lille-dev", "ref", "api", "dev.yaml")


def _kustomized(fleet: Fleet, extra: dict[str, str] | None = None) -> str:
    app = (fleet.upstream.work / APPLICATION).read_text()
    app = app.replace(
        "templates: [templates/deployment.yaml]", "kustomize: k/overlays/${env.stage}\n      substitute: true"
    )
    files = {APPLICATION: app, **BASE, **(extra or {})}
    return fleet.commit({p: t.encode() for p, t in files.items()}, "ref as a kustomize overlay")


def test_an_overlay_per_stage_is_rendered_with_the_environment_values(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleet.once() == 0
    _kustomized(fleet)
    assert fleet.once() == 0, fleet.env_status("lille-dev")
    written = fleet.targets.joinpath(*DEPLOYED).read_text()
    ref = fleet.env_status("lille-dev")["applications"]["ref"]
    assert ref["phase"] == "Synced" and f"version: {ref['desired']}" in written, (ref, written)
    assert "name: dev-ref" in written and "environment: lille-dev" in written
    assert fleet.once() == 0 and fleet.targets.joinpath(*DEPLOYED).read_text() == written  # stable
    capsys.readouterr()
    main(["plan", "--repo", str(fleet.upstream.work), "--base", "HEAD~1", "--head", "HEAD", "--format", "json"])
    plan = json.loads(capsys.readouterr().out)
    diffs = [c["diff"] for e in plan["environments"] for c in e["changes"] if c["application"] == "ref"]
    assert diffs and all("+  name: dev-ref" in d or "name: ref" in d for d in diffs), diffs


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"applications/ref/k/overlays/dev/kustomization.yaml": K + "resources: [../../../../../../../etc]\n"},
            "applications/ref/k/overlays/dev/kustomization.yaml:3: path '../../../../../../../etc' leaves the repository",
        ),
        (
            {
                "applications/ref/k/overlays/dev/kustomization.yaml": K + "resources: [../../base]\nhelmCharts:\n"
                "- {name: redis, repo: 'https://charts.example.org'}\n"
            },
            "applications/ref/k/overlays/dev/kustomization.yaml:4: helmCharts: Helm inflation is not allowed",
        ),
        (
            {
                "applications/ref/k/overlays/dev/kustomization.yaml": K
                + "resources: [../../base]\ngenerators: [g.yaml]\n",
                "applications/ref/k/overlays/dev/g.yaml": "apiVersion: x.example.org/v1\nkind: Run\nmetadata:\n  name: g\n"
                "  annotations:\n    config.kubernetes.io/function: 'exec: {path: /bin/sh}'\n",
            },
            "applications/ref/k/overlays/dev/kustomization.yaml:4: generators: g.yaml is not a builtin plugin",
        ),
    ],
)
def test_a_forbidden_overlay_is_refused_with_file_and_line_and_nothing_is_applied(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], extra: dict[str, str], expected: str
) -> None:
    before = _first_good(fleet)
    _kustomized(fleet, {**extra, "applications/ref/k/base/configmap.yaml": BASE[
        "applications/ref/k/base/configmap.yaml"].replace("ref\n", "ref-changed\n", 1)})  # fmt: skip
    capsys.readouterr()
    assert fleet.once() == 1
    assert fleet.targets.joinpath(*DEPLOYED).read_text() == before  # the last good revision keeps being served
    assert expected in json.dumps(fleet.env_status("lille-dev")) + capsys.readouterr().err
    capsys.readouterr()
    assert main(["validate", str(fleet.upstream.work)]) == 1
    assert expected in capsys.readouterr().out


def test_an_output_over_the_bound_is_refused_and_nothing_is_applied(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _first_good(fleet)
    monkeypatch.setattr(runner, "DEFAULT_MAX_OUTPUT", 600)
    _kustomized(fleet, {"applications/ref/k/base/configmap.yaml": BASE["applications/ref/k/base/configmap.yaml"]
                        + "  padding: " + "x" * 700 + "\n"})  # fmt: skip
    assert fleet.once() == 1
    status = fleet.env_status("lille-dev")
    ref = status["applications"]["ref"]
    assert ref["phase"] == "Invalid", ref
    assert "the rendered output exceeds the limit of 600 bytes" in ref["message"], ref
    assert "applications/ref/k/overlays/dev/kustomization.yaml" in ref["message"], ref
    assert status["phase"] == "Invalid" and status["lastAppliedRevision"] != status["lastAttemptedRevision"]
    assert fleet.targets.joinpath(*DEPLOYED).read_text() == before  # nothing applied: the environment holds


def _first_good(fleet: Fleet) -> str:
    _kustomized(fleet)
    assert fleet.once() == 0
    return Path(fleet.targets.joinpath(*DEPLOYED)).read_text()
