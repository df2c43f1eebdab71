"""The ``kubernetes`` driver: server-side apply with a field manager, ownership marks, safe prune, workload health.

Created by :func:`build_kubernetes_driver` from a target of the operator config (``kubeconfig`` + ``context`` or
``inCluster``, ``namespaces``, ``qps``/``burst``, ``forceConflicts``, ``healthTimeout``); called by the engine per
(environment, application). Objects are every YAML document of ``unit.files()``; namespaced objects without a
namespace get the environment's ``namespace`` parameter. A target limited to ``namespaces`` refuses objects in
other namespaces and cluster-scoped objects (except those Namespaces).

**Inventory.** What an application holds on a target is recorded in a ConfigMap ``reconciler-inventory-<hash of
target, environment, application>`` in the inventory namespace (default ``reconciler-system``, created on first
use; reserved: manifests may not write there): version, fingerprint, apply time and every object with a digest of
the fields our field manager owns. It is written *before* new objects are created (a journal: a crash mid-apply
leaves nothing untracked) and rewritten after, so ``observe``, ``owned_applications``, prune and ``remove`` work
after a controller restart with one read, whatever kinds (custom resources included) the application used. When
the inventory is unreadable at apply time, and always on ``remove``, owned objects are also found by label
selector across the kinds and namespaces involved (a missing inventory means nothing was deployed: the journal
comes first; only deleting it by hand orphans objects, which then stay in place).

**Apply** runs in order CRDs (then waits until Established, bounded), Namespaces, other cluster-scoped objects,
namespaced objects. An object whose fingerprint annotation already matches is compared through a server-side
dry-run apply and skipped when neither a value nor our field ownership would change, so re-applying what runs
writes nothing (no apply loop from server defaulting). Objects that left the desired set are pruned, but only
when their marks name this target, environment and application (``managed-by: reconciler``): anything else is
never deleted. Namespaces are never deleted (that would delete every object inside, ours or not) and a CRD only
when no custom resource of it remains; such objects are left in place (orphaned) and the message says so.

**Conflicts.** A field owned by another manager that *applied* it (another controller) is a
:class:`PermanentError` naming the manager and fields, unless ``forceConflicts``. A field of one of our objects
taken by an imperative edit (``kubectl edit/scale/patch``: an ``Update`` manager) is drift, and apply takes it
back. ``observe`` reports such drift: an object missing, no longer ours, or whose owned-fields digest changed.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from reconciler.core.config import TargetConfig
from reconciler.core.desired import DesiredUnit
from reconciler.core.problems import PermanentError
from reconciler.core.state import HEALTH_SEVERITY, worst
from reconciler.core.yamlsafe import scalar_text
from reconciler.drivers.base import ApplyResult, Driver, Health, HealthReport, LiveUnit
from reconciler.drivers.k8s_api import APPLY_PATCH, ApiError, KubeApi, NotServed, Resource, safe_name
from reconciler.drivers.k8s_health import assess
from reconciler.drivers.k8s_objects import (
    ANN_FINGERPRINT,
    Entry,
    Inventory,
    Owner,
    Ref,
    annotation,
    apply_rank,
    crd_resources,
    fields_digest,
    mark,
    names,
    other_managers,
    owner_of,
    parse_documents_of,
    same_state,
    summary,
)
from reconciler.drivers.k8s_store import INVENTORY_NAMESPACE, Store

FIELD_MANAGER = "reconciler"


@dataclass
class Planned:
    """One desired object, ready to apply."""

    ref: Ref
    resource: Resource
    body: dict[str, Any]
    source: str  # <component>/<file>:<line>
    component: str
    new_kind: bool = False  # defined by a CRD of the same unit (may not be served yet)

    @property
    def rank(self) -> int:
        return apply_rank(self.ref, self.resource.namespaced)


@dataclass
class Step:
    planned: Planned
    action: str  # created | configured | unchanged (what applying does)
    live: dict[str, Any] | None


class KubernetesDriver:
    """Deploys units to one Kubernetes API server (see the module docstring for the semantics)."""

    kind: str = "kubernetes"

    def __init__(
        self,
        target: str,
        api_client: Any,
        *,
        namespaces: tuple[str, ...] = (),
        field_manager: str = FIELD_MANAGER,
        force_conflicts: bool = False,
        health_timeout: float = 300.0,
        qps: float | None = 50.0,
        burst: int = 100,
        inventory_namespace: str = INVENTORY_NAMESPACE,
        propagation: str = "Background",
        establish_timeout: float = 60.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.target = target
        self.api = KubeApi(api_client, target=target, qps=qps, burst=burst, timeout=request_timeout)
        self.namespaces = tuple(namespaces)
        self.field_manager = field_manager
        self.force_conflicts = force_conflicts
        self.health_timeout = health_timeout
        self.store = Store(self.api, target, inventory_namespace, field_manager, propagation)
        self.establish_timeout = establish_timeout

    # -- desired objects -------------------------------------------------------------------------------------------
    def _desired(self, unit: DesiredUnit) -> list[Planned]:
        owner = Owner(self.target, unit.environment, unit.application)
        docs = parse_documents_of(unit.files())
        from_crds = crd_resources([d.body for d in docs])
        default_ns = unit.parameters.get("namespace")
        seen: dict[tuple[str, str, str, str], str] = {}
        planned: list[Planned] = []
        for doc in docs:
            body, metadata = doc.body, doc.body["metadata"]
            api_version, kind, name = body["apiVersion"], body["kind"], metadata["name"]
            if not safe_name(name):
                raise PermanentError(f"{doc.source}: invalid name {name!r} for {kind}")
            new_kind = (api_version, kind) in from_crds
            resource = from_crds.get((api_version, kind)) or self.api.resource(api_version, kind)
            if resource is None:
                raise PermanentError(f"{doc.source}: {kind} of {api_version} is not served by target {self.target}")
            namespace = ""
            if resource.namespaced:
                namespace = metadata.get("namespace") or (scalar_text(default_ns) if default_ns is not None else "")
                if not namespace:
                    raise PermanentError(
                        f"{doc.source}: {kind}/{name} has no namespace and the environment sets no namespace parameter"
                    )
                if not safe_name(namespace):
                    raise PermanentError(f"{doc.source}: invalid namespace {namespace!r}")
                metadata["namespace"] = namespace
            else:
                metadata.pop("namespace", None)
            ref = Ref(api_version, kind, namespace, name)
            self._check_allowed(ref, resource, doc.source)
            if ref.identity in seen:
                raise PermanentError(f"{doc.source}: {ref} is already defined by {seen[ref.identity]}")
            seen[ref.identity] = doc.source
            mark(body, owner, doc.component, unit.version, unit.fingerprint)
            planned.append(Planned(ref, resource, body, doc.source, doc.component, new_kind))
        return sorted(planned, key=lambda p: p.rank)  # stable: file order within a rank

    def _check_allowed(self, ref: Ref, resource: Resource, source: str) -> None:
        reserved = self.store.namespace
        if ref.namespace == reserved or (ref.kind == "Namespace" and ref.group == "" and ref.name == reserved):
            raise PermanentError(f"{source}: {ref}: namespace {reserved} is reserved for the controller's inventory")
        if not self.namespaces:
            return
        allowed = ", ".join(self.namespaces)
        if resource.namespaced:
            if ref.namespace not in self.namespaces:
                raise PermanentError(
                    f"{source}: {ref}: namespace {ref.namespace} is not allowed on target {self.target} "
                    f"(allowed: {allowed})"
                )
        elif not (ref.kind == "Namespace" and ref.group == "" and ref.name in self.namespaces):
            raise PermanentError(
                f"{source}: {ref}: cluster-scoped objects are not allowed on target {self.target} "
                f"(it may only write to namespaces {allowed})"
            )

    # -- applying ------------------------------------------------------------------------------------------------
    def apply(self, unit: DesiredUnit, dry_run: bool = False) -> ApplyResult:
        planned = self._desired(unit)
        owner = Owner(self.target, unit.environment, unit.application)
        inventory = self.store.read(owner)
        steps = self._check(planned, owner, unit.fingerprint)  # every object checked before anything is written
        usable = inventory is not None and inventory.unreadable is None
        inventory_was_unreadable = inventory is not None and not usable
        previous = list(inventory.entries) if inventory is not None and usable else []
        wanted = {p.ref.identity for p in planned}
        stale = [e for e in previous if e.ref.identity not in wanted]
        if dry_run:
            return self._describe(steps, owner, stale)
        known = {e.ref.identity for e in previous}
        if not usable or not wanted <= known:  # journal first: every object we may create is tracked
            journal = [*previous, *(Entry(p.ref, p.component) for p in planned if p.ref.identity not in known)]
            base = inventory or Inventory(owner, None, None)
            inventory = self.store.save(replace(base, entries=tuple(journal), unreadable=None), merge=True)
        assert inventory is not None
        counts: Counter[str] = Counter()
        entries: list[Entry] = []
        for rank in sorted({step.planned.rank for step in steps}):
            batch = [step for step in steps if step.planned.rank == rank]
            for step in batch:
                p = step.planned
                live = step.live if step.action == "unchanged" else self._ssa(p, step.live, owner)
                counts[step.action] += 1
                entries.append(Entry(p.ref, p.component, fields_digest(live or {}, self.field_manager)))
            if rank == 0:  # CRDs: wait until they serve their kinds
                crds = [(s.planned.resource, s.planned.ref, s.planned.body) for s in batch]
                self.store.wait_established(crds, self.establish_timeout)
        if inventory_was_unreadable:  # it may have missed objects: find them by label too
            found = self.store.sweep(owner, [p.ref for p in planned], {e.ref.identity for e in stale} | wanted)
            stale += [Entry(ref) for ref in found]
        pruned, notes = self.store.prune(owner, stale)
        counts["pruned"] = len(pruned)
        wrote = bool(counts["created"] or counts["configured"] or pruned)
        applied_at = time.time() if wrote or not inventory.applied_at else inventory.applied_at
        final = Inventory(owner, unit.version, unit.fingerprint, applied_at, tuple(entries), inventory.resource_version)
        if final.encode("") != inventory.encode(""):
            self.store.save(final)
        return ApplyResult(wrote, summary(counts, notes))

    def _check(self, planned: list[Planned], owner: Owner, fingerprint: str) -> list[Step]:
        """What to do with each object, validated by a server-side dry-run apply (nothing is written)."""
        creating = {(p.ref.group, p.ref.kind, p.ref.name) for p in planned}
        steps: list[Step] = []
        for p in planned:
            live = self.store.get(p.resource, p.ref, p.source)
            theirs = owner_of(live) if live is not None else None
            if theirs is not None and theirs != owner:
                raise PermanentError(
                    f"{p.source}: {p.ref} already belongs to environment {theirs.environment}, application "
                    f"{theirs.application} on target {theirs.target}; not applied"
                )
            try:
                dry = self._ssa(p, live, owner, dry_run=True)
            except NotServed:
                if live is None and (("", "Namespace", p.ref.namespace) in creating or p.new_kind):
                    steps.append(Step(p, "created", None))  # its namespace or CRD comes with this apply
                    continue
                raise
            if live is None:
                steps.append(Step(p, "created", None))
            elif annotation(live, ANN_FINGERPRINT) == fingerprint and same_state(dry, live, self.field_manager):
                steps.append(Step(p, "unchanged", live))
            else:
                steps.append(Step(p, "configured", live))
        return steps

    def _ssa(
        self, p: Planned, live: dict[str, Any] | None, owner: Owner, dry_run: bool = False, force: bool = False
    ) -> dict[str, Any]:
        force = force or self.force_conflicts
        query = [("fieldManager", self.field_manager)]
        query += [("force", "true")] if force else []
        query += [("dryRun", "All")] if dry_run else []
        path = p.resource.path(p.ref.namespace, p.ref.name)
        for attempt in range(20):
            try:
                return self.api.request("PATCH", path, query=query, body=p.body, content_type=APPLY_PATCH)
            except ApiError as exc:
                conflicts = exc.conflicts if exc.status == 409 else {}
                if conflicts and not force:
                    self._refuse_conflict(p, live, owner, conflicts)
                    return self._ssa(p, live, owner, dry_run, force=True)  # our drift: take the fields back
                details = exc.body.get("details")
                if exc.status == 404 and isinstance(details, dict) and details.get("kind") == "namespaces":
                    raise NotServed(
                        f"{p.source}: {p.ref}: namespace {p.ref.namespace} does not exist on target {self.target}"
                    ) from None
                if exc.status == 404 and p.new_kind and not dry_run and attempt < 19:  # just established: retry
                    time.sleep(0.1)
                    continue
                error = self.api.classify(exc, f"{p.source}: {'dry-run ' if dry_run else ''}apply {p.ref}")
                raise (NotServed(str(error)) if exc.status == 404 else error) from None
        raise AssertionError("unreachable")

    def _refuse_conflict(
        self, p: Planned, live: dict[str, Any] | None, owner: Owner, conflicts: dict[str, list[str]]
    ) -> None:
        """Raise unless every conflicting manager made an imperative edit of one of our objects (drift)."""
        managers = other_managers(live or {}, self.field_manager)
        ours = live is not None and owner_of(live) == owner
        if ours and all(managers.get(m) == "Update" for m in conflicts):
            return
        described = "; ".join(f'"{m}" ({", ".join(f[:5])})' for m, f in sorted(conflicts.items()))
        raise PermanentError(
            f"{p.source}: {p.ref}: fields are owned by another field manager: {described}; not applied "
            f"(set forceConflicts on target {self.target} to take them over)"
        )

    def _describe(self, steps: list[Step], owner: Owner, stale: list[Entry]) -> ApplyResult:
        """The dry-run answer: what apply would create, configure and prune."""
        creates = [s.planned.ref for s in steps if s.action == "created"]
        configures = [s.planned.ref for s in steps if s.action == "configured"]
        unchanged = sum(1 for s in steps if s.action == "unchanged")
        prunes, notes = self.store.prune(owner, stale, dry_run=True)
        parts = [
            f"{verb} {len(refs)} ({names(refs)})"
            for verb, refs in (("create", creates), ("configure", configures), ("prune", prunes))
            if refs
        ]
        text = "dry-run: would " + ", ".join(parts) if parts else "dry-run: nothing would change"
        text += f"; {unchanged} unchanged" + "".join(f"; {n}" for n in notes)
        return ApplyResult(bool(creates or configures or prunes), text)

    # -- reading -------------------------------------------------------------------------------------------------
    def observe(self, environment: str, application: str, check_drift: bool = True) -> LiveUnit | None:
        owner = Owner(self.target, environment, application)
        inventory = self.store.read(owner)
        if inventory is None:
            return None
        if inventory.unreadable is not None:
            return LiveUnit(environment, application, self.target, None, None, (inventory.unreadable,))
        drifted: list[str] = []
        if check_drift:
            for entry, live in self.store.live_objects(inventory):
                problem = self._drift(entry, live, inventory, owner)
                if problem:
                    drifted.append(f"{entry.ref}: {problem}")
        return LiveUnit(environment, application, self.target, inventory.version, inventory.fingerprint, tuple(drifted))

    def _drift(self, entry: Entry, live: dict[str, Any] | None, inventory: Inventory, owner: Owner) -> str | None:
        if live is None:
            return "missing"
        if owner_of(live) != owner:
            return "no longer marked as ours"
        if annotation(live, ANN_FINGERPRINT) != inventory.fingerprint:
            return "not at the applied fingerprint"
        if fields_digest(live, self.field_manager) != entry.fields:
            editors = sorted(m for m, op in other_managers(live, self.field_manager).items() if op == "Update")
            return "managed fields changed" + (f" by {', '.join(editors)}" if editors else "")
        return None

    def owned_applications(self, environment: str) -> list[str]:
        return self.store.applications(environment)

    def health(self, environment: str, application: str) -> HealthReport:
        owner = Owner(self.target, environment, application)
        inventory = self.store.read(owner)
        if inventory is None:
            return HealthReport(Health.MISSING, "not deployed")
        if inventory.unreadable is not None:
            return HealthReport(Health.DEGRADED, inventory.unreadable)
        status, reasons = Health.HEALTHY, []
        for entry, live in self.store.live_objects(inventory):
            found, why = (Health.MISSING, "missing") if live is None else assess(live)
            status = worst(status, found)
            if found is not Health.HEALTHY:
                reasons.append((HEALTH_SEVERITY[found], f"{entry.ref}: {why}"))
        message = "; ".join(r for _, r in sorted(reasons, key=lambda r: -r[0])[:3])
        if len(reasons) > 3:
            message += f" (+{len(reasons) - 3} more)"
        waited = time.time() - inventory.applied_at
        if status is Health.PROGRESSING and inventory.applied_at and waited > self.health_timeout:
            return HealthReport(Health.DEGRADED, f"not healthy {waited:.0f}s after apply (healthTimeout): {message}")
        return HealthReport(status, message or f"version {inventory.version}")

    # -- removing ------------------------------------------------------------------------------------------------
    def remove(self, environment: str, application: str, dry_run: bool = False) -> ApplyResult:
        owner = Owner(self.target, environment, application)
        inventory = self.store.read(owner)
        if inventory is None:
            return ApplyResult(False, "nothing deployed")
        if inventory.unreadable is not None:
            raise PermanentError(f"kubernetes target {self.target}: {inventory.unreadable}; refusing to remove")
        refs = [e.ref for e in inventory.entries]
        extra = self.store.sweep(owner, refs, {r.identity for r in refs})
        removed, notes = self.store.prune(owner, [*inventory.entries, *(Entry(r) for r in extra)], dry_run=dry_run)
        if dry_run:
            return ApplyResult(bool(removed), f"dry-run: would remove {len(removed)} ({names(removed)})")
        self.store.drop(owner)
        return ApplyResult(True, summary(Counter(pruned=len(removed)), notes))

    def close(self) -> None:
        self.api.close()


def build_kubernetes_driver(target: TargetConfig) -> Driver:
    """A :class:`KubernetesDriver` for one configured target (kubeconfig + context, or in-cluster)."""
    from reconciler.drivers.k8s_store import api_client_for, parse_timeout

    client = api_client_for(
        target.name, kubeconfig=target.get("kubeconfig"), context=target.get("context"),
        in_cluster=bool(target.get("inCluster", False)),
    )  # fmt: skip
    qps = target.get("qps")
    return KubernetesDriver(
        target.name,
        client,
        namespaces=tuple(target.get("namespaces") or ()),
        force_conflicts=bool(target.get("forceConflicts", False)),
        health_timeout=parse_timeout(target.get("healthTimeout"), 300.0),
        qps=float(qps) if qps is not None else 50.0,
        burst=int(target.get("burst", 100)),
    )
