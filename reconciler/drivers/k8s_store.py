"""Reading, recording and deleting what the kubernetes driver owns on one API server.

:class:`Store` keeps the per-application inventory ConfigMaps (optimistic concurrency: a write carries the
``resourceVersion`` it read; a 409 re-reads and retries, bounded), lists which applications of an environment
have one, reads the inventoried objects back, finds owned objects by label selector (``sweep``) and deletes
objects (``prune``) with ``uid`` + ``resourceVersion`` preconditions after checking, on the object as it is right
now, that its marks name this target, environment and application; anything else is left alone. An adopted object
that still holds another field manager's fields is released (our fields and marks removed), not deleted. Namespaces are
never deleted, a CRD only when none of its custom resources remain (see :mod:`reconciler.drivers.kubernetes`).

:func:`api_client_for` builds the official client's ``ApiClient`` from a kubeconfig (+ context) or the in-cluster
service account; the bearer token is registered with the log redaction and never appears in an error message.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from reconciler.core.durations import DurationError, parse_duration
from reconciler.core.problems import PermanentError, TemporaryError
from reconciler.drivers.k8s_api import APPLY_PATCH, MERGE_PATCH, ApiError, KubeApi, Resource, redact
from reconciler.drivers.k8s_objects import (
    ANN_COMPONENT,
    ANN_TARGET,
    CRD_KIND,
    INVENTORY_KEY,
    LABEL_FORMAT,
    LABEL_INVENTORY,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Entry,
    EnvInventory,
    Inventory,
    Owner,
    Ref,
    annotation,
    application_key,
    apply_rank,
    decode_env_inventory,
    decode_inventory,
    inventory_name,
    is_environment_inventory,
    legacy_inventory_name,
    other_managers,
    owner_of,
    ref_of,
    selector,
)
from reconciler.observability.logging import register_secret

INVENTORY_NAMESPACE = "reconciler-system"
CONFIGMAPS = Resource("v1", "ConfigMap", "configmaps", True)
NAMESPACES = Resource("v1", "Namespace", "namespaces", False)
_RETRIES = 5
POOL_SIZE = 32
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
        self._legacy_by_env: dict[str, list[dict[str, Any]]] | None = None  # inventories of earlier versions
        self._legacy_lock = threading.Lock()

    # -- objects -------------------------------------------------------------------------------------------------
    def get(self, resource: Resource, ref: Ref, source: str = "") -> dict[str, Any] | None:
        try:
            return self.api.get(resource.path(ref.namespace, ref.name))
        except ApiError as exc:
            raise self.api.classify(exc, f"{source + ': ' if source else ''}read {ref}") from None

    def list_objects(self, resource: Resource, namespace: str, limit: int) -> dict[str, dict[str, Any]] | None:
        """Every object of ``resource`` in ``namespace`` (or the cluster), by name; ``None`` when there are more than
        ``limit`` or listing is not allowed (then read them one by one)."""
        path = resource.path(namespace or None) if resource.namespaced else resource.path()
        try:
            doc = self.api.request("GET", path, query=[("limit", str(limit))])
        except ApiError as exc:
            if exc.status == 404:  # the kind is not served: nothing of it exists
                return {}
            if exc.status in (401, 403, 405):
                return None
            raise self.api.classify(exc, f"list {resource.kind} in {namespace or 'the cluster'}") from None
        if (doc.get("metadata") or {}).get("continue"):
            return None
        found: dict[str, dict[str, Any]] = {}
        for item in doc.get("items") or []:
            if isinstance(item, dict) and isinstance((item.get("metadata") or {}).get("name"), str):
                item.setdefault("apiVersion", resource.api_version)
                item.setdefault("kind", resource.kind)
                found[item["metadata"]["name"]] = item
        return found

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
                ranked.append((apply_rank(entry.ref, resource.namespaced), entry.ref, resource, entry.adopted))
        deleted: list[Ref] = []
        notes: list[str] = []
        foreign: list[str] = []
        released: list[str] = []
        for _, ref, resource, adopted in sorted(ranked, key=lambda r: -r[0]):
            outcome = self._delete(resource, ref, owner, dry_run, adopted)
            if outcome == "deleted":
                deleted.append(ref)
            elif outcome == "foreign":
                foreign.append(str(ref))
            elif outcome == "released":
                released.append(str(ref))
            elif outcome in _KEPT:
                notes.append(f"kept {ref} ({_KEPT[outcome]})")
        notes += [f"left {', '.join(foreign)} alone (not ours)"] if foreign else []
        if released:
            verb = "would release" if dry_run else "released"
            notes.append(f"{verb} {', '.join(released)} (adopted; other field managers' data kept)")
        return deleted, notes

    def _release(self, resource: Resource, ref: Ref, live: dict[str, Any]) -> None:
        """Give up an adopted object: an apply of nothing by our field manager removes the fields (and marks) it
        owns alone; the other managers' fields, and the object, stay."""
        metadata: dict[str, Any] = {"name": ref.name, "uid": (live.get("metadata") or {}).get("uid")}
        metadata |= {"namespace": ref.namespace} if ref.namespace else {}
        body = {"apiVersion": ref.api_version, "kind": ref.kind, "metadata": metadata}
        try:
            self.api.request(
                "PATCH", resource.path(ref.namespace, ref.name), query=[("fieldManager", self.field_manager)],
                body=body, content_type=APPLY_PATCH,
            )  # fmt: skip
        except ApiError as exc:
            raise self.api.classify(exc, f"release {ref}") from exc

    def _delete(self, resource: Resource, ref: Ref, owner: Owner, dry_run: bool, adopted: bool = False) -> str:
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
            if adopted and other_managers(live, self.field_manager):  # never delete another owner's data
                if not dry_run:
                    self._release(resource, ref, live)
                return "released"
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
    def load(self, environment: str) -> EnvInventory | None:
        """The inventory of ``environment`` on this target, ``None`` when there is none.

        Without one, per-application inventories of earlier versions are folded into a new, unsaved one (its
        ``legacy`` names them; :meth:`save` deletes them once the environment's is written). A ConfigMap of that
        name without our marks is refused (:class:`PermanentError`), never overwritten."""
        name = inventory_name(self.target, environment)
        obj = self.get(CONFIGMAPS, Ref("v1", "ConfigMap", self.namespace, name))
        if obj is None:
            return self._legacy(environment)
        if not is_environment_inventory(obj, self.target, environment):
            raise PermanentError(
                f"kubernetes target {self.target}: ConfigMap {self.namespace}/{name} (the inventory of environment "
                f"{environment}) is not marked as this controller's; refusing to use it"
            )
        return decode_env_inventory(obj, self.target, environment)

    def _legacy(self, environment: str) -> EnvInventory | None:
        items = self._legacy_inventories().get(environment)
        if not items:
            return None
        inventory = EnvInventory(self.target, environment)
        for item in items:
            owner = owner_of(item)
            assert owner is not None
            record = decode_inventory(item, owner)
            if record.unreadable is None:
                inventory.set_record(owner.application, record)
            else:  # kept as it is: reported unreadable
                inventory.texts[application_key(owner.application)] = str((item.get("data") or {}).get(INVENTORY_KEY))
        inventory.legacy = tuple(sorted(str(item["metadata"]["name"]) for item in items))
        return inventory

    def _legacy_inventories(self) -> dict[str, list[dict[str, Any]]]:
        """Per-application inventories of earlier versions of this target, by environment: listed once per process
        (one request; none are written any more), forgotten per environment once folded into its inventory."""
        with self._legacy_lock:  # one list, however many environments start at once
            if self._legacy_by_env is not None:
                return self._legacy_by_env
            query = [("labelSelector", f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INVENTORY}=true,!{LABEL_FORMAT}")]
            try:
                doc = self.api.request("GET", CONFIGMAPS.path(self.namespace), query=query)
            except ApiError as exc:
                if exc.status != 404:
                    raise self.api.classify(exc, f"list inventories in {self.namespace}") from None
                doc = {}
            found: dict[str, list[dict[str, Any]]] = {}
            for item in doc.get("items") or []:
                annotations = (item.get("metadata") or {}).get("annotations") or {}
                if annotations.get(ANN_TARGET) != self.target:
                    continue
                owner = owner_of(item)
                name = (item.get("metadata") or {}).get("name")
                if owner is None or name != legacy_inventory_name(owner):
                    continue
                found.setdefault(owner.environment, []).append(item)
            self._legacy_by_env = found
            return found

    def save(self, inventory: EnvInventory, base: EnvInventory | None, mine: set[str]) -> EnvInventory | None:
        """Write ``inventory`` (create it, patch what changed, or delete it when empty): what is stored now
        (``None``: nothing).

        ``base`` is the version ``inventory`` was made from (as stored) and ``mine`` the applications whose records
        were changed since; only those and the pending scopes are sent, on the condition that the stored version is
        still ``base``. When someone else wrote in between (409), their records of other applications and their
        pending scopes are kept and the write is retried (bounded)."""
        name = inventory.name
        for _ in range(_RETRIES):
            try:
                if inventory.empty():
                    if inventory.resource_version is not None:
                        preconditions = {"resourceVersion": inventory.resource_version}
                        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions}
                        self.api.request("DELETE", CONFIGMAPS.path(self.namespace, name), body=body)
                    stored = None
                else:
                    path = CONFIGMAPS.path(self.namespace, name)
                    if inventory.resource_version is None:
                        doc = self.api.request(
                            "POST", CONFIGMAPS.path(self.namespace), body=inventory.encode(self.namespace)
                        )
                    elif base is None or base.resource_version != inventory.resource_version:
                        doc = self.api.request("PUT", path, body=inventory.encode(self.namespace))
                    else:
                        patch = inventory.patch(base, mine)
                        doc = self.api.request("PATCH", path, body=patch, content_type=MERGE_PATCH)
                    rv = (doc.get("metadata") or {}).get("resourceVersion")
                    stored = replace(inventory.copy(), resource_version=rv, legacy=())
                    stored.pending, stored.pending_unknown = stored.all_scopes(), False  # as the header now says
                if inventory.legacy:
                    self._drop_legacy(inventory.environment, inventory.legacy)
                return stored
            except ApiError as exc:
                if exc.status == 404 and inventory.resource_version is None:
                    self._ensure_namespace()
                elif exc.status == 404 and inventory.empty():
                    return None
                elif exc.status not in (404, 409):
                    raise self.api.classify(exc, f"write inventory {self.namespace}/{name}") from None
            current = self.load(inventory.environment)  # 409/404: someone else wrote or deleted it: merge, retry
            inventory = _merge(inventory, base, current, mine)
            base = current
        raise TemporaryError(f"kubernetes target {self.target}: inventory {name} keeps changing; try again")

    def _drop_legacy(self, environment: str, names: Iterable[str]) -> None:
        with self._legacy_lock:
            if self._legacy_by_env is not None:
                self._legacy_by_env.pop(environment, None)
        for name in names:  # folded into the environment's inventory, which is written: best effort
            with contextlib.suppress(ApiError, TemporaryError):
                self.api.request("DELETE", CONFIGMAPS.path(self.namespace, name))

    def _ensure_namespace(self) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
        try:
            self.api.request("POST", NAMESPACES.path(), body=body)
        except ApiError as exc:
            if exc.status != 409:
                raise self.api.classify(exc, f"create the inventory namespace {self.namespace}") from None

    def recover(self, inventory: EnvInventory) -> tuple[EnvInventory, set[str]]:
        """``inventory`` plus the objects of its pending scopes that are marked as ours but named by no record
        (an apply interrupted after the scope was recorded), each added to its application's record as a pending
        entry; and the applications whose record so changed. Nothing is written."""
        recovered = inventory.copy()
        tracked = {e.ref.identity for r in recovered.records() for e in r.entries}
        adopted: set[str] = set()
        for api_version, kind, namespace in sorted(inventory.all_scopes()):
            resource = self.api.resource(api_version, kind)
            if resource is None:
                continue  # not served (any more): nothing of it can exist
            path = resource.path(namespace or None) if resource.namespaced else resource.path()
            try:
                doc = self.api.request("GET", path, query=[("labelSelector", selector(inventory.environment))])
            except ApiError as exc:
                if exc.status == 404:
                    continue
                raise self.api.classify(exc, f"list {kind} in {namespace or 'the cluster'}") from None
            for item in doc.get("items") or []:
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                owner = owner_of(item)
                if owner is None or (owner.target, owner.environment) != (self.target, inventory.environment):
                    continue
                ref = ref_of(item)
                record = recovered.record(owner.application)
                if ref.identity in tracked or (record is not None and record.unreadable is not None):
                    continue  # tracked, or the record is unreadable (its next apply finds objects by label)
                tracked.add(ref.identity)
                record = record or Inventory(owner, None, None)
                entry = Entry(ref, annotation(item, ANN_COMPONENT) or "")
                recovered.set_record(owner.application, replace(record, entries=(*record.entries, entry)))
                adopted.add(owner.application)
        return recovered, adopted


