"""Credentials of kubeconfig targets: a static token needs no refresh before each request (the loader's hook is
dropped), an exec plugin's expiring token is refreshed by the client as before (the hook is kept)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reconciler.drivers.k8s_api import KubeApi
from reconciler.drivers.k8s_store import api_client_for, credentials_expire
from tests.support.kube import KubeServer

PLUGIN = """\
import json, pathlib, sys
runs = pathlib.Path(sys.argv[1])
runs.write_text(runs.read_text() + "run\\n" if runs.exists() else "run\\n")
status = {"token": sys.argv[2], **({"expirationTimestamp": sys.argv[3]} if sys.argv[3] else {})}
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential", "status": status}))
"""


def exec_kubeconfig(tmp_path: Path, server: KubeServer, expires: str) -> tuple[Path, Path]:
    """A kubeconfig whose user is an exec plugin printing the server's token (and counting its runs)."""
    plugin, runs = tmp_path / "plugin.py", tmp_path / "runs"
    plugin.write_text(PLUGIN)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server.server, "certificate-authority": str(server.ca_file)}}],
        "users": [
            {
                "name": "u",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": sys.executable,
                        "args": [str(plugin), str(runs), server.token, expires],
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    return path, runs


def test_a_static_token_is_not_refreshed_before_each_request(kube_server: KubeServer) -> None:
    client = api_client_for("k8s-static", kubeconfig=str(kube_server.kubeconfig), context=None)
    assert client.configuration.refresh_api_key_hook is None
    api = KubeApi(client, target="k8s-static")
    assert api.request("GET", "/api/v1")["kind"] == "APIResourceList"
    assert api.request("GET", "/api/v1/namespaces/default")["metadata"]["name"] == "default"


def test_an_expiring_exec_token_is_refreshed_when_expired(kube_server: KubeServer, tmp_path: Path) -> None:
    path, runs = exec_kubeconfig(tmp_path, kube_server, "2000-01-01T00:00:00Z")  # expired as soon as it is read
    client = api_client_for("k8s-exec", kubeconfig=str(path), context=None)
    assert credentials_expire(client.configuration)
    assert runs.read_text().count("run") == 1
    api = KubeApi(client, target="k8s-exec")
    assert api.request("GET", "/api/v1")["kind"] == "APIResourceList"
    assert api.request("GET", "/api/v1")["kind"] == "APIResourceList"
    assert runs.read_text().count("run") == 3  # the plugin ran again before each request


def test_an_exec_token_without_expiry_is_read_once(kube_server: KubeServer, tmp_path: Path) -> None:
    path, runs = exec_kubeconfig(tmp_path, kube_server, "")  # no expirationTimestamp
    client = api_client_for("k8s-exec", kubeconfig=str(path), context=None)
    assert client.configuration.refresh_api_key_hook is None
    api = KubeApi(client, target="k8s-exec")
    assert api.request("GET", "/api/v1")["kind"] == "APIResourceList"
    assert runs.read_text().count("run") == 1
