"""Error paths of the kubernetes driver: bad input naming its file, refusals, API errors from a real API server and
from a scripted HTTP peer (429, 5xx, 401/403, timeouts), optimistic-concurrency retries, the rate limiter."""

from __future__ import annotations

import json
import socket
from dataclasses import replace

import pytest

from reconciler.core.problems import PermanentError, TemporaryError
from reconciler.drivers.k8s_api import KubeApi, RateLimiter
from reconciler.drivers.k8s_objects import (
    ANN_APPLICATION,
    ANN_ENVIRONMENT,
    ANN_TARGET,
    LABEL_APPLICATION,
    LABEL_ENVIRONMENT,
    LABEL_MANAGED_BY,
    Entry,
    Inventory,
    Owner,
    Ref,
    application_key,
    inventory_name,
    label_value,
)
from reconciler.drivers.kubernetes import KubernetesDriver
from tests.drivers import k8s_support, make_unit
from tests.drivers.k8s_support import (
    TARGET,
    Peer,
    client_for_url,
    cm_path,
    configmap,
    driver_for,
    inventory_path,
    unit,
)
from tests.support.kube import KubeServer

TOKEN = "s3cr3t-token-0123456789abcdef"

api = k8s_support.api  # fixture
driver = k8s_support.driver  # fixture
ns = k8s_support.ns  # fixture


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"a.yaml": b"a: [1, 2\n"}, r"^api/a.yaml:\d+: invalid YAML"),
        ({"a.yaml": b"- just\n- a list\n"}, r"^api/a.yaml:1: document 1 is not a Kubernetes object: expected a mapping"),
        ({"a.yaml": configmap("ok", x="1") + b"---\nkind: ConfigMap\nmetadata: {name: x}\n"},
         r"^api/a.yaml:\d+: document 2 is not a Kubernetes object: missing apiVersion"),
        ({"a.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {labels: {}}\n"}, r"missing metadata.name"),
        ({"a.yaml": b"x: &a [1]\ny: *a\n"}, r"^api/a.yaml:1: .*(alias|anchor)"),
        ({"a.yaml": configmap("same", x="1"), "b.yaml": configmap("same", x="2")},
         r"^api/b.yaml:1: ConfigMap/.*/same is already defined by api/a.yaml:1"),
        ({"a.yaml": b"apiVersion: example.org/v9\nkind: Nope\nmetadata: {name: x}\n"},
         r"^api/a.yaml:1: Nope of example.org/v9 is not served by target k8s-test"),
        ({"a.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ../x}\n"}, r"invalid name '../x'"),
        ({"a.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: reconciler-system}\n"},
         r"reconciler-system is reserved"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_naming_the_file(
    driver: KubernetesDriver, api: KubeApi, ns: str, files: dict[str, bytes], error: str
) -> None:
    with pytest.raises(PermanentError, match=error):
        driver.apply(unit(ns, files))
    assert driver.observe(ns, "shop") is None  # nothing written, not even the inventory


def test_a_namespaced_object_needs_a_namespace(driver: KubernetesDriver) -> None:
    desired = make_unit({"api": {"a.yaml": configmap("x", a="1")}}, environment="e", target=TARGET)
    with pytest.raises(PermanentError, match="has no namespace and the environment sets no namespace parameter"):
        driver.apply(desired)


def test_a_missing_namespace_is_a_clear_error(driver: KubernetesDriver) -> None:
    with pytest.raises(PermanentError, match="namespace does-not-exist does not exist on target k8s-test"):
        driver.apply(unit("does-not-exist", {"a.yaml": configmap("x", a="1")}))


def test_a_limited_target_refuses_other_namespaces_and_cluster_objects(kube_server: KubeServer, ns: str) -> None:
    limited = driver_for(kube_server, namespaces=[ns])
    assert limited.apply(unit(ns, {"a.yaml": configmap("x", a="1")})).changed
    with pytest.raises(PermanentError, match=rf"namespace default is not allowed on target k8s-test \(allowed: {ns}\)"):
        limited.apply(unit("default", {"a.yaml": configmap("x", a="1")}))
    role = b"apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: admin-ish}\nrules: []\n"
    with pytest.raises(PermanentError, match="cluster-scoped objects are not allowed on target k8s-test"):
        limited.apply(unit(ns, {"r.yaml": role}))


def test_long_environment_names_are_hashed_in_labels(driver: KubernetesDriver, api: KubeApi, ns: str) -> None:
    environment = "a-very-long-environment-name-" + "x" * 60
    desired = make_unit({"api": {"a.yaml": configmap("x", a="1")}}, environment=environment, target=TARGET,
                        parameters={"namespace": ns})  # fmt: skip
    driver.apply(desired)
    live = api.get(cm_path(ns, "x")) or {}
    assert live["metadata"]["labels"][LABEL_ENVIRONMENT] == label_value(environment) != environment
    assert len(label_value(environment)) <= 63 and live["metadata"]["annotations"][ANN_ENVIRONMENT] == environment
    assert driver.owned_applications(environment) == ["shop"]
    assert (driver.observe(environment, "shop") or pytest.fail()).drifted == ()


def test_an_inventory_write_conflict_is_merged_and_retried(driver: KubernetesDriver, api: KubeApi, ns: str) -> None:
    """409 on a stale resourceVersion: read again, keep the other writer's records and pending scopes, retry."""
    driver.apply(unit(ns, {"a.yaml": configmap("a", x="1")}))
    stale = driver.store.load(ns) or pytest.fail()
    meanwhile = stale.copy()
    meanwhile.set_record(
        "other", Inventory(Owner(TARGET, ns, "other"), "9", "f", 1.0, (Entry(Ref("v1", "ConfigMap", ns, "o")),))
    )
    meanwhile.pending = frozenset({("v1", "Secret", ns)})
    driver.store.save(meanwhile, stale, {"other"})  # someone else wrote it: our copy's resourceVersion is stale now
    ours = stale.copy()
    shop = ours.record("shop") or pytest.fail()
    ours.set_record("shop", replace(shop, entries=(*shop.entries, Entry(Ref("v1", "ConfigMap", ns, "mine")))))
    saved = driver.store.save(ours, stale, {"shop"}) or pytest.fail()
    assert saved.resource_version != stale.resource_version
    now = driver.store.load(ns) or pytest.fail()
    assert sorted(e.ref.name for e in (now.record("shop") or pytest.fail()).entries) == ["a", "mine"]
    assert (now.record("other") or pytest.fail()).version == "9" and now.pending == {("v1", "Secret", ns)}
    # a record we drop is dropped, theirs stay; without records and pending scopes the ConfigMap is deleted
    ours.set_record("shop", None)
    assert driver.store.save(ours, stale, {"shop"}) is not None
    now = driver.store.load(ns) or pytest.fail()
    assert now.applications() == ["other"]
    empty = now.copy()
    empty.set_record("other", None)
    empty.pending = frozenset()
    assert driver.store.save(empty, now, {"other"}) is None
    assert api.get(inventory_path(ns)) is None


def _peer_driver(peer: Peer) -> KubernetesDriver:
    return KubernetesDriver("k8s-peer", client_for_url(peer.url, TOKEN), qps=None)


@pytest.mark.parametrize(
    ("status", "headers", "error", "delay", "text"),
    [
        (429, {"Retry-After": "7"}, TemporaryError, 7.0, "storage is (re)initializing"),
        (503, {}, TemporaryError, 5.0, "storage is (re)initializing"),
        (500, {"Retry-After": "2"}, TemporaryError, 2.0, "storage is (re)initializing"),
        (500, {}, PermanentError, None, "failed to create typed patch object: .data.x: expected string"),
        (403, {}, PermanentError, None, 'configmaps is forbidden: User "ci" cannot get resource'),
        (401, {}, PermanentError, None, "unauthorized (credentials refused)"),
    ],
)
def test_api_errors_become_temporary_or_permanent(
    status: int, headers: dict[str, str], error: type[Exception], delay: float | None, text: str
) -> None:
    message = f"{text} (request carried Authorization: Bearer {TOKEN})"
    peer = Peer(status, {"kind": "Status", "code": status, "message": message}, headers)
    try:
        driver = _peer_driver(peer)
        with pytest.raises(error) as caught:
            driver.observe("recette", "shop")
    finally:
        peer.close()
    shown = str(caught.value)
    assert "kubernetes target k8s-peer" in shown and text in shown, shown
    assert (TOKEN not in shown and "Bearer ***" in shown) or status == 401
    assert peer.requests and peer.requests[0][2] == f"Bearer {TOKEN}"  # the token was sent, never shown
    if delay is not None:
        assert isinstance(caught.value, TemporaryError) and caught.value.delay == delay


def test_unreachable_and_hanging_servers_are_temporary() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    driver = KubernetesDriver("k8s-down", client_for_url(f"http://127.0.0.1:{port}"))
    with pytest.raises(TemporaryError, match=r"k8s-down: API server unreachable \(connection refused\)$"):
        driver.owned_applications("recette")  # (urllib3's NewConnectionError is a ConnectTimeoutError: not "timed out")
    with socket.socket() as hanging:  # accepts connections (backlog), never answers
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(8)
        url = f"http://127.0.0.1:{hanging.getsockname()[1]}"
        slow = KubernetesDriver("k8s-slow", client_for_url(url), request_timeout=0.5)
        with pytest.raises(TemporaryError, match=r"k8s-slow: API server unreachable \(timed out\)"):
            slow.health("recette", "shop")


def test_credentials_that_cannot_be_loaded_are_a_permanent_error() -> None:
    from reconciler.core.config import TargetConfig
    from reconciler.drivers.kubernetes import build_kubernetes_driver

    with pytest.raises(PermanentError, match=r"kubernetes target k8s-x: cannot load kubeconfig /nonexistent/kc"):
        build_kubernetes_driver(TargetConfig("k8s-x", "kubernetes", {"kubeconfig": "/nonexistent/kc"}))


def test_unknown_context_and_bad_health_timeout(kube_server: KubeServer) -> None:
    with pytest.raises(PermanentError, match=r"k8s-test: cannot load kubeconfig .*nope"):
        driver_for(kube_server, context="nope")
    with pytest.raises(PermanentError, match="invalid duration"):
        driver_for(kube_server, healthTimeout="soon")


def test_the_rate_limiter_allows_a_burst_then_qps() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    limiter = RateLimiter(qps=10, burst=3, clock=lambda: now[0], sleep=sleep)
    waits = [limiter.acquire() for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0] and slept == [0.1, 0.1]
    now[0] += 10  # idle: the bucket refills up to the burst, not beyond
    assert [limiter.acquire() for _ in range(4)][:3] == [0.0, 0.0, 0.0] and slept[-1] == 0.1
    assert RateLimiter(qps=None).acquire() == 0.0


def test_an_inventory_that_is_not_ours_is_refused_and_left_alone(
    driver: KubernetesDriver, api: KubeApi, ns: str
) -> None:
    name = inventory_name(TARGET, ns)
    api.request(
        "POST", "/api/v1/namespaces/reconciler-system/configmaps", body={"metadata": {"name": name}, "data": {"x": "1"}}
    )
    for call in (lambda: driver.apply(unit(ns, {"a.yaml": configmap("a", x="1")})), lambda: driver.observe(ns, "shop"),
                 lambda: driver.remove(ns, "shop"), lambda: driver.owned_applications(ns)):  # fmt: skip
        with pytest.raises(
            PermanentError, match=rf"inventory of environment {ns}\) is not marked as this controller's"
        ):
            call()
    assert (api.get(f"/api/v1/namespaces/reconciler-system/configmaps/{name}") or {})["data"] == {"x": "1"}
    assert api.get(cm_path(ns, "a")) is None


def test_a_corrupt_inventory_is_drift_and_the_next_apply_finds_objects_by_label(
    driver: KubernetesDriver, api: KubeApi, ns: str
) -> None:
    driver.apply(unit(ns, {"a.yaml": configmap("a", x="1"), "b.yaml": configmap("b", x="1")}))
    driver.apply(unit(ns, {"a.yaml": configmap("other", x="1")}, app="billing"))
    corrupt = api.get(inventory_path(ns)) or {}
    corrupt["data"][application_key("shop")] = "{not json"
    api.request("PUT", inventory_path(ns), body=corrupt)
    live = driver.observe(ns, "shop")
    assert live is not None and live.fingerprint is None and "is unreadable" in live.drifted[0]
    assert driver.owned_applications(ns) == ["billing", "shop"]
    assert driver.health(ns, "shop").status.value == "Degraded"
    with pytest.raises(PermanentError, match="is unreadable; refusing to remove"):
        driver.remove(ns, "shop")
    assert (driver.observe(ns, "billing") or pytest.fail()).drifted == ()  # the other records are intact
    driver.apply(unit(ns, {"a.yaml": configmap("other", x="2")}, app="billing"), dry_run=False)
    assert (api.get(inventory_path(ns)) or {})["data"][application_key("shop")] == "{not json"  # kept as it was
    result = driver.apply(unit(ns, {"a.yaml": configmap("a", x="1")}))
    assert result.message == "1 configured, 1 pruned", result.message  # b found by its labels
    assert api.get(cm_path(ns, "b")) is None
    assert (driver.observe(ns, "shop") or pytest.fail()).drifted == ()


def test_an_unreadable_environment_header_counts_every_recorded_kind_as_pending(
    kube_server: KubeServer, driver: KubernetesDriver, api: KubeApi, ns: str
) -> None:
    driver.apply(unit(ns, {"a.yaml": configmap("a", x="1")}))
    corrupt = api.get(inventory_path(ns)) or {}
    corrupt["data"]["environment.json"] = "[broken"
    api.request("PUT", inventory_path(ns), body=corrupt)
    # an object of ours that no record names (as a crash would leave it), in a kind and namespace recorded
    api.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body={
        "metadata": {"name": "stray", "labels": {LABEL_ENVIRONMENT: ns, LABEL_MANAGED_BY: "reconciler",
                                                 LABEL_APPLICATION: "shop"},
                     "annotations": {ANN_TARGET: TARGET, ANN_ENVIRONMENT: ns, ANN_APPLICATION: "shop"}}})  # fmt: skip
    restarted = driver_for(kube_server)
    live = restarted.observe(ns, "shop")
    assert live is not None and f"ConfigMap/{ns}/stray: not at the applied fingerprint" in live.drifted
    result = restarted.apply(unit(ns, {"a.yaml": configmap("a", x="1")}))
    assert result.message == "1 unchanged, 1 pruned", result.message
    header = json.loads((api.get(inventory_path(ns)) or {})["data"]["environment.json"])
    assert header["pending"] == [] and header["environment"] == ns
