"""Scale-out: which controller replica reconciles which environment.

Environments map to shards by rendezvous (highest-random-weight) hashing: shard ``k`` of ``N`` wins environment
``e`` when ``sha256("e:k")`` is the largest. It spreads names evenly and, when ``N`` changes, moves only the
environments that the added (or removed) shard wins (about 1/N of them), never reshuffling the rest.

* Static sharding (``run --shard-index I --shard-count N``): replica ``I`` owns the environments of shard ``I``.
* Leases (``run --shards N``): :class:`LeaseCoordinator` keeps ``N`` ``coordination.k8s.io/v1`` Lease objects
  ``reconciler-shard-<k>`` plus one heartbeat Lease ``reconciler-replica-<id>`` per replica in one namespace
  (default ``reconciler-system``). Every ``duration/3`` seconds a replica renews its heartbeat and the shard
  leases it holds, counts the live replicas (holders of heartbeats or shard leases seen changing) and holds at
  most ``ceil(N / live)`` shards: it acquires free or expired ones and hands back extras. Every write carries the
  ``resourceVersion`` it read (optimistic concurrency: of two replicas racing for a lease, one gets a 409).

Expiry is judged by the observer's *own* monotonic clock (like client-go's leader election): a lease is expired
when its ``resourceVersion`` has not changed for ``leaseDurationSeconds`` since this replica first saw it, so clock
skew between machines does not matter. The holder, in turn, owns a shard only until ``renew deadline`` (2/3 of the
duration) after the *start* of its last successful renewal: when renewals fail it stops touching those
environments (``owns`` turns False, checked before every apply and prune) before anyone else may take them. A
shard handed back during rebalancing stops being owned at once but its lease is only cleared a renew deadline
later, so work already running finishes before another replica starts. Replica ids must be unique.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.core.problems import ReconcilerError
from reconciler.drivers.k8s_api import ApiError, KubeApi, Resource
from reconciler.observability.logging import get_logger

DEFAULT_LEASE_NAMESPACE = "reconciler-system"
LEASES = Resource("coordination.k8s.io/v1", "Lease", "leases", True)
NAMESPACES = Resource("v1", "Namespace", "namespaces", False)
ROLE_LABEL = "reconciler.io/lease"
SHARD_PREFIX = "reconciler-shard-"
REPLICA_PREFIX = "reconciler-replica-"


def _score(name: str, candidate: str) -> bytes:
    return hashlib.sha256(f"{name}:{candidate}".encode()).digest()


def rendezvous(name: str, candidates: Sequence[str]) -> str:
    """The candidate with the highest ``sha256(name:candidate)`` (rendezvous / HRW hashing)."""
    if not candidates:
        raise ValueError("no candidates")
    return max(candidates, key=lambda c: (_score(name, c), c))


def shard_of(name: str, shards: int) -> int:
    """The shard (0..shards-1) that environment ``name`` belongs to."""
    return int(rendezvous(name, [str(k) for k in range(shards)]))


class StaticShards:
    """``--shard-index I --shard-count N``: this replica owns the environments of shard ``I``."""

    def __init__(self, index: int, count: int) -> None:
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard index {index} is not in 0..{count - 1}")
        self.index = index
        self.count = count

    def owns(self, name: str) -> bool:
        return shard_of(name, self.count) == self.index


def rearm(states: Mapping[str, Any], shards: Iterable[int], count: int) -> None:
    """Make a controller look again at the environments of newly acquired ``shards`` (forget their input key)."""
    wanted = set(shards)
    for name, state in list(states.items()):
        if shard_of(name, count) in wanted:
            state.attempted_key = None


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_name_for(replica: str) -> str:
    """A valid object name for ``replica``'s heartbeat lease (a hash suffix when the id had to be changed)."""
    clean = re.sub(r"[^a-z0-9-]+", "-", replica.lower()).strip("-")[:40] or "replica"
    if clean != replica:
        clean += "-" + hashlib.sha256(replica.encode()).hexdigest()[:8]
    return REPLICA_PREFIX + clean


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    resource_version: str
    duration: float
    transitions: int
    acquire_time: str | None


