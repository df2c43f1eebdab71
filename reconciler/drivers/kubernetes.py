"""The ``kubernetes`` driver: server-side apply with a field manager, ownership marks, safe prune, workload health.

Created by :func:`build_kubernetes_driver` from a target of the operator config (``kubeconfig`` + ``context`` or
``inCluster``, ``namespaces``, ``qps``/``burst``, ``forceConflicts``, ``healthTimeout``); called by the engine per
(environment, application). Objects are every YAML document of ``unit.files()``; namespaced objects without a
namespace get the environment's ``namespace`` parameter. A target limited to ``namespaces`` refuses objects in
other namespaces and cluster-scoped objects (except those Namespaces).

**Inventory.** What the applications of one environment hold on a target is recorded in one ConfigMap
``reconciler-inventory-<hash of target, environment>`` in the inventory namespace (default ``reconciler-system``,
created on first use; reserved: manifests may not write there): per application (one data key each) version,
fingerprint, apply time and every object with digests of the fields our field manager owns and of their values.
Before an apply creates an object that no record names, the inventory records the (kind, namespace) as *pending*
(a journal: a crash mid-apply leaves nothing untracked; whoever reads the inventory next finds such objects by
their marks with a label selector and adds them to their application's record); the records are written after the
apply and the pending scopes cleared. So ``observe``, ``owned_applications``, prune and ``remove`` work after a
controller restart with one read, whatever kinds (custom resources included) the applications used. When an
application's record is unreadable at apply time, and always on ``remove``, its objects are also found by label
selector across the kinds and namespaces involved (only deleting the inventory by hand orphans objects, which then
stay in place). Writes carry the ``resourceVersion`` read: on a conflict the other writer's records of other
applications and its pending scopes are kept. Per-application inventories of earlier versions are folded in.

**Batches.** ``with driver.batch(environment):`` makes the calls inside share one read of the inventory and one
write at the end (plus one when something is first created), and read objects by listing their kind in their
namespace (``LISTING_TTL``; the batch's own writes keep the listing current) instead of one GET each: a cold apply
of a one-object application is one request, an unchanged one none. Without a batch each call reads and writes the
inventory itself.

**Apply** runs in order CRDs (then waits until Established, bounded), Namespaces, other cluster-scoped objects,
namespaced objects. An object exactly as our last apply of the same fingerprint left it (the values of the fields
we own, recorded in the inventory) is unchanged and not written. When more than one object is to be written, each
is first validated by a server-side dry-run apply (a 422 or a conflict leaves nothing half-applied; an object
whose dry-run changes neither a value nor our field ownership is unchanged, so server defaulting causes no apply
loop); a single write is atomic by itself and is sent directly (unchanged when the server did not change it).
Writes to an existing object carry its ``uid``: one deleted or replaced since it was read is not written.
Objects that left the desired set are pruned, but only
when their marks name this target, environment and application (``managed-by: reconciler``): anything else is
never deleted. Namespaces are never deleted (that would delete every object inside, ours or not) and a CRD only
when no custom resource of it remains; such objects are left in place (orphaned) and the message says so.

**Identity.** :meth:`KubernetesDriver.identity` names what the driver adds to the rendered objects (the default
namespace, the allowed namespaces, field manager, inventory namespace, marks scheme); the engine folds it into the
unit's fingerprint, so changing only the ``namespace`` parameter re-applies the unit (objects created in the new
namespace, the old ones pruned) instead of reporting it in sync.

**Objects that exist and are not ours.** An object of the unit that exists, is not marked as ours and is not in
the application's record is a conflict (:class:`PermanentError` "<kind>/<ns>/<name> exists, not managed by
reconciler"; nothing of the unit is applied) unless its component sets ``adopt`` or the object carries the
annotation ``reconciler.io/adopt: "true"``. An adoption is recorded (``adopted``) in the inventory before the object
is written and reported in :attr:`ApplyResult.adopted` (the engine audits it as ``adopt``). Prune *releases* an
adopted object that still holds another field manager's fields (an apply of nothing by our field manager removes
our fields and marks) instead of deleting it, so the other owner's data stays.

**Conflicts.** A field owned by another manager that *applied* it (another controller) is a
:class:`PermanentError` naming the manager and fields, unless ``forceConflicts``. A field of one of our objects
taken by an imperative edit (``kubectl edit/scale/patch``: an ``Update`` manager) is drift, and apply takes it
back. ``observe`` reports such drift: an object missing, no longer ours, or whose owned-fields digest changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.core.config import TargetConfig
from reconciler.core.contentdiff import Content, as_text
from reconciler.core.desired import DesiredUnit
from reconciler.core.problems import PermanentError, ReconcilerError, TemporaryError
from reconciler.core.state import HEALTH_SEVERITY, worst
from reconciler.core.yamlsafe import scalar_text
from reconciler.drivers.base import (
    ApplyResult,
    Batching,
    Driver,
    Health,
    HealthReport,
    Identifies,
    LiveUnit,
    ObservesEnvironment,
    ShowsContent,
)
from reconciler.drivers.k8s_api import APPLY_PATCH, ApiError, KubeApi, NotServed, Resource, safe_name
from reconciler.drivers.k8s_health import assess
from reconciler.drivers.k8s_normalize import normalize
from reconciler.drivers.k8s_objects import (
    ANN_FINGERPRINT,
    Entry,
    EnvInventory,
    Inventory,
    Owner,
    Ref,
    Scope,
    annotation,
    apply_rank,
    crd_resources,
    digests,
    fields_digest,
    mark,
    names,
    other_managers,
    owner_of,
    same_state,
    state_digest,
    summary,
    wants_adoption,
)
from reconciler.drivers.k8s_store import INVENTORY_NAMESPACE, Store, api_client_for, parse_timeout
from reconciler.drivers.k8s_yaml import parse_documents_of

FIELD_MANAGER = "reconciler"
LISTING_TTL = 5.0  # seconds a batch trusts a listing of a kind in a namespace (its own writes keep it current)
LISTING_LIMIT = 500  # more objects of a kind in a namespace than this: read them one by one
LISTING_AFTER = 2  # objects of a kind in a namespace a batch reads one by one before it lists them all
# what the driver adds to the rendered objects, as a version: bump it when the marks or the defaulting change, so
# every unit's fingerprint changes and the next cycle re-applies (see KubernetesDriver.identity)
IDENTITY_SCHEME = "kubernetes/1"
log = logging.getLogger(__name__)


@dataclass
class Planned:
    """One desired object, ready to apply."""

    ref: Ref
    resource: Resource
    body: dict[str, Any]
    source: str  # <component>/<file>:<line>
    component: str
    new_kind: bool = False  # defined by a CRD of the same unit (may not be served yet)
    adopt: bool = False  # may be taken over if it exists and is not ours (component ``adopt`` or the annotation)
    ensure: bool = False  # a Namespace of a component that does not own its namespaces: created if missing, else kept

    @property
    def rank(self) -> int:
        return apply_rank(self.ref, self.resource.namespaced)


@dataclass
class Step:
    planned: Planned
    action: str  # created | configured | unchanged (what applying does) | apply (to be found out by applying)
    live: dict[str, Any] | None
    adopting: bool = False  # it exists, is not ours, and the unit opts in to taking it over


@dataclass
class _Session:
    """One environment's inventory while a call (or a batch of calls) works on it."""

    environment: str
    inventory: EnvInventory  # as this process knows it: read, plus what the session applied
    persisted: EnvInventory | None  # as last read or written (the base of a merge after a write conflict)
    mine: set[str] = field(default_factory=set)  # applications whose record changed since the last write
    must_write: bool = False
    batched: bool = False
    seen: dict[tuple[str, str, str, str], dict[str, Any] | None] = field(default_factory=dict)  # objects as read
    listings: dict[tuple[str, str, str], _Listing] = field(default_factory=dict)  # (apiVersion, kind, namespace)
    new: bool = False  # the environment had no inventory: a batch will read every object it applies


