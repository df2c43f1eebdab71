"""Manifests as people write them, through the engine onto the real kube-apiserver (issue 17): a ``manifests:``
directory holding a Helm chart rendered by CI (``helm template`` output: several documents per file, ``# Source:``
comments, numbers for quantities, ports without protocol, ``creationTimestamp: null``) and a Kustomize overlay
rendered by the real ``kubectl kustomize``. Both apply, the second reconcile writes nothing, and the overlay's
objects carry the release's image."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.core.config import ControllerConfig
from reconciler.core.desired import DesiredComponent, DesiredUnit, fingerprint
from reconciler.core.loader import load_repo
from reconciler.core.plan import Phase
from reconciler.core.problems import PermanentError
from reconciler.core.tree import MemoryTree
from reconciler.drivers.k8s_api import MERGE_PATCH, KubeApi
from reconciler.drivers.k8s_objects import LABEL_MANAGED_BY
from reconciler.drivers.kubernetes import KubernetesDriver
from reconciler.engine.reconcile import EnvOutcome, Job, reconcile_environment
from reconciler.engine.targets import DriverPool
from reconciler.source.kustomize import KubectlKustomize
from tests.drivers import k8s_support
from tests.drivers.k8s_support import TARGET, get, new_namespace

api = k8s_support.api  # fixture
driver = k8s_support.driver  # fixture
ns = k8s_support.ns  # fixture

CONFIG = ControllerConfig(
    path="/etc/reconciler.yaml", source_url="unused", patterns=({"match": "*", "driver": "kubernetes"},)
)
# what `helm template podinfo ./chart` writes (abridged), committed by CI under rendered/
HELM = b"""---
# Source: podinfo/templates/service.yaml
apiVersion: v1
kind: Service
metadata:
  name: podinfo
  labels:
    helm.sh/chart: podinfo-6.5.4
    app.kubernetes.io/managed-by: Helm
spec:
  type: ClusterIP
  ports:
    - port: 9898
      targetPort: http
      name: http
  selector:
    app.kubernetes.io/name: podinfo
---
# Source: podinfo/templates/deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: podinfo
  creationTimestamp: null
spec:
  replicas: 1
  selector:
    matchLabels:
      app.kubernetes.io/name: podinfo
  template:
    metadata:
      labels:
        app.kubernetes.io/name: podinfo
    spec:
      containers:
        - name: podinfod
          image: "ghcr.io/stefanprodan/podinfo:${component.image}"
          ports:
            - name: http
              containerPort: 9898
          resources:
            limits:
              cpu: 2
              memory: 512Mi
            requests:
              cpu: 1
              memory: 64Mi
status: {}
"""
SETTINGS = b"""# Source: podinfo/templates/configmap.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: podinfo-settings
data:
  level: "info"