class LeaseCoordinator:
    """Shard ownership through Kubernetes Leases (see the module docstring). ``owns`` is thread-safe."""

    def __init__(
        self,
        api: KubeApi,
        *,
        shards: int,
        replica: str,
        namespace: str = DEFAULT_LEASE_NAMESPACE,
        duration: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        on_acquire: Callable[[set[int]], None] | None = None,
    ) -> None:
        if shards < 1:
            raise ValueError("--shards must be at least 1")
        self.api = api
        self.shards = shards
        self.replica = replica
        self.namespace = namespace
        self.duration = float(duration)
        self.renew_every = self.duration / 3
        self.renew_deadline = self.duration * 2 / 3
        self.clock = clock
        self.on_acquire = on_acquire
        self.heartbeat = lease_name_for(replica)
        self.log = get_logger(component="sharding", replica=replica)
        self._held: dict[int, float] = {}  # shard -> local deadline of ownership
        self._releasing: dict[int, float] = {}  # shard -> when its lease is cleared
        self._seen: dict[str, tuple[str, float]] = {}  # lease -> (resourceVersion, local time first seen)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- ownership -----------------------------------------------------------------------------------------------
    def owns(self, name: str) -> bool:
        with self._lock:
            deadline = self._held.get(shard_of(name, self.shards))
        return deadline is not None and self.clock() < deadline

    def held(self) -> list[int]:
        now = self.clock()
        with self._lock:
            return sorted(k for k, deadline in self._held.items() if now < deadline)

    def _preference(self, shard: int) -> bytes:
        return _score(str(shard), self.replica)

    # -- one round -------------------------------------------------------------------------------------------------
    def step(self) -> None:
        """Heartbeat, renew what is held, hand back extras, acquire what is free (one round of the loop)."""
        leases = self._list()
        self._write(leases.get(self.heartbeat), self.heartbeat, "replica", self.replica)
        now = self.clock()
        live = [lease for lease in leases.values() if lease.name.startswith((REPLICA_PREFIX, SHARD_PREFIX))]
        alive = {self.replica} | {lease.holder for lease in live if not self._expired(lease, now)}
        target = math.ceil(self.shards / len(alive))
        acquired: set[int] = set()
        for k in range(self.shards):
            name, lease = f"{SHARD_PREFIX}{k}", leases.get(f"{SHARD_PREFIX}{k}")
            mine = lease is not None and lease.holder == self.replica
            with self._lock:
                releasing = self._releasing.get(k)
                known = k in self._held or releasing is not None
            if not mine:
                if known:
                    self.log.warning("shard lease lost", shard=k, holder=lease.holder if lease else None)
                    self._forget(k)
                continue
            assert lease is not None
            if releasing is not None and now >= releasing:
                self._write(lease, name, "shard", "")
                self._forget(k)
                continue
            t0 = self.clock()
            ok = self._write(lease, name, "shard", self.replica)
            with self._lock:
                if not ok:
                    self._held.pop(k, None)
                    self._releasing.pop(k, None)
                elif releasing is None:
                    if k not in self._held:
                        acquired.add(k)  # held by this replica id before a restart
                    self._held[k] = t0 + self.renew_deadline
        with self._lock:
            extras = sorted(self._held, key=self._preference)[: max(0, len(self._held) - target)]
            for k in extras:
                del self._held[k]
                self._releasing[k] = now + self.renew_deadline
                self.log.info("handing back shard", shard=k, target=target, replicas=len(alive))
            count = len(self._held) + len(self._releasing)
        free = [
            k
            for k in range(self.shards)
            if k not in self._held
            and k not in self._releasing
            and ((lease := leases.get(f"{SHARD_PREFIX}{k}")) is None or not lease.holder or self._expired(lease, now))
        ]
        for k in sorted(free, key=self._preference, reverse=True):
            if count >= target:
                break
            t0 = self.clock()
            if self._write(leases.get(f"{SHARD_PREFIX}{k}"), f"{SHARD_PREFIX}{k}", "shard", self.replica, True):
                with self._lock:
                    self._held[k] = t0 + self.renew_deadline
                acquired.add(k)
                count += 1
                self.log.info("shard acquired", shard=k, target=target, replicas=len(alive))
        self._collect(leases, now)
        if acquired and self.on_acquire is not None:
            self.on_acquire(acquired)

    def _forget(self, shard: int) -> None:
        with self._lock:
            self._held.pop(shard, None)
            self._releasing.pop(shard, None)

    def _expired(self, lease: Lease, now: float) -> bool:
        seen = self._seen.get(lease.name)
        return not lease.holder or seen is None or now - seen[1] > lease.duration

    def _list(self) -> dict[str, Lease]:
        try:
            doc = self.api.request("GET", LEASES.path(self.namespace), query=[("labelSelector", ROLE_LABEL)])
        except ApiError as exc:
            raise self.api.classify(exc, f"list leases in {self.namespace}") from None
        now = self.clock()
        leases: dict[str, Lease] = {}
        for item in doc.get("items") or []:
            metadata, spec = item.get("metadata") or {}, item.get("spec") or {}
            lease = Lease(
                str(metadata.get("name")),
                str(spec.get("holderIdentity") or ""),
                str(metadata.get("resourceVersion")),
                float(spec.get("leaseDurationSeconds") or self.duration),
                int(spec.get("leaseTransitions") or 0),
                spec.get("acquireTime"),
            )
            leases[lease.name] = lease
            seen = self._seen.get(lease.name)
            if seen is None or seen[0] != lease.resource_version:
                self._seen[lease.name] = (lease.resource_version, now)
        return leases

    def _write(self, lease: Lease | None, name: str, role: str, holder: str, acquire: bool = False) -> bool:
        """Create or update one lease (with the resourceVersion read); False when someone else got there first."""
        now = _micro_time()
        changed_hands = lease is None or lease.holder != holder
        spec: dict[str, Any] = {
            "holderIdentity": holder or None,
            "leaseDurationSeconds": max(1, math.ceil(self.duration)),
            "renewTime": now if holder else None,
            "acquireTime": now if acquire or changed_hands else (lease.acquire_time if lease else now),
            "leaseTransitions": (lease.transitions if lease else 0) + (1 if acquire and lease and lease.holder else 0),
        }
        metadata: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": {ROLE_LABEL: role}}
        if lease is not None:
            metadata["resourceVersion"] = lease.resource_version
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}
        for attempt in range(2):
            try:
                if lease is None:
                    self.api.request("POST", LEASES.path(self.namespace), body=body)
                else:
                    self.api.request("PUT", LEASES.path(self.namespace, name), body=body)
                return True
            except ApiError as exc:
                missing = (exc.body.get("details") or {}).get("kind") == "namespaces"
                if exc.status == 404 and lease is None and missing and attempt == 0:
                    self._ensure_namespace()  # first use: create the namespace, then the lease
                    continue
                if exc.status in (404, 409):
                    return False
                raise self.api.classify(exc, f"write lease {self.namespace}/{name}") from None
        return False

    def _ensure_namespace(self) -> None:
        try:
            self.api.request("POST", NAMESPACES.path(), body={"metadata": {"name": self.namespace}})
        except ApiError as exc:
            if exc.status != 409:
                raise self.api.classify(exc, f"create namespace {self.namespace}") from None

    def _collect(self, leases: Mapping[str, Lease], now: float) -> None:
        """Delete heartbeats of replicas gone for a long time (four lease durations)."""
        for lease in leases.values():
            seen = self._seen.get(lease.name)
            stale = seen is not None and now - seen[1] > 4 * lease.duration
            if lease.name.startswith(REPLICA_PREFIX) and lease.name != self.heartbeat and stale:
                options = {"preconditions": {"resourceVersion": lease.resource_version}}
                with suppress(ApiError):  # renewed or deleted meanwhile: fine either way
                    self.api.request("DELETE", LEASES.path(self.namespace, lease.name), body=options)

    # -- the background loop ---------------------------------------------------------------------------------------
    def step_safely(self) -> None:
        try:
            self.step()
        except (ReconcilerError, ApiError) as exc:
            self.log.warning("shard lease round failed", error=str(exc))

    def start(self) -> None:
        """One round now, then a daemon thread renewing every ``duration/3`` seconds until :meth:`stop`."""
        self.step_safely()
        self._thread = threading.Thread(target=self._loop, name="shard-leases", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.renew_every):
            self.step_safely()

    def stop(self, release: bool = True) -> None:
        """Stop renewing; with ``release`` hand every held shard back at once (call when no work is running)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.duration)
        with self._lock:
            shards = sorted(set(self._held) | set(self._releasing))
            self._held.clear()
            self._releasing.clear()
        if not release:
            return
        try:
            leases = self._list()
            for k in shards:
                lease = leases.get(f"{SHARD_PREFIX}{k}")
                if lease is not None and lease.holder == self.replica:
                    self._write(lease, lease.name, "shard", "")
            if self.heartbeat in leases:
                self._write(leases[self.heartbeat], self.heartbeat, "replica", "")
        except (ReconcilerError, ApiError) as exc:
            self.log.warning("could not hand back the shard leases; they expire by themselves", error=str(exc))
