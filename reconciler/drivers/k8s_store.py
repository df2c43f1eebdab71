"""Reading, recording and deleting what the kubernetes driver owns on one API server.

:class:`Store` keeps the per-application inventory ConfigMaps (optimistic concurrency: a write carries the
``resourceVersion`` it read; a 409 re-reads and retries, bounded), lists which applications of an environment
have one, reads the inventoried objects back, finds owned objects by label selector (``sweep``) and deletes
objects (``prune``) with ``uid`` + ``resourceVersion`` preconditions after checking, on the object as it is right
now, that its marks name this target, environment and application; anything else is left alone. Namespaces are
never deleted, a CRD only when none of its custom resources remain (see :mod:`reconciler.drivers.kubernetes`).

:func:`api_client_for` builds the official client's ``ApiClient`` from a kubeconfig (+ context) or the in-cluster
service account; the bearer token is registered with the log redaction and never appears in an error message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from reconciler.core.durations import DurationError, parse_duration
from reconciler.core.problems import PermanentError, TemporaryError
from reconciler.drivers.k8s_api import ApiError, KubeApi, Resource
from reconciler.drivers.k8s_objects import (
    CRD_KIND,
    LABEL_INVENTORY,
    Entry,
    Inventory,
    Owner,
    Ref,
    apply_rank,
    decode_inventory,
    inventory_name,
    owner_of,
    ref_of,
    selector,
)

INVENTORY_NAMESPACE = "reconciler-system"
CONFIGMAPS = Resource("v1", "ConfigMap", "configmaps", True)
NAMESPACES = Resource("v1", "Namespace", "namespaces", False)
_RETRIES = 5
_KEPT = {
    "namespace": "deleting a namespace deletes everything in it",
    "crd": "custom resources of it remain",
}


class Store:
    def __init__(self, api: KubeApi, target: str, namespace: str, field_manager: str, propagation: str) -> None:
        self.api = api
        self.target = target
        self.namespace = namespace
        self.field_manager = field_manager
        self.propagation = propagation

    # -- objects -------------------------------------------------------------------------------------------------
    def get(self, resource: Resource, ref: Ref, source: str = "") -> dict[str, Any] | None:
        try:
            return self.api.get(resource.path(ref.namespace, ref.name))
        except ApiError as exc:
            raise self.api.classify(exc, f"{source + ': ' if source else ''}read {ref}") from None

    def wait_established(self, crds: list[tuple[Resource, Ref, dict[str, Any]]], timeout: float) -> None:
        """Poll until every CRD of ``crds`` (resource, ref, body) is Established; forget stale discovery."""
        deadline = time.monotonic() + timeout
        for resource, ref, body in crds:
            while True:
                conditions = ((self.get(resource, ref) or {}).get("status") or {}).get("conditions") or []
                if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                    break
                if time.monotonic() > deadline:
                    raise TemporaryError(f"kubernetes target {self.target}: {ref} not established after {timeout:.0f}s")
                time.sleep(0.05)
            spec = body.get("spec") or {}
            for version in spec.get("versions") or []:
                self.api.invalidate(f"{spec.get('group')}/{version.get('name')}")

    def _resource(self, ref: Ref) -> Resource | None:
        return self.api.resource(ref.api_version, ref.kind)

    def live_objects(self, inventory: Inventory) -> list[tuple[Entry, dict[str, Any] | None]]:
        """Every inventoried object as it is now (``None`` when missing or its kind is no longer served)."""
        found = []
        for entry in inventory.entries:
            resource = self._resource(entry.ref)
            found.append((entry, self.get(resource, entry.ref) if resource else None))
        return found

    def sweep(self, owner: Owner, refs: Iterable[Ref], exclude: set[tuple[str, str, str, str]]) -> list[Ref]:
        """Objects marked as ``owner``'s, of the kinds and in the namespaces of ``refs``, minus ``exclude``."""
        refs = list(refs)
        kinds = {(r.api_version, r.kind) for r in refs if (r.group, r.kind) not in (CRD_KIND, ("", "Namespace"))}
        namespaces = {r.namespace for r in refs if r.namespace}
        found: list[Ref] = []
        for api_version, kind in sorted(kinds):
            resource = self.api.resource(api_version, kind)
            if resource is None:
                continue
            for namespace in sorted(namespaces) if resource.namespaced else [""]:
                path = resource.path(namespace or None)
                try:
                    doc = self.api.request(
                        "GET", path, query=[("labelSelector", selector(owner.environment, owner.application))]
                    )
                except ApiError as exc:
                    raise self.api.classify(exc, f"list {kind} in {namespace or 'the cluster'}") from None
                for item in doc.get("items") or []:
                    item.setdefault("apiVersion", api_version)
                    item.setdefault("kind", kind)
                    ref = ref_of(item)
                    if owner_of(item) == owner and ref.identity not in exclude:
                        exclude.add(ref.identity)
                        found.append(ref)
        return found

    def prune(self, owner: Owner, entries: Iterable[Entry], dry_run: bool = False) -> tuple[list[Ref], list[str]]:
        """Delete ``entries`` that are still ``owner``'s (namespaced first); the deleted refs and notes."""
        ranked = []
        for entry in entries:
            resource = self._resource(entry.ref)
            if resource is not None:  # a kind no longer served holds nothing to delete
                ranked.append((apply_rank(entry.ref, resource.namespaced), entry.ref, resource))
        deleted: list[Ref] = []
        notes: list[str] = []
        foreign: list[str] = []
        for _, ref, resource in sorted(ranked, key=lambda r: -r[0]):
            outcome = self._delete(resource, ref, owner, dry_run)
            if outcome == "deleted":
                deleted.append(ref)
            elif outcome == "foreign":
                foreign.append(str(ref))
            elif outcome in _KEPT:
                notes.append(f"kept {ref} ({_KEPT[outcome]})")
        notes += [f"left {', '.join(foreign)} alone (not ours)"] if foreign else []
        return deleted, notes

    def _delete(self, resource: Resource, ref: Ref, owner: Owner, dry_run: bool) -> str:
        path = resource.path(ref.namespace, ref.name)
        for _ in range(_RETRIES):
            live = self.get(resource, ref)
            if live is None or (live.get("metadata") or {}).get("deletionTimestamp"):
                return "gone"
            if owner_of(live) != owner:
                return "foreign"
            if (ref.group, ref.kind) == ("", "Namespace"):
                return "namespace"
            if (ref.group, ref.kind) == CRD_KIND and self._has_custom_resources(live):
                return "crd"
            if dry_run:
                return "deleted"
            metadata = live["metadata"]
            options = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "propagationPolicy": self.propagation,
                "preconditions": {"uid": metadata.get("uid"), "resourceVersion": metadata.get("resourceVersion")},
            }
            try:
                self.api.request("DELETE", path, body=options)
                return "deleted"
            except ApiError as exc:
                if exc.status == 404:
                    return "gone"
                if exc.status != 409:  # 409: changed since we read it: read again, check again
                    raise self.api.classify(exc, f"delete {ref}") from None
        raise TemporaryError(f"kubernetes target {self.target}: {ref} keeps changing; not deleted this time")

    def _has_custom_resources(self, crd: dict[str, Any]) -> bool:
        spec = crd.get("spec") or {}
        versions = [v.get("name") for v in spec.get("versions") or [] if v.get("served", True)]
        if not versions or not spec.get("group"):
            return False
        plural = (spec.get("names") or {}).get("plural")
        resource = Resource(f"{spec['group']}/{versions[0]}", "", str(plural), False)
        try:
            doc = self.api.request("GET", resource.path(), query=[("limit", "1")])
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise self.api.classify(exc, f"list {plural}") from None
        return bool(doc.get("items"))

    # -- the inventory -------------------------------------------------------------------------------------------
    def read(self, owner: Owner) -> Inventory | None:
        """The inventory of ``owner``, ``None`` when there is none (``unreadable`` set when it cannot be decoded).

        A ConfigMap of that name without our marks is refused (:class:`PermanentError`), never overwritten."""
        obj = self.get(CONFIGMAPS, Ref("v1", "ConfigMap", self.namespace, inventory_name(owner)))
        if obj is None:
            return None
        if owner_of(obj) != owner:
            raise PermanentError(
                f"kubernetes target {self.target}: ConfigMap {self.namespace}/{inventory_name(owner)} (the inventory "
                f"of {owner.environment}/{owner.application}) is not marked as this controller's; refusing to use it"
            )
        return decode_inventory(obj, owner)

    def save(self, inventory: Inventory, merge: bool = False) -> Inventory:
        """Write ``inventory`` (create or replace); with ``merge``, keep entries a concurrent writer added."""
        name = inventory_name(inventory.owner)
        for _ in range(_RETRIES):
            body = inventory.encode(self.namespace)
            try:
                if inventory.resource_version is None:
                    doc = self.api.request("POST", CONFIGMAPS.path(self.namespace), body=body)
                else:
                    doc = self.api.request("PUT", CONFIGMAPS.path(self.namespace, name), body=body)
                return replace(inventory, resource_version=(doc.get("metadata") or {}).get("resourceVersion"))
            except ApiError as exc:
                if exc.status == 404 and inventory.resource_version is None:
                    self._ensure_namespace()
                elif exc.status not in (404, 409):
                    raise self.api.classify(exc, f"write inventory {self.namespace}/{name}") from None
            current = self.read(inventory.owner)  # 409/404: someone else wrote or deleted it: read and retry
            rv = current.resource_version if current is not None else None
            entries = inventory.entries
            if merge and current is not None and current.unreadable is None:
                mine = {e.ref.identity for e in entries}
                entries += tuple(e for e in current.entries if e.ref.identity not in mine)
            inventory = replace(inventory, entries=entries, resource_version=rv)
        raise TemporaryError(f"kubernetes target {self.target}: inventory {name} keeps changing; try again")

    def _ensure_namespace(self) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
        try:
            self.api.request("POST", NAMESPACES.path(), body=body)
        except ApiError as exc:
            if exc.status != 409:
                raise self.api.classify(exc, f"create the inventory namespace {self.namespace}") from None

    def drop(self, owner: Owner) -> None:
        try:
            self.api.request("DELETE", CONFIGMAPS.path(self.namespace, inventory_name(owner)))
        except ApiError as exc:
            if exc.status != 404:
                raise self.api.classify(exc, f"delete inventory {inventory_name(owner)}") from None

    def applications(self, environment: str) -> list[str]:
        """Applications of ``environment`` with an inventory of this target."""
        query = [("labelSelector", f"{selector(environment)},{LABEL_INVENTORY}=true")]
        try:
            doc = self.api.request("GET", CONFIGMAPS.path(self.namespace), query=query)
        except ApiError as exc:
            if exc.status == 404:
                return []
            raise self.api.classify(exc, f"list inventories of {environment}") from None
        owners = [owner_of(item) for item in doc.get("items") or []]
        return sorted({o.application for o in owners if o and o.target == self.target and o.environment == environment})


