"""Rendering ``manifests`` and ``kustomize`` components (core/desired.py), with the in-memory Kustomize twin:
file names, substitution only when asked, one overlay per environment, and a clear error for a stage without one."""

from __future__ import annotations

import pytest

from reconciler.core.desired import DesiredUnit, RenderError, render_unit
from reconciler.core.loader import load_repo
from reconciler.core.tree import MemoryTree
from reconciler.source.kustomize import InMemoryKustomize
from tests.minirepo import minimal_repo

CM = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {env: '${env.name}', literal: '$${x}'}\n"
K = b"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"


def _unit(
    source: str, extra: dict[str, bytes], env: str = "lille-dev", build: InMemoryKustomize | None = None
) -> DesiredUnit:
    files = dict(minimal_repo())
    app = files["applications/ref/application.yaml"].decode()
    indent = app.split("templates: [templates/deployment.yaml]")[0].rsplit("\n", 1)[1]
    source = source.replace("\n", "\n" + indent)
    files["applications/ref/application.yaml"] = app.replace("templates: [templates/deployment.yaml]", source).encode()
    files.update(extra)
    tree = MemoryTree(files)
    result = load_repo(tree)
    assert result.repo is not None and result.ok, result.all_problems()
    repo = result.repo
    environment = repo.environments[env]
    ref = repo.applications["ref"]
    release = repo.releases[("ref", repo.desired_versions(environment)["ref"])]
    return render_unit(repo, environment, ref, release, environment.targets["kubernetes"], tree.read, build)


def test_manifests_are_taken_as_written_unless_substitution_is_asked() -> None:
    extra = {"applications/ref/k8s/web.yaml": CM, "applications/ref/k8s/more/other.yml": b"kind: X\n"}
    plain = _unit("manifests: k8s", extra)
    assert plain.files() == {"api/web.yaml": CM, "api/more--other.yml": b"kind: X\n"}
    filled = _unit("manifests: k8s\nsubstitute: true", extra)
    assert (
        b"env: 'lille-dev'" in filled.files()["api/web.yaml"] and b"literal: '${x}'" in filled.files()["api/web.yaml"]
    )
    assert filled.fingerprint != plain.fingerprint


def test_one_overlay_per_stage_and_a_stage_without_one_is_named() -> None:
    extra = {
        "applications/ref/k/dev/kustomization.yaml": K + b"resources: [cm.yaml]\n",
        "applications/ref/k/dev/cm.yaml": CM,
        "applications/ref/k/dev/notes/unused.yaml": b"kind: NotAManifest\n",  # beside the overlay: set aside
    }
    build = InMemoryKustomize()
    unit = _unit("kustomize: k/${env.stage}", extra, build=build)
    assert unit.files() == {"api/dev.yaml": CM} and build.calls == 1
    with pytest.raises(RenderError, match=r"applications/ref/application.yaml:\d+: component api: no overlay "
                       r"applications/ref/k/production \(kustomize: applications/ref/k/\$\{env.stage\}; overlays "
                       r"found: applications/ref/k/dev\)"):  # fmt: skip
        _unit("kustomize: k/${env.stage}", extra, env="lille-production", build=build)
    with pytest.raises(RenderError, match=r"applications/ref/k/dev/kustomization.yaml: Kustomize overlays are not "
                       r"rendered here"):  # fmt: skip
        _unit("kustomize: k/${env.stage}", extra)


def test_one_manifests_directory_per_stage() -> None:
    extra = {
        "applications/ref/rendered/dev/web.yaml": CM,
        "applications/ref/rendered/production/web.yaml": b"kind: P\n",
    }
    assert _unit("manifests: rendered/${env.stage}", extra).files() == {"api/web.yaml": CM}
    assert _unit("manifests: rendered/${env.stage}", extra, env="lille-production").files() == {
        "api/web.yaml": b"kind: P\n"
    }
    with pytest.raises(RenderError, match=r"component api: no directory applications/ref/rendered/production "
                       r"\(manifests: applications/ref/rendered/\$\{env.stage\}; directories found: "
                       r"applications/ref/rendered/dev\)"):  # fmt: skip
        _unit(
            "manifests: rendered/${env.stage}", {"applications/ref/rendered/dev/web.yaml": CM}, env="lille-production"
        )
