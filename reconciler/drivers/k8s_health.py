"""Health of live Kubernetes objects, as ``kubectl rollout status`` and kstatus read it.

:func:`assess` looks at one object and returns a :class:`~reconciler.core.state.Health` with a short reason:

* Deployment: the controller must have observed the latest generation; ``Progressing=False`` with
  ``ProgressDeadlineExceeded`` is Degraded; fewer updated or available replicas than wanted, or old replicas
  still around, is Progressing.
* StatefulSet (rolling update, partition honoured) and DaemonSet: observed generation, updated and ready/available
  counts against the desired count.
* Job: ``Complete`` is Healthy, ``Failed`` is Degraded, anything else Progressing.
* CustomResourceDefinition: ``Established`` (``NamesAccepted=False`` is Degraded).
* PersistentVolumeClaim ``Bound``, Pod phases, Services of type LoadBalancer with an ingress address.
* Any other object with ``status.conditions``: ``Stalled=True`` or ``Ready``/``Available`` ``False`` is Degraded
  (Progressing while ``status.observedGeneration`` lags behind), ``Reconciling=True`` or ``Unknown`` Progressing.
* Everything else is Healthy once it exists.

The driver combines them worst-of (:func:`~reconciler.core.state.worst`) and turns a Progressing that lasts past
``healthTimeout`` after the last apply into Degraded. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from reconciler.core.state import Health

Assessment = tuple[Health, str]


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    status = obj.get("status") or {}
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    return {
        str(c.get("type")): c
        for c in (conditions if isinstance(conditions, list) else [])
        if isinstance(c, Mapping) and c.get("type")
    }


def _why(condition: Mapping[str, Any]) -> str:
    return str(condition.get("message") or condition.get("reason") or condition.get("type"))


def _generation_lag(obj: Mapping[str, Any]) -> bool:
    status = obj.get("status") or {}
    observed = status.get("observedGeneration") if isinstance(status, Mapping) else None
    generation = (obj.get("metadata") or {}).get("generation")
    return isinstance(generation, int) and (not isinstance(observed, int) or observed < generation)


def _deployment(obj: Mapping[str, Any]) -> Assessment:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    progressing = _conditions(obj).get("Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        return Health.DEGRADED, f"rollout exceeded its progress deadline: {_why(progressing)}"
    if _generation_lag(obj):
        return Health.PROGRESSING, "waiting for the rollout to be observed"
    if spec.get("paused"):
        return Health.HEALTHY, "paused"
    wanted = _int(spec.get("replicas"), 1)
    updated, total = _int(status.get("updatedReplicas")), _int(status.get("replicas"))
    available = _int(status.get("availableReplicas"))
    if updated < wanted:
        return Health.PROGRESSING, f"{updated} of {wanted} replicas updated"
    if total > updated:
        return Health.PROGRESSING, f"{total - updated} old replicas pending termination"
    if available < updated:
        return Health.PROGRESSING, f"{available} of {updated} updated replicas available"
    return Health.HEALTHY, ""


def _statefulset(obj: Mapping[str, Any]) -> Assessment:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if _generation_lag(obj):
        return Health.PROGRESSING, "waiting for the rollout to be observed"
    wanted = _int(spec.get("replicas"), 1)
    ready = _int(status.get("readyReplicas"))
    strategy = spec.get("updateStrategy") or {}
    if strategy.get("type", "RollingUpdate") == "RollingUpdate":
        partition = _int((strategy.get("rollingUpdate") or {}).get("partition"))
        updated = _int(status.get("updatedReplicas"))
        if updated < wanted - partition:
            return Health.PROGRESSING, f"{updated} of {wanted - partition} replicas updated"
        if not partition and status.get("updateRevision") != status.get("currentRevision"):
            return Health.PROGRESSING, "waiting for the update to complete"
    if ready < wanted:
        return Health.PROGRESSING, f"{ready} of {wanted} replicas ready"
    return Health.HEALTHY, ""


def _daemonset(obj: Mapping[str, Any]) -> Assessment:
    status = obj.get("status") or {}
    if _generation_lag(obj):
        return Health.PROGRESSING, "waiting for the rollout to be observed"
    wanted = _int(status.get("desiredNumberScheduled"))
    updated, available = _int(status.get("updatedNumberScheduled")), _int(status.get("numberAvailable"))
    if updated < wanted:
        return Health.PROGRESSING, f"{updated} of {wanted} pods updated"
    if available < wanted:
        return Health.PROGRESSING, f"{available} of {wanted} pods available"
    return Health.HEALTHY, ""


def _job(obj: Mapping[str, Any]) -> Assessment:
    conditions = _conditions(obj)
    failed, complete = conditions.get("Failed"), conditions.get("Complete")
    if failed and failed.get("status") == "True":
        return Health.DEGRADED, f"job failed: {_why(failed)}"
    if complete and complete.get("status") == "True":
        return Health.HEALTHY, ""
    return Health.PROGRESSING, "job running"


def _crd(obj: Mapping[str, Any]) -> Assessment:
    conditions = _conditions(obj)
    names = conditions.get("NamesAccepted")
    if names and names.get("status") == "False":
        return Health.DEGRADED, f"names not accepted: {_why(names)}"
    established = conditions.get("Established")
    if established and established.get("status") == "True":
        return Health.HEALTHY, ""
    return Health.PROGRESSING, "not established yet"


def _pvc(obj: Mapping[str, Any]) -> Assessment:
    phase = (obj.get("status") or {}).get("phase")
    if phase == "Bound":
        return Health.HEALTHY, ""
    if phase == "Lost":
        return Health.DEGRADED, "volume lost"
    return Health.PROGRESSING, f"claim {phase or 'pending'}"


def _pod(obj: Mapping[str, Any]) -> Assessment:
    phase = (obj.get("status") or {}).get("phase")
    if phase == "Failed":
        return Health.DEGRADED, "pod failed"
    if phase == "Succeeded":
        return Health.HEALTHY, ""
    ready = _conditions(obj).get("Ready")
    if phase == "Running" and ready and ready.get("status") == "True":
        return Health.HEALTHY, ""
    return Health.PROGRESSING, f"pod {phase or 'pending'}"


def _service(obj: Mapping[str, Any]) -> Assessment:
    if (obj.get("spec") or {}).get("type") != "LoadBalancer":
        return Health.HEALTHY, ""
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress")
    return (Health.HEALTHY, "") if ingress else (Health.PROGRESSING, "waiting for a load balancer address")


def _generic(obj: Mapping[str, Any]) -> Assessment:
    conditions = _conditions(obj)
    if not conditions:
        return Health.HEALTHY, ""
    stalled = conditions.get("Stalled")
    if stalled and stalled.get("status") == "True":
        return Health.DEGRADED, f"stalled: {_why(stalled)}"
    if _generation_lag(obj) and "observedGeneration" in (obj.get("status") or {}):
        return Health.PROGRESSING, "waiting for the change to be observed"
    reconciling = conditions.get("Reconciling")
    if reconciling and reconciling.get("status") == "True":
        return Health.PROGRESSING, f"reconciling: {_why(reconciling)}"
    for kind in ("Ready", "Available"):
        condition = conditions.get(kind)
        if condition is None:
            continue
        if condition.get("status") == "False":
            return Health.DEGRADED, f"{kind}=False: {_why(condition)}"
        if condition.get("status") != "True":
            return Health.PROGRESSING, f"{kind} unknown: {_why(condition)}"
    return Health.HEALTHY, ""


_BY_KIND: dict[tuple[str, str], Callable[[Mapping[str, Any]], Assessment]] = {
    ("apps", "Deployment"): _deployment,
    ("apps", "StatefulSet"): _statefulset,
    ("apps", "DaemonSet"): _daemonset,
    ("batch", "Job"): _job,
    ("apiextensions.k8s.io", "CustomResourceDefinition"): _crd,
    ("", "PersistentVolumeClaim"): _pvc,
    ("", "Pod"): _pod,
    ("", "Service"): _service,
}


def assess(obj: Mapping[str, Any]) -> Assessment:
    """The health of one live object and, when not Healthy, why."""
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    check = _BY_KIND.get((group, str(obj.get("kind", ""))), _generic)
    return check(obj)