def parse_timeout(value: object, default: float) -> float:
    if value is None:
        return default
    try:
        return float(parse_duration(str(value)))
    except DurationError as exc:
        raise PermanentError(str(exc)) from None


def api_client_for(name: str, *, kubeconfig: str | None, context: str | None, in_cluster: bool = False) -> Any:
    """An ``ApiClient`` for target ``name``; :class:`PermanentError` when its credentials cannot be loaded."""
    from kubernetes import client, config

    from reconciler.drivers.k8s_api import redact
    from reconciler.observability.logging import register_secret

    configuration = client.Configuration()
    where = "the in-cluster service account" if in_cluster else f"kubeconfig {kubeconfig or '$KUBECONFIG'}"
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            # $KUBECONFIG read now, not when the client library was imported (it may list several files)
            files = kubeconfig or os.environ.get("KUBECONFIG") or None
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=files, context=context, client_configuration=configuration, persist_config=False
            )
    except Exception as exc:  # noqa: BLE001 - ConfigException, OSError, YAML errors...: a configuration problem
        detail = redact(str(exc).splitlines()[0][:200]) if str(exc) else type(exc).__name__
        raise PermanentError(f"kubernetes target {name}: cannot load {where}: {detail}") from None
    for value in (configuration.api_key or {}).values():
        register_secret(str(value).removeprefix("Bearer ").strip())
    configuration.retries = transport_retries()
    return client.ApiClient(configuration)


def transport_retries() -> Any:
    """One retry of a failed connection, nothing else: the engine backs off per environment, and urllib3 would
    otherwise sleep on a 429's Retry-After by itself."""
    import urllib3

    return urllib3.Retry(total=1, connect=1, read=0, status=0, redirect=0, other=0, respect_retry_after_header=False)
