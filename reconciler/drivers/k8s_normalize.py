"""Normalise objects for server-side apply, as Flux does before it applies: what people write that the API server's
apply schema refuses, or that would make every cycle write the object again.

Called by :class:`reconciler.drivers.kubernetes.KubernetesDriver` on every desired object (after parsing, before
the ownership marks), so ``diff``, the dry-run and the apply all see the same object. Each rule is named in
:data:`RULES` (the table of docs/kubernetes.md) and only touches built-in kinds whose schema it knows: a custom
resource is sent as written. Pure; mutates the object it is given and returns the names of the rules applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

RULES = {
    "port-protocol": "ports of a Service and of a pod's containers without protocol get protocol: TCP (the key of "
    "the list: older API servers refuse an apply without it)",
    "quantity-string": "resource quantities written as YAML numbers (cpu: 1, memory: 0.5) become strings, the "
    "Quantity type's form (older API servers refuse numbers in an apply)",
    "no-status": "status is dropped (the API server ignores it in an apply, so it would look changed every cycle)",
    "no-creation-timestamp": "metadata.creationTimestamp: null (kubectl --dry-run and Helm output) is dropped",
}

# where the pod spec lives, by (group, kind) of built-in workload kinds
_POD_SPEC_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): ("spec",),
    ("", "PodTemplate"): ("template", "spec"),
    ("", "ReplicationController"): ("spec", "template", "spec"),
    ("apps", "Deployment"): ("spec", "template", "spec"),
    ("apps", "ReplicaSet"): ("spec", "template", "spec"),
    ("apps", "StatefulSet"): ("spec", "template", "spec"),
    ("apps", "DaemonSet"): ("spec", "template", "spec"),
    ("batch", "Job"): ("spec", "template", "spec"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template", "spec"),
}
_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
_LIMIT_RANGE_KEYS = ("max", "min", "default", "defaultRequest", "maxLimitRequestRatio")


def normalize(body: dict[str, Any]) -> list[str]:
    """Apply the rules of :data:`RULES` to ``body`` (one Kubernetes object); the names of those that changed it."""
    applied: set[str] = set()
    if "status" in body:
        del body["status"]
        applied.add("no-status")
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and "creationTimestamp" in metadata and metadata["creationTimestamp"] is None:
        del metadata["creationTimestamp"]
        applied.add("no-creation-timestamp")
    api_version = str(body.get("apiVersion", ""))
    group = api_version.rpartition("/")[0]
    kind = str(body.get("kind", ""))
    spec = body.get("spec")
    if (group, kind) == ("", "Service") and isinstance(spec, dict) and _default_protocol(spec.get("ports")):
        applied.add("port-protocol")
    path = _POD_SPEC_PATHS.get((group, kind))
    if path is not None:
        applied |= _pod_spec(_at(body, path))
    if (group, kind) == ("apps", "StatefulSet") and isinstance(spec, dict):
        for claim in _dicts(spec.get("volumeClaimTemplates")):
            applied |= _quantities_in(_at(claim, ("spec", "resources")), ("requests", "limits"))
    if (group, kind) == ("", "PersistentVolumeClaim"):
        applied |= _quantities_in(_at(body, ("spec", "resources")), ("requests", "limits"))
    if (group, kind) == ("", "ResourceQuota"):
        applied |= _quantities_in(spec, ("hard",))
    if (group, kind) == ("", "LimitRange") and isinstance(spec, dict):
        for limit in _dicts(spec.get("limits")):
            applied |= _quantities_in(limit, _LIMIT_RANGE_KEYS)
    return sorted(applied)


def _pod_spec(spec: Any) -> set[str]:
    applied: set[str] = set()
    if not isinstance(spec, dict):
        return applied
    for name in _CONTAINER_LISTS:
        for container in _dicts(spec.get(name)):
            if _default_protocol(container.get("ports")):
                applied.add("port-protocol")
            applied |= _quantities_in(container.get("resources"), ("limits", "requests"))
    applied |= _quantities_in(spec, ("overhead",))
    for volume in _dicts(spec.get("volumes")):
        empty_dir = volume.get("emptyDir")
        if isinstance(empty_dir, dict) and _is_number(empty_dir.get("sizeLimit")):
            empty_dir["sizeLimit"] = _quantity(empty_dir["sizeLimit"])
            applied.add("quantity-string")
    return applied


def _default_protocol(ports: Any) -> bool:
    changed = False
    for port in _dicts(ports):
        if "protocol" not in port:
            port["protocol"] = "TCP"
            changed = True
    return changed


def _quantities_in(holder: Any, keys: tuple[str, ...]) -> set[str]:
    """Numbers under ``holder[key][resource]`` for each key become quantity strings."""
    changed = False
    if isinstance(holder, dict):
        for key in keys:
            amounts = holder.get(key)
            if not isinstance(amounts, dict):
                continue
            for resource, amount in amounts.items():
                if _is_number(amount):
                    amounts[resource] = _quantity(amount)
                    changed = True
    return {"quantity-string"} if changed else set()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _quantity(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _dicts(items: Any) -> Iterator[dict[str, Any]]:
    if isinstance(items, list):
        yield from (item for item in items if isinstance(item, dict))