@dataclass
class _Listing:
    """The objects of one kind in one namespace as a batch listed them (and then wrote them)."""

    reads: int = 0  # objects read one by one so far
    at: float = 0.0  # time.monotonic() of the list
    objects: dict[str, dict[str, Any]] | None = None  # by name; None: not listed (yet)
    refused: bool = False  # too many objects, or listing not allowed: read them one by one


class Replaced(TemporaryError):
    """An object was deleted or replaced by another one between reading and writing it (nothing was written)."""


SERVER_SET = ("managedFields", "resourceVersion", "uid", "creationTimestamp", "generation", "selfLink")


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without what the server sets (status, managedFields, resourceVersion, uid...): what a diff shows."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in SERVER_SET}
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}


def _creates_only(steps: list[Step]) -> bool:
    """Every object to write is new (a first deployment): sent without a server-side dry-run of each first, the
    objects created before a refusal are deleted again, which leaves the target as it was (an update cannot be
    undone that way: a unit that changes existing objects is validated by a dry-run of each before any write)."""
    writes = [s for s in steps if s.action not in ("unchanged", "kept")]
    return len(writes) > 1 and all(s.action == "created" and not s.adopting for s in writes)


def _uid_refused(exc: ApiError) -> bool:
    """The server refused a write because the object no longer has the ``uid`` sent as a precondition."""
    if exc.status == 409 and "uid mismatch" in exc.message:  # deleted
        return True
    if exc.status != 422:
        return False
    details = exc.body.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    return isinstance(causes, list) and any(isinstance(c, dict) and c.get("field") == "metadata.uid" for c in causes)