def _merge(ours: EnvInventory, base: EnvInventory | None, current: EnvInventory | None, mine: set[str]) -> EnvInventory:
    """``ours`` re-based on ``current``: our records of ``mine``, theirs of the others, both sides' pending scopes."""
    if current is None:  # deleted meanwhile: ours, created again
        return replace(ours.copy(), resource_version=None)
    merged = current.copy()
    for application in mine:
        key = application_key(application)
        merged.texts.pop(key, None)
        merged._decoded.pop(key, None)
        if key in ours.texts:
            merged.texts[key] = ours.texts[key]
    theirs = current.all_scopes() - (base.all_scopes() if base is not None else frozenset())
    merged.pending = ours.pending | theirs
    merged.pending_unknown = False
    merged.legacy = ours.legacy
    return merged


def parse_timeout(value: object, default: float) -> float:
    if value is None:
        return default
    try:
        return float(parse_duration(str(value)))
    except DurationError as exc:
        raise PermanentError(str(exc)) from None


def api_client_for(name: str, *, kubeconfig: str | None, context: str | None, in_cluster: bool = False) -> Any:
    """An ``ApiClient`` for target ``name``; :class:`PermanentError` when its credentials cannot be loaded."""
    from kubernetes import client, config  # the Kubernetes client is loaded only when a target needs it

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
    if not in_cluster and not credentials_expire(configuration):
        # the loader's hook runs before every request and re-sets the token, host, proxy... (the host's setter scans
        # the environment for proxies: ~0.2 ms a request); with credentials that never expire it changes nothing
        configuration.refresh_api_key_hook = None
    configuration.retries = transport_retries()
    # one kept-alive connection per concurrent caller (environment workers, lease renewals): a full pool would
    # drop connections and pay a new TLS handshake per request
    configuration.connection_pool_maxsize = max(int(configuration.connection_pool_maxsize or 0), POOL_SIZE)
    return client.ApiClient(configuration)


def credentials_expire(configuration: Any) -> bool:
    """Whether the kubeconfig loader's refresh hook of ``configuration`` may ever change its credentials.

    The loader (``kubernetes.config.kube_config``) installs a hook that reloads the credentials when they have an
    ``expiry`` (an exec plugin's ``expirationTimestamp``, a gcp auth provider's) and otherwise sets the very same
    values again. The loader is the hook's closure variable ``self``; when it cannot be found (another client
    version), the credentials are taken to expire and the hook is kept."""
    hook = getattr(configuration, "refresh_api_key_hook", None)
    if hook is None:
        return False
    from kubernetes.config.kube_config import KubeConfigLoader

    try:
        loader = inspect.getclosurevars(hook).nonlocals.get("self")
    except TypeError:  # not a Python function
        return True
    return not isinstance(loader, KubeConfigLoader) or "expiry" in vars(loader)


def transport_retries() -> Any:
    """One retry of a failed connection, nothing else: the engine backs off per environment, and urllib3 would
    otherwise sleep on a 429's Retry-After by itself."""
    import urllib3

    return urllib3.Retry(total=1, connect=1, read=0, status=0, redirect=0, other=0, respect_retry_after_header=False)
