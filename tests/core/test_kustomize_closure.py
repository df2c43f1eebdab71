"""What a Kustomize overlay may read (core.kustomize.closure) and the loader's ``manifests``/``kustomize`` sources:
every refusal names the kustomization file and line; files of component sources are not releases-repo manifests."""

from __future__ import annotations

from reconciler.core.kustomize import closure, image_entry
from reconciler.core.loader import load_repo
from reconciler.core.tree import MemoryTree
from tests.minirepo import minimal_repo

K = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"


def _closure(files: dict[str, str], overlay: str = "app/overlays/prod") -> tuple[tuple[str, ...], list[str]]:
    data = {p: t.encode() for p, t in files.items()}
    found = closure(overlay, set(data), data.__getitem__)
    return found.files, [str(p) for p in found.problems]


def test_an_overlay_reads_its_bases_patches_and_generator_files() -> None:
    files, problems = _closure({
        "app/base/kustomization.yaml": K + "resources: [deploy.yaml]\nconfigMapGenerator:\n- name: c\n  files: [k=conf.txt]\n  envs: [a.env]\n",
        "app/base/deploy.yaml": "kind: Deployment\n",
        "app/base/conf.txt": "x", "app/base/a.env": "A=1", "app/base/unused.yaml": "kind: X\n",
        "app/overlays/prod/kustomization.yaml": K + "resources: [../../base, pdb.yaml]\npatches:\n- path: p.yaml\n- patch: |-\n    inline\n",
        "app/overlays/prod/pdb.yaml": "kind: PodDisruptionBudget\n", "app/overlays/prod/p.yaml": "kind: Deployment\n",
    })  # fmt: skip
    assert problems == []
    assert files == ("app/base/a.env", "app/base/conf.txt", "app/base/deploy.yaml", "app/base/kustomization.yaml",
                     "app/overlays/prod/kustomization.yaml", "app/overlays/prod/p.yaml", "app/overlays/prod/pdb.yaml")  # fmt: skip


def test_what_is_never_rendered_is_refused_with_file_and_line() -> None:
    _, problems = _closure({
        "app/overlays/prod/kustomization.yaml": K + "resources:\n- ../../../../etc\n- https://github.com/x/y//base\n"
        "- github.com/x/y\nhelmCharts:\n- name: redis\ngenerators:\n- gen.yaml\ntransformers:\n- apiVersion: builtin\n"
        "  kind: LabelTransformer\n- apiVersion: someteam.example.com/v1\n  kind: Exec\n",
        "app/overlays/prod/gen.yaml": "apiVersion: example.com/v1\nkind: G\nmetadata:\n  annotations:\n"
        "    config.kubernetes.io/function: 'exec: {path: ./x}'\n",
    })  # fmt: skip
    where = "app/overlays/prod/kustomization.yaml"
    assert problems == [
        f"{where}:4: path '../../../../etc' leaves the repository",
        f"{where}:5: remote resource 'https://github.com/x/y//base' is not allowed: rendering runs without network",
        f"{where}:6: remote resource 'github.com/x/y' is not allowed: rendering runs without network",
        f"{where}:7: helmCharts: Helm inflation is not allowed; render the chart in CI into a manifests: directory "
        "(docs/kubernetes.md)",
        f"{where}:10: generators: gen.yaml is not a builtin plugin configuration; only kustomize's builtin plugins "
        "are allowed (no exec, container or KRM function plugins)",
        f"{where}:14: transformers: only kustomize's builtin plugins are allowed (no exec, container or KRM function "
        "plugins)",
    ]


def test_a_missing_base_or_kustomization_is_named() -> None:
    _, problems = _closure({"app/overlays/prod/kustomization.yaml": K + "resources: [../../base, gone.yaml]\n",
                            "app/base/deploy.yaml": "kind: Deployment\n"})  # fmt: skip
    assert problems == ["app/overlays/prod/kustomization.yaml:3: app/base has no kustomization.yaml",
                        "app/overlays/prod/kustomization.yaml:3: 'gone.yaml' not found (looked for "
                        "app/overlays/prod/gone.yaml)"]  # fmt: skip


def test_image_entries_set_tag_and_digest_by_name() -> None:
    assert image_entry("registry.example.org:5000/rh/api:3.9.0", "sha256:ab") == {
        "name": "registry.example.org:5000/rh/api", "newTag": "3.9.0", "digest": "sha256:ab"}  # fmt: skip
    assert image_entry("registry.example.org:5000/rh/api") == {"name": "registry.example.org:5000/rh/api"}
    assert image_entry("api@sha256:cd") == {"name": "api", "digest": "sha256:cd"}
    assert image_entry("") is None


APP = """apiVersion: reconciler.io/v1
kind: Application
metadata: {name: shop}
spec:
  owner: team-ref
  components:
    - name: web
      target: kubernetes
      SOURCE
"""


def _load(source: str, extra: dict[str, str]) -> list[str]:
    files = {**minimal_repo(), "applications/shop/application.yaml": APP.replace("SOURCE", source).encode()}
    files.update({p: t.encode() for p, t in extra.items()})
    result = load_repo(MemoryTree(files))
    return [str(p) for p in result.all_problems()]


def test_source_directories_are_kubernetes_yaml_not_manifests_and_their_problems_are_named() -> None:
    deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
    assert _load("manifests: k8s", {"applications/shop/k8s/deploy.yaml": deploy,
                                    "applications/shop/k8s/sub/svc.yml": "kind: Service\n"}) == []  # fmt: skip
    assert _load("kustomize: k/overlays/${env.stage}", {
        "applications/shop/k/base/kustomization.yaml": K + "resources: [deploy.yaml]\n",
        "applications/shop/k/base/deploy.yaml": deploy,
        "applications/shop/k/overlays/dev/kustomization.yaml": K + "resources: [../../base]\n"}) == []  # fmt: skip
    assert _load("manifests: nothing-here", {}) == [
        "applications/shop/application.yaml:9: manifests directory 'nothing-here' has no YAML file "
        "(looked in applications/shop/nothing-here)"]  # fmt: skip
    assert _load("kustomize: ../../..", {}) == ["applications/shop/application.yaml:9: path '../../..' leaves the "
                                                "repository"]  # fmt: skip
    assert _load("kustomize: k", {"applications/shop/k/kustomization.yaml": K + "helmCharts: [{name: x}]\n"}) == [
        "applications/shop/k/kustomization.yaml:3: helmCharts: Helm inflation is not allowed; render the chart in "
        "CI into a manifests: directory (docs/kubernetes.md)"]  # fmt: skip
