"""The normalisation rules of the kubernetes driver (k8s_normalize), one by one, on the shapes people write."""

from __future__ import annotations

from typing import Any

import yaml

from reconciler.drivers.k8s_normalize import RULES, normalize


def _obj(text: str) -> dict[str, Any]:
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def test_service_and_container_ports_get_tcp_unless_they_say() -> None:
    service = _obj("apiVersion: v1\nkind: Service\nspec:\n  ports: [{port: 80}, {port: 53, protocol: UDP}]\n")
    assert normalize(service) == ["port-protocol"]
    assert [p["protocol"] for p in service["spec"]["ports"]] == ["TCP", "UDP"]
    cron = _obj("""
apiVersion: batch/v1
kind: CronJob
spec:
  jobTemplate:
    spec:
      template:
        spec:
          initContainers: [{name: i, ports: [{containerPort: 1}]}]
          containers: [{name: c, ports: [{containerPort: 8080}], resources: {limits: {cpu: 2, memory: 0.5}}}]
""")
    assert normalize(cron) == ["port-protocol", "quantity-string"]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["ports"][0]["protocol"] == "TCP"
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "0.5"}


def test_quantities_of_claims_quotas_and_limit_ranges() -> None:
    claim = _obj("apiVersion: v1\nkind: PersistentVolumeClaim\nspec:\n  resources: {requests: {storage: 1.0}}\n")
    quota = _obj("apiVersion: v1\nkind: ResourceQuota\nspec:\n  hard: {pods: 10, cpu: 4}\n")
    ranges = _obj("apiVersion: v1\nkind: LimitRange\nspec:\n  limits: [{type: Container, max: {cpu: 2}}]\n")
    assert normalize(claim) == normalize(quota) == normalize(ranges) == ["quantity-string"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1"
    assert quota["spec"]["hard"] == {"pods": "10", "cpu": "4"}
    assert ranges["spec"]["limits"][0]["max"] == {"cpu": "2"}


def test_status_and_a_null_creation_timestamp_are_dropped_and_custom_resources_kept_as_written() -> None:
    generated = _obj(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x, creationTimestamp: null}\nstatus: {}\n"
    )
    assert normalize(generated) == ["no-creation-timestamp", "no-status"]
    assert generated == {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}
    custom = _obj("apiVersion: example.com/v1\nkind: Service\nspec:\n  ports: [{port: 80}]\n  cpu: 1\n")
    assert normalize(custom) == [] and "protocol" not in custom["spec"]["ports"][0]


def test_an_object_already_normal_is_left_alone_and_every_rule_is_documented() -> None:
    service = _obj("apiVersion: v1\nkind: Service\nspec:\n  ports: [{port: 80, protocol: TCP}]\n")
    assert normalize(service) == [] and service["spec"]["ports"] == [{"port": 80, "protocol": "TCP"}]
    with open("docs/kubernetes.md", encoding="utf-8") as handle:
        table = handle.read()
    assert all(f"`{rule}`" in table for rule in RULES)
