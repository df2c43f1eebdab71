"""Tests of ``deploy/``: the alert rules (promtool, with rule unit tests), the Kubernetes manifests (well formed,
wired together, the ConfigMap's config parsed by the controller's own parser), the Grafana dashboard, the
Dockerfile, every metric name against what :class:`PrometheusMetrics` really exports and, with the ``kube_server``
fixture (marker ``kube``), a server-side dry-run apply of every manifest against a real kube-apiserver, with
minimal CRDs for the Prometheus Operator kinds so those are validated too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.core.config import parse_config
from reconciler.observability.metrics import PrometheusMetrics
from tests.support.kube import KubeServer

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "reconciler-dashboard.json"
NAMESPACE = "reconciler-system"
METRIC = re.compile(r"\b(reconciler_[a-z_]+|up)\b(?!\s*\()")


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted((DEPLOY / "kubernetes").rglob("*.yaml")):
        found += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return found


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    docs = [d for _, d in manifests() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(docs) == 1, f"{kind} {name}: {len(docs)} found"
    return docs[0]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: apt-get install prometheus (./dev deps installs it)", pytrace=False)
    return found


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def grafana_exprs() -> list[str]:
    """Every panel query, with Grafana's variables replaced so that PromQL tools accept it."""
    return [t["expr"].replace("$stage", ".*") for p in panels() for t in p["targets"]]


# --- Prometheus ------------------------------------------------------------------------------------------------------
def test_alert_rules_pass_promtool() -> None:
    assert "SUCCESS: 10 rules found" in run(promtool(), "check", "rules", str(ALERTS))


def test_prometheus_rule_manifest_has_the_same_groups() -> None:
    rule = one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    text = ", ".join(f'{k}="{v}"' for k, v in {**labels, "job": labels.get("job", "reconciler")}.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def alert(name: str, at: str, *expected: tuple[dict[str, str], dict[str, str]]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name,
            "exp_alerts": [{"exp_labels": labels, "exp_annotations": notes} for labels, notes in expected]}  # fmt: skip


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """``promtool test rules``: synthetic series, and when each alert does (and does not) fire."""
    ns = {"namespace": NAMESPACE}
    prod = {"environment": "lille-production", "stage": "production", "phase": "Failed", "job": "reconciler"}
    failing = (
        {**prod, "severity": "critical"},
        {"summary": "Production environment lille-production has been Failed for 15 minutes",
         "description": "See the dashboard /environments/lille-production and `reconciler status --env "
         "lille-production`; what ran before keeps running."},
    )  # fmt: skip
    stale = {"summary": "No successful fetch of the releases repo for 10 minutes",
             "description": "New commits are not seen (remote unreachable, credentials, or a cycle stuck); the last "
             "good revision is still served."}  # fmt: skip
    push = {"summary": "The reconciler has not pushed status and audit to the status branch for 15 minutes",
            "description": "Status and audit entries are kept in memory and retried, but a restart now would lose "
            "the audit trail of recent applies."}  # fmt: skip
    slow = {"summary": "p95 commit-to-live latency of stage production is over 10 minutes",
            "description": "Over the last 15 minutes, 95% of applies took up to 19m 30s from commit to Synced."}  # fmt: skip
    drift = {"summary": "2 application(s) of nice-recette have drifted for more than 30 minutes",
             "description": "Live state differs from what was applied (hand edits?) and self-healing has not fixed it."}  # fmt: skip
    degraded = {"summary": "nice-production was Degraded for more than half of the last 6 hours",
                "description": "Applied but not healthy, on and off: see the phase timeline on "
                "/environments/nice-production."}  # fmt: skip
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                series("reconciler_environment_phase", "1x40", **{k: v for k, v in prod.items() if k != "job"}),
                series("reconciler_environment_phase", "0x40", environment="lille-dev", stage="dev", phase="Failed"),
                series("reconciler_git_fetches_total", "0+1x10 10x30", result="success", **ns),
                series("reconciler_git_fetches_total", "0+1x40", result="failure", **ns, job="other"),
                series("reconciler_status_pushes_total", "5x40", result="success", **ns),
                series("reconciler_status_pushes_total", "0+1x40", result="failure", **ns),
                series("reconciler_status_pushes_total", "0+1x40", result="success", **ns, job="healthy"),
                series("reconciler_commit_to_live_seconds_bucket", "0x40", le="600", stage="production"),
                series("reconciler_commit_to_live_seconds_bucket", "0+1x40", le="1200", stage="production"),
                series("reconciler_commit_to_live_seconds_bucket", "0+1x40", le="+Inf", stage="production"),
                series("reconciler_environment_drifted_applications", "2x40", environment="nice-recette"),
                series("reconciler_environment_degraded_seconds_total", "0+50x400", environment="nice-production"),
                series("reconciler_environment_degraded_seconds_total", "0+20x400", environment="metz-production"),
            ],
            "alert_rule_test": [
                alert("ReconcilerProductionEnvironmentFailing", "10m"),
                alert("ReconcilerProductionEnvironmentFailing", "20m", failing),
                alert("ReconcilerEnvironmentFailing", "20m"),
                alert("ReconcilerSourceStale", "15m", ({**ns, "job": "other", "severity": "warning"}, stale)),
                alert("ReconcilerSourceStale", "25m", ({**ns, "job": "other", "severity": "warning"}, stale),
                      ({**ns, "job": "reconciler", "severity": "warning"}, stale)),
                alert("ReconcilerStatusPushFailing", "3m"),
                alert("ReconcilerStatusPushFailing", "20m", ({**ns, "job": "reconciler", "severity": "critical"}, push)),
                alert("ReconcilerCommitToLiveSlow", "20m", ({"stage": "production", "severity": "warning"}, slow)),
                alert("ReconcilerEnvironmentMostlyDegraded", "390m", ({"environment": "nice-production",
                      "job": "reconciler", "severity": "warning"}, degraded)),
                alert("ReconcilerDriftPersisting", "20m"),
                alert("ReconcilerDriftPersisting", "35m", ({"environment": "nice-recette", "job": "reconciler",
                                                            "severity": "warning"}, drift)),
            ],
        }],
    }  # fmt: skip
    path = tmp_path / "alerts_test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    assert "SUCCESS" in run(promtool(), "test", "rules", str(path))