"""
K = b"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"


def repo_files(namespace: str) -> dict[str, bytes]:
    app = (
        b"apiVersion: reconciler.io/v1\nkind: Application\nmetadata: {name: APP}\nspec:\n  owner: t\n  components:\n"
        b"    - name: api\n      target: kubernetes\n      SOURCE\n"
    )
    release = (
        b"apiVersion: reconciler.io/v1\nkind: Release\nmetadata: {name: APP-1.0}\n"
        b"spec: {application: APP, version: '1.0', components: {api: {image: 'IMAGE'}}}\n"
    )
    files = {
        "applications/helm/application.yaml": app.replace(b"APP", b"helm").replace(b"SOURCE", b"manifests: rendered"),
        "applications/helm/rendered/podinfo.yaml": HELM.replace(b"podinfo:${component.image}", b"podinfo:6.5.4"),
        "applications/helm/rendered/extra/settings.yaml": SETTINGS,
        "releases/helm/1.0.yaml": release.replace(b"APP", b"helm").replace(b"IMAGE", b"ghcr.io/x/podinfo:6.5.4"),
        "applications/kust/application.yaml": app.replace(b"APP", b"kust").replace(b"SOURCE", b"kustomize: k/prod"),
        "applications/kust/k/base/kustomization.yaml": K + b"resources: [deploy.yaml]\n",
        "applications/kust/k/base/deploy.yaml": HELM.split(b"---\n")[2].replace(
            b"ghcr.io/stefanprodan/podinfo:${component.image}", b"registry.example.org/kust/api"
        ).replace(b"name: podinfo\n", b"name: kust\n", 1),
        "applications/kust/k/prod/kustomization.yaml": K + b"resources: [../base]\nnamePrefix: prod-\n",
        "releases/kust/1.0.yaml": release.replace(b"APP", b"kust").replace(b"IMAGE", b"registry.example.org/kust/api:1.0"),
        "stages/dev.yaml": b"apiVersion: reconciler.io/v1\nkind: Stage\nmetadata: {name: dev}\n"
        b"spec:\n  releases: {helm: '1.0', kust: '1.0'}\n",
        "environments/env.yaml": f"apiVersion: reconciler.io/v1\nkind: Environment\nmetadata: {{name: {namespace}}}\n"
        f"spec: {{stage: dev, targets: {{kubernetes: {TARGET}}}, parameters: {{namespace: {namespace}}}}}\n".encode(),
    }  # fmt: skip
    return files


@pytest.fixture
def pool(driver: KubernetesDriver) -> Iterator[DriverPool]:
    driver.store._ensure_namespace()
    yield DriverPool(CONFIG, factory=lambda target: driver)


def reconcile(files: dict[str, bytes], env: str, pool: DriverPool, build: KubectlKustomize) -> EnvOutcome:
    tree = MemoryTree(files)
    loaded = load_repo(tree)
    repo = loaded.repo or pytest.fail(f"the test repo does not load: {loaded.all_problems()}")
    job = Job(env=repo.environments[env], repo=repo, tree=tree, revision="r1", build=build)
    return reconcile_environment(job, pool)


def test_hydrated_helm_output_and_a_kustomize_overlay_apply_and_stay_applied(
    pool: DriverPool, api: KubeApi, ns: str
) -> None:
    build = KubectlKustomize()
    first = reconcile(repo_files(ns), ns, pool, build)
    assert first.changed and first.phase in (Phase.SYNCED, Phase.PROGRESSING), first.message
    assert {a: s.phase for a, s in first.applications.items()} == {"helm": first.phase, "kust": first.phase}
    service = get(api, f"/api/v1/namespaces/{ns}/services/podinfo")
    assert service is not None and service["spec"]["ports"][0]["protocol"] == "TCP"
    settings = get(api, f"/api/v1/namespaces/{ns}/configmaps/podinfo-settings")  # from rendered/extra/
    assert settings is not None and settings["data"] == {"level": "info"}
    prod = get(api, f"/apis/apps/v1/namespaces/{ns}/deployments/prod-kust")
    assert prod is not None
    assert prod["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.org/kust/api:1.0"
    assert prod["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "2"
    second = reconcile(repo_files(ns), ns, pool, build)
    assert not second.changed and second.phase is first.phase, second.message
    assert build.runs == 1  # the overlay was rendered once: the second reconcile used the cache


def _namespace_unit(env: str, namespace: str, own: bool, labels: str = "team: a") -> Any:
    text = f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  labels: {{{labels}}}\n---\n"
    text += f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: {namespace}\ndata: {{k: v}}\n"
    comp = DesiredComponent("api", "kubernetes", {"all.yaml": text.encode()}, own_namespaces=own)
    return DesiredUnit(env, "shop", "1.0", TARGET, (comp,), {"namespace": namespace},
                       fingerprint(((comp,)), "1.0"))  # fmt: skip


def test_a_namespace_is_only_ensured_unless_the_component_owns_it(driver: KubernetesDriver, api: KubeApi) -> None:
    """Issue 17: a component whose manifests include a Namespace (Flux test1, most public example apps) does not
    take over one that exists (the platform team's), and one it creates is not its own either: no marks, not in the
    inventory, never updated. With ``ownNamespaces`` the Namespace is managed like the other objects."""
    foreign = new_namespace(api, "plat")
    api.request("PATCH", f"/api/v1/namespaces/{foreign}", body={"metadata": {"labels": {"owner": "platform"}}},
                content_type=MERGE_PATCH)  # fmt: skip
    result = driver.apply(_namespace_unit(foreign, foreign, own=False))
    assert "1 created, 1 kept" in result.message, result.message
    live = get(api, f"/api/v1/namespaces/{foreign}")
    assert (
        live is not None
        and live["metadata"]["labels"].get("owner") == "platform"
        and "team" not in live["metadata"]["labels"]
    )
    assert not driver.apply(_namespace_unit(foreign, foreign, own=False)).changed
    fresh = f"fresh-{uuid.uuid4().hex[:8]}"
    driver.apply(_namespace_unit(fresh, fresh, own=False))
    created = get(api, f"/api/v1/namespaces/{fresh}")
    assert created is not None and LABEL_MANAGED_BY not in created["metadata"].get("labels", {})
    with pytest.raises(PermanentError, match=rf"Namespace/{foreign} exists, not managed by reconciler"):
        driver.apply(_namespace_unit(foreign + "-own", foreign, own=True))
    owned = f"owned-{uuid.uuid4().hex[:8]}"
    driver.apply(_namespace_unit(owned, owned, own=True))
    mine = get(api, f"/api/v1/namespaces/{owned}")
    assert mine is not None and mine["metadata"]["labels"][LABEL_MANAGED_BY] == "reconciler"
    driver.apply(_namespace_unit(owned, owned, own=True, labels="team: b"))
    relabelled = get(api, f"/api/v1/namespaces/{owned}")
    assert relabelled is not None and relabelled["metadata"]["labels"]["team"] == "b"  # ours: updated
    driver.remove(owned, "shop")
    assert get(api, f"/api/v1/namespaces/{owned}") is not None  # never deleted, owned or not