def _adoptable(p: Planned) -> bool:
    """``p`` exists and is not ours: it may be taken over only when the unit opts in; else a conflict."""
    if not p.adopt:
        raise PermanentError(
            f"{p.source}: {p.ref} exists, not managed by reconciler; not applied (to take it over, "
            f'set adopt: true on component {p.component} or annotate it reconciler.io/adopt: "true")'
        )
    return True


class KubernetesDriver(Batching, ObservesEnvironment, Identifies, ShowsContent):
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
        self._sessions: dict[str, _Session] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    # -- desired objects -------------------------------------------------------------------------------------------
    def identity(self, unit: DesiredUnit) -> str:
        """What this driver adds to ``unit``'s rendered objects, folded into its fingerprint by the engine: the
        namespace given to objects that name none (the environment's ``namespace`` parameter), the namespaces the
        target allows, the field manager and inventory namespace, and the version of the ownership marks. When one
        of them changes, what the target should hold changes, so the unit is applied again (objects move to the
        new namespace and the old ones are pruned) instead of being reported in sync."""
        default_ns = unit.parameters.get("namespace")
        allowed = ",".join(sorted(self.namespaces))
        settings = f"{IDENTITY_SCHEME}\0{allowed}\0{self.field_manager}\0{self.store.namespace}"
        return settings if default_ns is None else f"{settings}\0namespace={scalar_text(default_ns)}"

    def _desired(self, unit: DesiredUnit) -> list[Planned]:
        owner = Owner(self.target, unit.environment, unit.application)
        docs = parse_documents_of(unit.files(), unit.filled())
        from_crds = crd_resources([d.body for d in docs])
        default_ns = unit.parameters.get("namespace")
        adopting = {c.name for c in unit.components if c.adopt}
        owning = {c.name for c in unit.components if c.own_namespaces}
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
            normalize(body)
            adopt = doc.component in adopting or wants_adoption(body)
            ensure = (ref.group, ref.kind) == ("", "Namespace") and doc.component not in owning
            if not ensure:  # (an ensured Namespace is never ours: it carries no marks)
                mark(body, owner, doc.component, unit.version, unit.fingerprint)
            planned.append(Planned(ref, resource, body, doc.source, doc.component, new_kind, adopt, ensure))
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

    # -- sessions: one read of the environment's inventory, one write ------------------------------------------
    @contextmanager
    def batch(self, environment: str) -> Iterator[None]:
        """Calls for ``environment`` inside the block share one read of its inventory and write it once, at the end.

        Without a batch every call is a batch of its own (reads the inventory; ``apply`` and ``remove`` write it
        before returning). Inside one, ``observe``, ``owned_applications`` and ``health`` answer from the inventory
        read when the block began (as updated by the block's own applies), ``health`` looks at the objects as the
        block last read or applied them, and the records of the applications applied or removed are written when
        the block ends (also when it raises). Objects are still never created before the inventory names where they
        are (the pending scopes), so a crash inside a batch leaves nothing untracked. Calls for the environment from
        other threads wait until the block ends. Raises what writing the inventory raised."""
        with self._session(environment, batched=True):
            yield

    def _env_lock(self, environment: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(environment, threading.RLock())

    @contextmanager
    def _session(self, environment: str, batched: bool = False) -> Iterator[_Session]:
        with self._env_lock(environment):
            current = self._sessions.get(environment)
            if current is not None:  # inside a batch
                yield current
                return
            session = self._open(environment)
            session.batched = batched
            self._sessions[environment] = session
            try:
                yield session
            except Exception:
                self._sessions.pop(environment, None)
                try:  # what was applied before the failure is recorded; the failure is what the caller sees
                    self._flush(session, failed=True)
                except Exception as exc:  # noqa: BLE001 - the pending scopes keep everything findable
                    log.warning("kubernetes target %s: inventory of %s not written: %s", self.target, environment, exc)
                raise
            except BaseException:  # interrupted (KeyboardInterrupt, SystemExit): no more requests
                self._sessions.pop(environment, None)
                raise
            self._sessions.pop(environment, None)
            self._flush(session)

    def _open(self, environment: str) -> _Session:
        loaded = self.store.load(environment)
        if loaded is None:
            return _Session(environment, EnvInventory(self.target, environment), None, new=True)
        session = _Session(environment, loaded.copy(), loaded if loaded.resource_version is not None else None)
        session.mine |= set(loaded.applications()) if loaded.legacy else set()
        if loaded.pending or loaded.pending_unknown:  # an apply was interrupted: find what it may have created
            session.inventory, adopted = self.store.recover(session.inventory)
            session.mine |= adopted
        return session

    def _flush(self, session: _Session, failed: bool = False) -> None:
        """Write the session's records and clear the pending scopes. After a failure that recorded nothing (a
        refused first apply) the pending scopes stay as written, so each retry of a failing application writes
        nothing instead of creating the inventory and deleting it again; the next successful write clears them."""
        if not session.must_write or (failed and not session.mine):
            return
        inventory = replace(session.inventory.copy(), pending=frozenset(), pending_unknown=False)
        stored = self.store.save(inventory, session.persisted, session.mine)
        session.persisted = stored
        session.inventory = stored.copy() if stored is not None else EnvInventory(self.target, session.environment)
        session.mine.clear()
        session.must_write = False

    def _cover(self, session: _Session, scopes: set[Scope], force: bool = False) -> None:
        """Record ``scopes`` as pending before anything is created there (the journal of a crash-safe apply); with
        ``force``, write the records as they are now even when the scopes are recorded already."""
        persisted = session.persisted.all_scopes() if session.persisted is not None else frozenset()
        if scopes <= persisted and not force:
            return
        inventory = session.inventory.copy()
        inventory.pending = inventory.pending | persisted | scopes
        stored = self.store.save(inventory, session.persisted, session.mine)
        assert stored is not None  # it has pending scopes: never empty
        session.persisted = stored
        session.inventory = stored.copy()
        session.mine.clear()
        session.must_write = True  # the pending scopes are cleared by the session's last write

    def _record(self, session: _Session, application: str, record: Inventory | None) -> None:
        """Set (or with ``None`` drop) ``application``'s record; written when the session ends."""
        if session.inventory.set_record(application, record):
            session.mine.add(application)
            session.must_write = True

    # -- reading objects ------------------------------------------------------------------------------------------
    def _read(self, session: _Session, resource: Resource, ref: Ref, source: str = "") -> dict[str, Any] | None:
        """``ref`` as it is now (``None``: missing). Inside a batch, once it has read ``LISTING_AFTER`` objects of a
        namespaced kind in one namespace (none for a new environment: its first deployment reads every object it
        applies), from a listing of them all (one request for the objects of many applications), made at most
        ``LISTING_TTL`` seconds ago and kept current with the batch's own writes."""
        if session.batched and resource.namespaced:
            listing = session.listings.setdefault((ref.api_version, ref.kind, ref.namespace), _Listing())
            now = time.monotonic()
            if listing.objects is not None and now - listing.at > LISTING_TTL:
                listing.objects = None  # too old: list again
            if listing.objects is None and (session.new or listing.reads >= LISTING_AFTER) and not listing.refused:
                listing.objects = self.store.list_objects(resource, ref.namespace, LISTING_LIMIT)
                listing.at, listing.refused = now, listing.objects is None
            if listing.objects is not None:
                live = listing.objects.get(ref.name)
                session.seen[ref.identity] = live
                return live
            listing.reads += 1
        live = self.store.get(resource, ref, source)
        session.seen[ref.identity] = live
        return live

    def _saw(self, session: _Session, ref: Ref, live: dict[str, Any] | None) -> None:
        """``ref`` is now ``live`` (``None``: deleted): what the session read of it is updated."""
        session.seen[ref.identity] = live
        listing = session.listings.get((ref.api_version, ref.kind, ref.namespace))
        if listing is not None and listing.objects is not None:
            if live is None:
                listing.objects.pop(ref.name, None)
            else:
                listing.objects[ref.name] = live

    # -- applying ------------------------------------------------------------------------------------------------
    def contents(self, unit: DesiredUnit) -> list[Content]:
        """Each object as the API server would make it (a server-side dry-run apply) beside the live one, without
        managedFields, status and server-set metadata; Secret values as digests. An object the server refuses
        shows what we would send."""
        planned = self._desired(unit)
        owner = Owner(self.target, unit.environment, unit.application)
        out = []
        with self._session(unit.environment) as session:
            for p in planned:
                live = self._read(session, p.resource, p.ref, p.source)
                try:
                    wanted = self._ssa(p, live, owner, dry_run=True)
                except ReconcilerError:
                    wanted = p.body
                shown = as_text(_comparable(live)) if live is not None else None
                out.append(Content(str(p.ref), shown, as_text(_comparable(wanted))))
        return out

    def apply(self, unit: DesiredUnit, dry_run: bool = False) -> ApplyResult:
        planned = self._desired(unit)
        owner = Owner(self.target, unit.environment, unit.application)
        with self._session(unit.environment) as session:
            return self._apply(session, unit, planned, owner, dry_run)

    def _apply(
        self, session: _Session, unit: DesiredUnit, planned: list[Planned], owner: Owner, dry_run: bool
    ) -> ApplyResult:
        record = session.inventory.record(unit.application)
        usable = record is not None and record.unreadable is None
        previous = list(record.entries) if record is not None and usable else []
        steps = self._check(planned, owner, unit.fingerprint, previous, session, dry_run)  # before any write
        wanted = {p.ref.identity for p in planned}
        stale = [e for e in previous if e.ref.identity not in wanted]
        if dry_run:
            return self._describe(steps, owner, stale)
        if record is not None and not usable:  # it may have missed objects: find them by label
            found = self.store.sweep(owner, [p.ref for p in planned], set(wanted))
            stale += [Entry(ref) for ref in found]
            previous = [*stale]
        known = {e.ref.identity for e in previous}
        adopted = self._track(session, unit.application, record if usable else None, owner, previous, steps)
        counts: Counter[str] = Counter()
        entries: list[Entry] = []
        attempted: list[Planned] = []
        sending: Planned | None = None
        try:
            for rank in sorted({step.planned.rank for step in steps}):
                batch = [step for step in steps if step.planned.rank == rank]
                for step in batch:
                    p = step.planned
                    if step.action in ("unchanged", "kept"):
                        live = step.live or {}
                    else:
                        attempted.append(p)
                        sending = p
                        live = self._ssa(p, step.live, owner)
                        sending = None
                        self._saw(session, p.ref, live)
                        if step.action == "apply":  # not dry-run first: the server said whether it changed
                            rv = (step.live or {}).get("metadata", {}).get("resourceVersion")
                            step.action = "unchanged" if live["metadata"].get("resourceVersion") == rv else "configured"
                    counts[step.action] += 1
                    if p.ensure:  # not ours: not recorded, never pruned, never checked for drift
                        continue
                    fields, state = digests(live, self.field_manager)
                    entries.append(Entry(p.ref, p.component, fields, state, p.ref.identity in adopted))
                if rank == 0:  # CRDs: wait until they serve their kinds
                    crds = [(s.planned.resource, s.planned.ref, s.planned.body) for s in batch]
                    self.store.wait_established(crds, self.establish_timeout)
        except Exception as exc:
            # what was (or may have been) written stays tracked: the previous version, plus the new objects pending;
            # a refusal (4xx: PermanentError, Replaced) wrote nothing, an outage (timeout, 5xx) may have
            if isinstance(exc, PermanentError | Replaced) and sending is not None:
                attempted.remove(sending)
            if isinstance(exc, PermanentError) and _creates_only(steps):  # not validated first: undo the creations
                attempted = self._undo(session, owner, attempted)
            new = [Entry(p.ref, p.component, adopted=p.ref.identity in adopted) for p in attempted
                   if p.ref.identity not in known]  # fmt: skip
            if new or (record is not None and not usable):  # (an unreadable record: replaced by what was found)
                base = record if record is not None and usable else Inventory(owner, None, None)
                self._record(session, unit.application, replace(base, entries=(*previous, *new), unreadable=None))
            raise
        return self._finish(session, unit, record if usable else None, owner, stale, counts, entries, steps)

    def _track(
        self,
        session: _Session,
        application: str,
        record: Inventory | None,
        owner: Owner,
        previous: list[Entry],
        steps: list[Step],
    ) -> set[tuple[str, str, str, str]]:
        """Before anything is written: the objects about to be adopted are recorded as adopted (so a crash after
        they are marked cannot make them look created by us, to be deleted) and the kinds and namespaces where new
        objects may appear are recorded as pending. Returns the identities of the adopted objects."""
        known = {e.ref.identity for e in previous}
        taking = [s.planned for s in steps if s.adopting and s.planned.ref.identity not in known]
        if taking:
            journal = (*previous, *(Entry(p.ref, p.component, adopted=True) for p in taking))
            base = record or Inventory(owner, None, None)
            self._record(session, application, replace(base, entries=journal, unreadable=None))
        untracked = [s.planned.ref for s in steps if s.planned.ref.identity not in known]
        if untracked:  # the inventory names where they may be created before they are
            self._cover(session, {(r.api_version, r.kind, r.namespace) for r in untracked}, force=bool(taking))
        return {e.ref.identity for e in previous if e.adopted} | {s.planned.ref.identity for s in steps if s.adopting}

    def _finish(
        self,
        session: _Session,
        unit: DesiredUnit,
        record: Inventory | None,
        owner: Owner,
        stale: list[Entry],
        counts: Counter[str],
        entries: list[Entry],
        steps: list[Step],
    ) -> ApplyResult:
        """After the writes: prune what left the unit, record what it holds now, say what was done."""
        pruned, notes = self.store.prune(owner, stale)
        for ref in pruned:
            self._saw(session, ref, None)
        counts["pruned"] = len(pruned)
        wrote = bool(counts["created"] or counts["configured"] or pruned)
        applied_at = record.applied_at if record is not None else 0.0
        applied_at = time.time() if wrote or not applied_at else applied_at
        final = Inventory(owner, unit.version, unit.fingerprint, applied_at, tuple(entries))
        self._record(session, unit.application, final)
        taken = tuple(str(s.planned.ref) for s in steps if s.adopting)
        notes = [*notes, f"adopted {', '.join(taken)}"] if taken else notes
        return ApplyResult(wrote, summary(counts, notes), adopted=taken)

    def _check(
        self,
        planned: list[Planned],
        owner: Owner,
        fingerprint: str,
        previous: list[Entry],
        session: _Session,
        dry_run: bool,
    ) -> list[Step]:
        """What to do with each object. An object exactly as our last apply of this fingerprint left it is
        unchanged (no request beyond reading it). When more than one object is to be written, each is validated
        by a server-side dry-run apply first, so a refusal (422, conflict...) leaves nothing half-applied; a single
        write is atomic by itself and is sent directly."""
        recorded = {e.ref.identity: e for e in previous}
        steps: list[Step] = []
        for p in planned:
            live = self._read(session, p.resource, p.ref, p.source)
            if p.ensure:  # created when missing, otherwise left exactly as it is, whoever made it
                steps.append(Step(p, "created" if live is None else "kept", live))
                continue
            theirs = owner_of(live) if live is not None else None
            if theirs is not None and theirs != owner:
                raise PermanentError(
                    f"{p.source}: {p.ref} already belongs to environment {theirs.environment}, application "
                    f"{theirs.application} on target {theirs.target}; not applied"
                )
            entry = recorded.get(p.ref.identity)
            if live is not None and theirs is None and (entry is None or entry.adopted) and _adoptable(p):
                steps.append(Step(p, "apply", live, adopting=True))  # exists, not ours (or adopted, not written yet)
                continue
            if live is None:
                steps.append(Step(p, "created", None))
            elif (
                entry is not None
                and entry.state
                and annotation(live, ANN_FINGERPRINT) == fingerprint
                and state_digest(live, self.field_manager) == entry.state
            ):
                steps.append(Step(p, "unchanged", live))
            else:
                steps.append(Step(p, "apply", live))
        writes = sum(1 for s in steps if s.action not in ("unchanged", "kept"))
        if not dry_run and (writes <= 1 or _creates_only(steps)):
            return steps  # one write is atomic by itself; new objects only: a refusal deletes what was created
        creating = {(p.ref.group, p.ref.kind, p.ref.name) for p in planned}
        for step in steps:
            if step.action in ("unchanged", "kept"):
                continue
            p, live = step.planned, step.live
            try:
                dry = self._ssa(p, live, owner, dry_run=True)
            except NotServed:
                if live is None and (("", "Namespace", p.ref.namespace) in creating or p.new_kind):
                    continue  # its namespace or CRD comes with this apply
                raise
            if live is not None:
                same = annotation(live, ANN_FINGERPRINT) == fingerprint and same_state(dry, live, self.field_manager)
                step.action = "unchanged" if same else "configured"
        return steps

    def _undo(self, session: _Session, owner: Owner, created: list[Planned]) -> list[Planned]:
        """Delete the objects this apply created before the server refused a later one (they did not exist when
        read, so they are ours alone); returns those still there (kept tracked: pruned by a later apply)."""
        mine = [p for p in created if not p.ensure]
        try:
            deleted, _ = self.store.prune(owner, [Entry(p.ref, p.component) for p in mine])
        except ReconcilerError:  # the refusal is the error to report; what could not be deleted stays tracked
            return created
        gone = {ref.identity for ref in deleted}
        for p in mine:
            if p.ref.identity in gone:
                self._saw(session, p.ref, None)
        return [p for p in created if p.ref.identity not in gone]

    def _ssa(
        self, p: Planned, live: dict[str, Any] | None, owner: Owner, dry_run: bool = False, force: bool = False
    ) -> dict[str, Any]:
        """Server-side apply of ``p``; when ``live`` is given, only to that very object (its ``uid`` is sent as a
        precondition: an object deleted or replaced since it was read is not written, :class:`Replaced`)."""
        force = force or self.force_conflicts
        query = [("fieldManager", self.field_manager)]
        query += [("force", "true")] if force else []
        query += [("dryRun", "All")] if dry_run else []
        path = p.resource.path(p.ref.namespace, p.ref.name)
        uid = ((live or {}).get("metadata") or {}).get("uid")
        body = p.body
        if isinstance(uid, str) and uid:
            body = {**p.body, "metadata": {**p.body["metadata"], "uid": uid}}
        for attempt in range(20):
            try:
                return self.api.request("PATCH", path, query=query, body=body, content_type=APPLY_PATCH)
            except ApiError as exc:
                if body is not p.body and _uid_refused(exc):
                    raise Replaced(
                        f"kubernetes target {self.target}: {p.source}: {p.ref} was deleted or replaced while being "
                        "applied; not written (will retry)"
                    ) from None
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
        adopts = [s.planned.ref for s in steps if s.adopting]
        configures = [s.planned.ref for s in steps if s.action == "configured"]
        unchanged = sum(1 for s in steps if s.action in ("unchanged", "kept"))
        prunes, notes = self.store.prune(owner, stale, dry_run=True)
        parts = [
            f"{verb} {len(refs)} ({names(refs)})"
            for verb, refs in (("create", creates), ("adopt", adopts), ("configure", configures), ("prune", prunes))
            if refs
        ]
        text = "dry-run: would " + ", ".join(parts) if parts else "dry-run: nothing would change"
        text += f"; {unchanged} unchanged" + "".join(f"; {n}" for n in notes)
        return ApplyResult(bool(creates or adopts or configures or prunes), text)

    # -- reading -------------------------------------------------------------------------------------------------
    def observe(self, environment: str, application: str, check_drift: bool = True) -> LiveUnit | None:
        with self._session(environment) as session:
            return self._observe(session, application, check_drift)

    def observe_environment(
        self, environment: str, applications: list[str], check_drift: bool
    ) -> dict[str, LiveUnit | None]:
        """Every application of ``environment`` on this target plus ``applications``, observed as a batch does: one
        read of the inventory and, with ``check_drift``, their objects read by listing their kinds."""
        with self._session(environment, batched=True) as session:
            names = sorted(set(session.inventory.applications()) | set(applications))
            return {name: self._observe(session, name, check_drift) for name in names}

    def _observe(self, session: _Session, application: str, check_drift: bool) -> LiveUnit | None:
        environment = session.environment
        owner = Owner(self.target, environment, application)
        inventory = session.inventory.record(application)
        if inventory is None:
            return None
        if inventory.unreadable is not None:
            return LiveUnit(environment, application, self.target, None, None, (inventory.unreadable,))
        drifted: list[str] = []
        if check_drift:
            for entry, live in self._live_objects(inventory, session, fresh=True):
                problem = self._drift(entry, live, inventory, owner)
                if problem:
                    drifted.append(f"{entry.ref}: {problem}")
        return LiveUnit(environment, application, self.target, inventory.version, inventory.fingerprint, tuple(drifted))

    def _live_objects(
        self, inventory: Inventory, session: _Session, fresh: bool
    ) -> list[tuple[Entry, dict[str, Any] | None]]:
        """Every inventoried object as it is now (``None`` when missing or its kind is no longer served); with
        ``fresh=False``, as the session last read or applied it when it did."""
        found = []
        for entry in inventory.entries:
            identity = entry.ref.identity
            if not fresh and identity in session.seen:
                found.append((entry, session.seen[identity]))
                continue
            resource = self.api.resource(entry.ref.api_version, entry.ref.kind)
            live = self._read(session, resource, entry.ref) if resource else None
            found.append((entry, live))
        return found

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
        with self._session(environment) as session:
            return session.inventory.applications()

    def health(self, environment: str, application: str) -> HealthReport:
        with self._session(environment) as session:
            inventory = session.inventory.record(application)
            if inventory is None:
                return HealthReport(Health.MISSING, "not deployed")
            if inventory.unreadable is not None:
                return HealthReport(Health.DEGRADED, inventory.unreadable)
            objects = self._live_objects(inventory, session, fresh=False)
        status, reasons = Health.HEALTHY, []
        for entry, live in objects:
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
        with self._session(environment) as session:
            inventory = session.inventory.record(application)
            if inventory is None:
                return ApplyResult(False, "nothing deployed")
            if inventory.unreadable is not None:
                raise PermanentError(f"kubernetes target {self.target}: {inventory.unreadable}; refusing to remove")
            refs = [e.ref for e in inventory.entries]
            extra = self.store.sweep(owner, refs, {r.identity for r in refs})
            entries = [*inventory.entries, *(Entry(r) for r in extra)]
            removed, notes = self.store.prune(owner, entries, dry_run=dry_run)
            if dry_run:
                return ApplyResult(bool(removed), f"dry-run: would remove {len(removed)} ({names(removed)})")
            for ref in removed:
                self._saw(session, ref, None)
            self._record(session, application, None)
        return ApplyResult(True, summary(Counter(pruned=len(removed)), notes))

    def close(self) -> None:
        self.api.close()


def build_kubernetes_driver(target: TargetConfig) -> Driver:
    """A :class:`KubernetesDriver` for one configured target (kubeconfig + context, or in-cluster)."""
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