def exported_metrics() -> set[str]:
    """Every sample name the controller's metrics registry can produce (histograms with their suffixes)."""
    metrics = PrometheusMetrics()
    metrics.revision("a" * 40, True)
    names = {"up"}
    for line in metrics.render().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names


def test_every_metric_used_by_alerts_and_dashboard_is_exported() -> None:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    used = {m for expr in [r["expr"] for r in rules] + grafana_exprs() for m in METRIC.findall(expr)}
    assert used - exported_metrics() == set()
    assert {"reconciler_environment_phase", "reconciler_commit_to_live_seconds_bucket"} <= used


# --- Grafana -----------------------------------------------------------------------------------------------------
def test_grafana_dashboard(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and len(panels()) >= 8
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert "reconciler_" in target["expr"], panel["title"]
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    titles = " ".join(p["title"].lower() for p in panels())
    for topic in ("phase", "failing", "commit-to-live", "fetch", "push", "driver"):
        assert topic in titles
    # promtool parses every query (as recording rules): a PromQL typo fails here, not on the wall screen
    rules = [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(grafana_exprs())]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run(promtool(), "check", "rules", str(path))


# --- Kubernetes manifests ----------------------------------------------------------------------------------------------
def test_every_manifest_is_well_formed() -> None:
    found = manifests()
    kinds = {d["kind"] for _, d in found}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ConfigMap", "Deployment",
            "Service", "ServiceMonitor", "PrometheusRule"} <= kinds  # fmt: skip
    for path, doc in found:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), path
        if doc["kind"] not in ("Namespace", "ClusterRole", "Kustomization") and "examples" not in path.parts:
            assert doc["metadata"]["namespace"] == NAMESPACE, path
    listed = set(one("Kustomization")["resources"])
    assert listed == {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}


