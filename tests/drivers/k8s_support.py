"""Helpers of the kubernetes driver tests: a raw client of the test API server, fresh namespaces, manifests.

Every test works in a namespace of its own (there is no kube-controller-manager, so deleted namespaces stay
Terminating and cannot be reused) and uses that namespace's name as the environment name, so inventories of
different tests never meet. ``Peer`` is a tiny real HTTP server that answers with scripted statuses (429 with
Retry-After, 503, 403...) for the error-path tests.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from reconciler.core.config import TargetConfig
from reconciler.core.desired import DesiredUnit
from reconciler.drivers.k8s_api import APPLY_PATCH, MERGE_PATCH, KubeApi
from reconciler.drivers.k8s_objects import application_key, inventory_name
from reconciler.drivers.k8s_store import api_client_for, transport_retries
from reconciler.drivers.kubernetes import KubernetesDriver, build_kubernetes_driver
from tests.drivers import make_unit
from tests.support.kube import KubeServer

TARGET = "k8s-test"


def raw_api(server: KubeServer) -> KubeApi:
    """A client of the test server that is not the driver (plays kubectl, other controllers...)."""
    return KubeApi(api_client_for("raw", kubeconfig=str(server.kubeconfig), context=None), target="raw")


def new_namespace(api: KubeApi, prefix: str = "t") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    api.request(
        "POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    return name


def driver_for(server: KubeServer, **settings: Any) -> KubernetesDriver:
    """A driver built the way the controller builds it (from a target's settings)."""
    built = build_kubernetes_driver(
        TargetConfig(TARGET, "kubernetes", {"kubeconfig": str(server.kubeconfig), **settings})
    )
    assert isinstance(built, KubernetesDriver)
    return built


@pytest.fixture
def api(kube_server: KubeServer) -> KubeApi:
    return raw_api(kube_server)


@pytest.fixture
def ns(api: KubeApi) -> str:
    return new_namespace(api)


@pytest.fixture
def driver(kube_server: KubeServer) -> Iterator[KubernetesDriver]:
    built = driver_for(kube_server, qps=1000, burst=1000)
    yield built
    built.close()


def unit(ns: str, files: Mapping[str, bytes], version: str = "1.0.0", app: str = "shop", **kw: Any) -> DesiredUnit:
    """A unit of component ``api`` with ``files``, environment = namespace = ``ns``."""
    return make_unit({"api": files}, environment=ns, application=app, version=version, target=TARGET,
                     parameters={"namespace": ns}, **kw)  # fmt: skip


def configmap(name: str, **data: str) -> bytes:
    lines = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in data.items())
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n{lines}".encode()


def deployment(name: str, replicas: int = 2, image: str = "registry.example.org/shop:1.0") -> bytes:
    return f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
        - name: main
          image: {image}
          resources: {{requests: {{cpu: 500m, memory: 1Gi}}, limits: {{cpu: "2", memory: 2Gi}}}}
""".encode()


def service(name: str) -> bytes:
    return f"""apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
""".encode()


def crd(group: str, kind: str = "Widget", plural: str = "widgets") -> bytes:
    return f"""apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: {plural}, singular: {kind.lower()}, kind: {kind}}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {{type: object, properties: {{size: {{type: integer}}}}}}
""".encode()


def custom(group: str, name: str, size: int, kind: str = "Widget") -> bytes:
    return f"apiVersion: {group}/v1\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n  size: {size}\n".encode()


def get(api: KubeApi, path: str) -> dict[str, Any] | None:
    return api.get(path)


def cm_path(ns: str, name: str) -> str:
    return f"/api/v1/namespaces/{ns}/configmaps/{name}"


def inventory_path(environment: str, target: str = TARGET) -> str:
    """The inventory ConfigMap of (``target``, ``environment``)."""
    return cm_path("reconciler-system", inventory_name(target, environment))


def inventory_record(api: KubeApi, environment: str, app: str = "shop") -> dict[str, Any] | None:
    """``app``'s record in the inventory of ``environment`` (``None`` when there is none)."""
    obj = api.get(inventory_path(environment))
    text = None if obj is None else (obj.get("data") or {}).get(application_key(app))
    return None if text is None else dict(json.loads(text))


def edit(api: KubeApi, path: str, patch: dict[str, Any], manager: str = "kubectl-edit") -> dict[str, Any]:
    """An imperative edit as kubectl does it (a merge patch: an ``Update`` of field manager ``manager``)."""
    return api.request("PATCH", path, query=[("fieldManager", manager)], body=patch, content_type=MERGE_PATCH)


class Killed(BaseException):
    """The controller process dies here: nothing after it runs (no inventory write, no clean-up)."""


def kill_after_applies(driver: KubernetesDriver, monkeypatch: pytest.MonkeyPatch, applies: int) -> list[str]:
    """Make ``driver`` die (:class:`Killed`) just before its server-side apply number ``applies + 1`` (dry-runs
    do not count); returns the paths applied until then."""
    real = driver.api.request
    applied: list[str] = []

    def request(method: str, path: str, **kw: Any) -> dict[str, Any]:
        if kw.get("content_type") == APPLY_PATCH and ("dryRun", "All") not in list(kw.get("query") or ()):
            if len(applied) >= applies:
                raise Killed(path)
            applied.append(path)
        return real(method, path, **kw)

    monkeypatch.setattr(driver.api, "request", request)
    return applied


class Peer:
    """A real HTTP server answering every request with one scripted (status, headers, JSON body)."""

    def __init__(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, dict(body), dict(headers or {})
        self.requests: list[tuple[str, str, str]] = []  # method, path, Authorization header
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                peer.requests.append((self.command, self.path, self.headers.get("Authorization", "")))
                data = json.dumps(peer.body).encode()
                self.send_response(peer.status)
                for key, value in {"Content-Type": "application/json", **peer.headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *_: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def client_for_url(url: str, token: str = "s3cr3t-token-0123456789abcdef") -> Any:
    """An ``ApiClient`` for ``url`` with a bearer token, configured as the driver configures its clients."""
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = url
    configuration.api_key = {"authorization": f"Bearer {token}"}
    configuration.retries = transport_retries()
    return client.ApiClient(configuration)
