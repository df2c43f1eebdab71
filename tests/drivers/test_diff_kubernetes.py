"""``contents`` of the Kubernetes driver against a real kube-apiserver (what ``reconciler diff`` shows): the
server-side dry-run result beside the live object, without managedFields, status or server-set metadata, so an
object in sync shows no difference and a hand edit shows exactly the edited field; Secret values are digests."""

from __future__ import annotations

import base64

import pytest

from reconciler.core.contentdiff import unified
from reconciler.core.desired import render_unit
from reconciler.core.loader import load_repo
from reconciler.core.tree import MemoryTree
from reconciler.drivers.base import identified
from reconciler.drivers.k8s_api import KubeApi
from reconciler.drivers.kubernetes import KubernetesDriver
from reconciler.engine.targets import DriverPool
from tests.drivers import k8s_support
from tests.drivers.k8s_support import cm_path, edit
from tests.drivers.test_kubernetes_ownership import pool as pool
from tests.drivers.test_kubernetes_ownership import reconcile, repo_files

api = k8s_support.api  # fixture
driver = k8s_support.driver  # fixture
ns = k8s_support.ns  # fixture

SEALED = "ENC[AES256_GCM,data:c2VjcmV0,iv:aXY=,tag:dGFn,type:str]"
TEMPLATE = (
    'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ${app.name}-settings\ndata:\n  mode: "${params.mode}"\n'
    "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: ${app.name}-db\nstringData:\n"
    f'  password: "{SEALED}"\n'
)


@pytest.mark.kube
def test_a_hand_edit_shows_as_the_only_difference_and_secrets_are_masked(
    api: KubeApi, ns: str, driver: KubernetesDriver, pool: DriverPool
) -> None:
    files = repo_files("env-a", ns, {"shop": TEMPLATE})
    assert reconcile(files, "env-a", pool, "rev1").phase == "Synced"
    repo = load_repo(MemoryTree(files)).repo
    assert repo is not None
    env, app = repo.environments["env-a"], repo.applications["shop"]
    unit = identified(driver, render_unit(repo, env, app, repo.releases[("shop", "1.0")], "k8s-test",
                                          MemoryTree(files).read))  # fmt: skip
    contents = {c.name: c for c in driver.contents(unit)}
    assert set(contents) == {f"ConfigMap/{ns}/shop-settings", f"Secret/{ns}/shop-db"}
    assert all(unified(n, c.live, c.desired) == "" for n, c in contents.items()), [
        unified(n, c.live, c.desired) for n, c in contents.items()
    ]
    edit(api, cm_path(ns, "shop-settings"), {"data": {"mode": "green"}})
    changed = {c.name: unified(c.name, c.live, c.desired) for c in driver.contents(unit)}
    diff = changed[f"ConfigMap/{ns}/shop-settings"]
    assert "-  mode: green\n" in diff and "+  mode: blue\n" in diff and diff.count("\n-") == 1
    assert changed[f"Secret/{ns}/shop-db"] == ""
    shown = "".join(c.live or "" for c in driver.contents(unit)) + "".join(c.desired for c in driver.contents(unit))
    assert SEALED not in shown and base64.b64encode(SEALED.encode()).decode() not in shown
    assert "<secret sha256:" in shown and "managedFields" not in shown and "resourceVersion" not in shown