def test_rbac_is_least_privilege() -> None:
    role = one("Role", "reconciler")
    assert {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]} == {
        ("coordination.k8s.io", "leases"),
        ("", "configmaps"),
    }
    target = one("ClusterRole", "reconciler-target")
    granted = {(g, r) for rule in target["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert ("apps", "deployments") in granted
    assert not any(g == "rbac.authorization.k8s.io" or r in ("namespaces", "*", "pods/exec") for g, r in granted)
    assert all("*" not in rule["verbs"] for rule in role["rules"] + target["rules"])
    assert not [d for _, d in manifests() if d["kind"] == "ClusterRoleBinding"]  # bound per namespace only
    example = one("RoleBinding", "reconciler-target")
    assert example["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "reconciler-target",
    }


def test_config_map_holds_a_valid_controller_config() -> None:
    data = one("ConfigMap", "reconciler-config")["data"]
    config = parse_config("/etc/reconciler/config.yaml", data["config.yaml"].encode())
    assert config.listen == "0.0.0.0:8080" and config.state_dir == "/var/lib/reconciler"
    assert config.allowed_signers == "/etc/reconciler/allowed_signers" and "ssh-ed25519 " in data["allowed_signers"]
    assert all(str(v).startswith("env:") for k, v in config.webhooks.items() if k != "maxBodyBytes")
    aix = config.target("aix-lille-production")
    assert aix is not None and aix.driver == "ssh" and aix.get("host") == "aix-lille-production.hosts.example.org"
    k8s = config.target("k8s-nord-production")
    assert k8s is not None and k8s.driver == "kubernetes" and k8s.get("inCluster") is True


def test_deployment_is_wired_to_config_secrets_service_and_monitor() -> None:
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = parse_config("/etc/reconciler/config.yaml", one("ConfigMap")["data"]["config.yaml"].encode())
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["args"] == ["run", "--config", "/etc/reconciler/config.yaml"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "limits" in container["resources"] and "requests" in container["resources"]
    # every env:NAME of the config comes from a Secret, and no secret value is written in the manifests
    env = {e["name"]: e for e in container["env"]}
    for ref in (str(v)[4:] for v in config.webhooks.values() if str(v).startswith("env:")):
        assert env[ref]["valueFrom"]["secretKeyRef"]["name"] == "reconciler-webhooks"
    assert not [d for _, d in manifests() if d["kind"] == "Secret"]
    # writable: the state dir and /tmp, as emptyDirs; everything else read-only
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts[config.state_dir]["name"]] and "emptyDir" in volumes[mounts["/tmp"]["name"]]
    projected = volumes[mounts["/etc/reconciler"]["name"]]["projected"]["sources"]
    files = {"/etc/reconciler/" + i["path"] for s in projected if "secret" in s for i in s["secret"]["items"]}
    assert {"reconciler-config"} == {s["configMap"]["name"] for s in projected if "configMap" in s}
    for path in re.findall(r"/etc/reconciler/\S+", env["GIT_SSH_COMMAND"]["value"]):
        assert path in files
    for name in ("aix-x", "linux-x"):
        target = config.target(name)
        assert target is not None and {target.get("identityFile"), target.get("knownHosts")} <= files
    # container port = the config's listen port; Service -> pods; ServiceMonitor -> Service port
    (port,) = container["ports"]
    assert port["containerPort"] == int(config.listen.rsplit(":", 1)[1])
    service, monitor = one("Service"), one("ServiceMonitor")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert pod["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"apt-get install [^\n]*git openssh-client", text)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    assert 'ENTRYPOINT ["reconciler"]' in text
    assert 'CMD ["run", "--config", "/etc/reconciler/config.yaml"]' in text
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.M)
    assert "pip install" in text and " ." in text
    # the package data links (reconciler/bundled/) resolve inside the build context, so the image's wheel has them
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for link in (DEPLOY.parent / "reconciler" / "bundled").iterdir():
        target = os.path.relpath(link.resolve(), DEPLOY.parent)
        assert f"COPY {target} ./{target}" in text and f"!{target}" in ignore, target


# --- a real API server -------------------------------------------------------------------------------------------------
def crd(group: str, kind: str, plural: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A minimal CRD: enough schema to validate the fields our manifests use, the rest kept."""
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": spec}}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": schema}}]}}  # fmt: skip


STRINGS = {"type": "array", "items": {"type": "string"}}
SERVICE_MONITOR = {
    "selector": {"type": "object", "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
    "namespaceSelector": {"type": "object", "properties": {"matchNames": STRINGS}},
    "endpoints": {"type": "array", "items": {"type": "object", "properties": {
        "port": {"type": "string"}, "path": {"type": "string"}, "interval": {"type": "string", "pattern": "^[0-9]+[smh]$"},
        "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+[smh]$"}}}},
}  # fmt: skip
RULE = {"type": "object", "required": ["expr"], "properties": {
    "alert": {"type": "string"}, "record": {"type": "string"}, "expr": {"type": "string"},
    "for": {"type": "string", "pattern": "^[0-9]+[smh]$"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}  # fmt: skip
PROMETHEUS_RULE = {"groups": {"type": "array", "items": {"type": "object", "required": ["name", "rules"], "properties": {
    "name": {"type": "string"}, "rules": {"type": "array", "items": RULE}}}}}  # fmt: skip


def lost_fields(sent: Any, got: Any, path: str = "") -> list[str]:
    """Paths we sent that the server dropped: a field it does not know (pruned or ignored) is a typo."""
    if isinstance(sent, dict):
        if not isinstance(got, dict):
            return [path]
        return [
            p for k, v in sent.items() for p in (lost_fields(v, got[k], f"{path}.{k}") if k in got else [f"{path}.{k}"])
        ]
    if isinstance(sent, list):
        if not isinstance(got, list) or len(got) != len(sent):
            return [path]
        return [p for i, (s, g) in enumerate(zip(sent, got, strict=True)) for p in lost_fields(s, g, f"{path}[{i}]")]
    return []


def test_manifests_dry_run_on_a_real_api_server(kube_server: KubeServer) -> None:
    from kubernetes import config as kube_config
    from kubernetes.dynamic import DynamicClient

    api = kube_config.new_client_from_config(config_file=str(kube_server.kubeconfig))
    client = DynamicClient(api)
    crds = client.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    for body in (crd("monitoring.coreos.com", "ServiceMonitor", "servicemonitors", SERVICE_MONITOR),
                 crd("monitoring.coreos.com", "PrometheusRule", "prometheusrules", PROMETHEUS_RULE)):  # fmt: skip
        crds.server_side_apply(body=body, field_manager="deploy-test")
        deadline = time.monotonic() + 60
        while not any(c["type"] == "Established" and c["status"] == "True"
                      for c in crds.get(name=body["metadata"]["name"]).to_dict().get("status", {}).get("conditions") or []):  # fmt: skip
            assert time.monotonic() < deadline, f"CRD {body['metadata']['name']} not established"
            time.sleep(0.1)  # polling interval, not synchronisation
    docs = [(p, d) for p, d in manifests() if d["kind"] != "Kustomization"]
    namespaces = client.resources.get(api_version="v1", kind="Namespace")
    for name in {d["metadata"].get("namespace") for _, d in docs} - {None}:  # really created: dry-runs need them
        namespaces.server_side_apply(body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
                                     field_manager="deploy-test")  # fmt: skip
    client = DynamicClient(api)  # fresh discovery: the new CRDs' kinds
    for path, doc in docs:
        resource = client.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        got = resource.server_side_apply(
            body=doc, namespace=doc["metadata"].get("namespace"), field_manager="deploy-test", dry_run="All"
        ).to_dict()
        where = f"{path.relative_to(ROOT)}: {doc['kind']} {doc['metadata']['name']}"
        assert got["metadata"]["name"] == doc["metadata"]["name"], where
        assert lost_fields(doc, got) == [], where
