"""Kubernetes objects of a desired unit, the controller's ownership marks, and the per-environment inventory.

(Reading a unit's YAML documents is :mod:`reconciler.drivers.k8s_yaml`.)

* Ownership: labels ``reconciler.io/environment``, ``reconciler.io/application``, ``reconciler.io/managed-by:
  reconciler`` (selectable) and annotations ``reconciler.io/target``, ``reconciler.io/version``,
  ``reconciler.io/fingerprint``, ``reconciler.io/component`` plus the full environment and application names. A
  name that is not a valid label value (over 63 characters...) is labelled ``h-<sha256 prefix>``; the
  annotation keeps it whole and is what :func:`owner_of` trusts. An object is *ours* only when the managed-by
  label, the target annotation and both names match: anything else is foreign and never touched.
* :class:`EnvInventory`: what one (target, environment) holds, kept in one ConfigMap
  ``reconciler-inventory-<hash>`` in the inventory namespace (see :mod:`reconciler.drivers.kubernetes`): one data
  key per application (an :class:`Inventory`: the applied version and fingerprint, the apply time and, per object,
  a digest of the fields this controller's field manager owns (:func:`fields_digest`; another manager changing one
  of those fields takes its ownership, so the digest changes and the object shows up as drifted) and a digest of
  their values (:func:`state_digest`)), plus ``environment.json`` whose ``pending`` list names the (kind,
  namespace) pairs where an apply in progress may have created objects that no application's entry names yet.
  Inventories of earlier versions (one ConfigMap per application, :func:`legacy_inventory_name`) are read and
  folded into the environment's on its first write.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.drivers.k8s_api import Resource

DOMAIN = "reconciler.io"
LABEL_ENVIRONMENT = f"{DOMAIN}/environment"
LABEL_APPLICATION = f"{DOMAIN}/application"
LABEL_MANAGED_BY = f"{DOMAIN}/managed-by"
LABEL_INVENTORY = f"{DOMAIN}/inventory"
LABEL_FORMAT = f"{DOMAIN}/inventory-format"  # on environment inventories (absent from the per-application ones)
MANAGED_BY = "reconciler"
ANN_TARGET = f"{DOMAIN}/target"
ANN_VERSION = f"{DOMAIN}/version"
ANN_FINGERPRINT = f"{DOMAIN}/fingerprint"
ANN_COMPONENT = f"{DOMAIN}/component"
ANN_ENVIRONMENT = f"{DOMAIN}/environment-name"
ANN_APPLICATION = f"{DOMAIN}/application-name"
ANN_ADOPT = f"{DOMAIN}/adopt"  # "true" on a manifest object: take it over if it exists and is not ours (audited)
INVENTORY_KEY = "inventory.json"
CRD_KIND = ("apiextensions.k8s.io", "CustomResourceDefinition")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
# metadata the server owns or that changes on every write: ignored when comparing desired with live
_VOLATILE = ("managedFields", "resourceVersion", "generation", "selfLink", "creationTimestamp", "uid")


def label_value(name: str) -> str:
    """``name`` itself when it is a valid label value, else ``h-`` + a 20-hex-digit sha256 prefix."""
    if _LABEL_VALUE.fullmatch(name) and name:
        return name
    return "h-" + hashlib.sha256(name.encode()).hexdigest()[:20]


def selector(environment: str, application: str | None = None) -> str:
    parts = [f"{LABEL_MANAGED_BY}={MANAGED_BY}", f"{LABEL_ENVIRONMENT}={label_value(environment)}"]
    if application is not None:
        parts.append(f"{LABEL_APPLICATION}={label_value(application)}")
    return ",".join(parts)


@dataclass(frozen=True, order=True)
class Ref:
    """One object: its ``apiVersion``, ``kind``, namespace (``""`` when cluster-scoped) and name."""

    api_version: str
    kind: str
    namespace: str
    name: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """What names one object whatever the version it is read with."""
        return (self.group, self.kind, self.namespace, self.name)

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class Owner:
    target: str
    environment: str
    application: str


def mark(body: dict[str, Any], owner: Owner, component: str, version: str, fingerprint: str) -> None:
    """Add the ownership labels and annotations to ``body`` (ours win over the template's)."""
    metadata = body.setdefault("metadata", {})
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    labels.update({
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_ENVIRONMENT: label_value(owner.environment),
        LABEL_APPLICATION: label_value(owner.application),
    })  # fmt: skip
    annotations.update({
        ANN_TARGET: owner.target,
        ANN_ENVIRONMENT: owner.environment,
        ANN_APPLICATION: owner.application,
        ANN_VERSION: version,
        ANN_FINGERPRINT: fingerprint,
        ANN_COMPONENT: component,
    })  # fmt: skip
    metadata["labels"] = {str(k): _label_text(v) for k, v in labels.items()}
    metadata["annotations"] = {str(k): _label_text(v) for k, v in annotations.items()}


def _label_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def owner_of(obj: Mapping[str, Any]) -> Owner | None:
    """Who deployed ``obj`` according to its marks, or ``None`` when this controller did not mark it."""
    metadata = obj.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    if labels.get(LABEL_MANAGED_BY) != MANAGED_BY:
        return None
    target = annotations.get(ANN_TARGET)
    env = annotations.get(ANN_ENVIRONMENT)
    app = annotations.get(ANN_APPLICATION)
    if not all(isinstance(v, str) and v for v in (target, env, app)):
        return None
    owner = Owner(str(target), str(env), str(app))
    if labels.get(LABEL_ENVIRONMENT) != label_value(owner.environment):
        return None
    if labels.get(LABEL_APPLICATION) != label_value(owner.application):
        return None
    return owner


def wants_adoption(body: Mapping[str, Any]) -> bool:
    """The manifest object opts in to being taken over (annotation ``reconciler.io/adopt: "true"``)."""
    value = ((body.get("metadata") or {}).get("annotations") or {}).get(ANN_ADOPT)
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def annotation(obj: Mapping[str, Any], key: str) -> str | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
    return value if isinstance(value, str) else None


def ref_of(obj: Mapping[str, Any]) -> Ref:
    metadata = obj.get("metadata") or {}
    return Ref(str(obj.get("apiVersion")), str(obj.get("kind")), str(metadata.get("namespace") or ""), metadata["name"])


def apply_rank(ref: Ref, namespaced: bool) -> int:
    """Apply order: CRDs, Namespaces, other cluster-scoped objects, namespaced objects."""
    if (ref.group, ref.kind) == CRD_KIND:
        return 0
    if ref.kind == "Namespace" and ref.group == "":
        return 1
    return 3 if namespaced else 2


def crd_resources(planned_docs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], Resource]:
    """Resources that the unit's own CRDs define (usable before the server serves them)."""
    found: dict[tuple[str, str], Resource] = {}
    for body in planned_docs:
        if (str(body["apiVersion"]).rpartition("/")[0], body["kind"]) != CRD_KIND:
            continue
        spec = body.get("spec") or {}
        names = spec.get("names") or {}
        group, kind, plural = spec.get("group"), names.get("kind"), names.get("plural")
        versions = [v.get("name") for v in spec.get("versions") or [] if isinstance(v, dict) and v.get("served", True)]
        versions += [spec["version"]] if isinstance(spec.get("version"), str) else []
        if not all(isinstance(x, str) and x for x in (group, kind, plural)):
            continue
        for version in versions:
            if isinstance(version, str):
                api_version = f"{group}/{version}"
                namespaced = spec.get("scope") != "Cluster"
                found[(api_version, str(kind))] = Resource(api_version, str(kind), str(plural), namespaced)
    return found


def summary(counts: Counter[str], notes: Sequence[str]) -> str:
    order = ("created", "configured", "unchanged", "kept", "pruned")
    text = ", ".join(f"{counts[k]} {k}" for k in order if counts[k]) or "nothing to do"
    return text + "".join(f"; {n}" for n in notes)


def names(refs: Sequence[Ref], limit: int = 5) -> str:
    shown = ", ".join(str(r) for r in refs[:limit])
    return shown + (f" (+{len(refs) - limit} more)" if len(refs) > limit else "")


# -- comparing desired with live ---------------------------------------------------------------------------------
def managed_fields(obj: Mapping[str, Any], manager: str) -> list[Any]:
    """The fields ``manager`` owns through server-side apply (``fieldsV1``), merged over its entries."""
    owned: list[Any] = []
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply" and not entry.get("subresource"):
            owned.append(entry.get("fieldsV1") or {})
    return owned


def fields_digest(obj: Mapping[str, Any], manager: str) -> str:
    return _fields_digest(managed_fields(obj, manager))


def _fields_digest(owned: list[Any]) -> str:
    return hashlib.sha256(_SORTED.encode(owned).encode()).hexdigest()[:32]


_SORTED = json.JSONEncoder(sort_keys=True)  # the digests' encodings (stored in inventories: never change them)
_COMPACT = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_COMPACT_FIELDS: dict[str, str] = {}  # _SORTED text of managed fields -> their _COMPACT text
_COMPACT_FIELDS_KEPT = 4096


def other_managers(obj: Mapping[str, Any], manager: str) -> dict[str, str]:
    """Other field managers of ``obj`` -> their operation (``Apply`` or ``Update``)."""
    found: dict[str, str] = {}
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        name = entry.get("manager")
        if isinstance(name, str) and name != manager and not entry.get("subresource"):
            found[name] = "Apply" if entry.get("operation") == "Apply" or found.get(name) == "Apply" else "Update"
    return found


def comparable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` without status and the metadata that every write changes."""
    out = {k: v for k, v in obj.items() if k != "status"}
    out["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _VOLATILE}
    return out


def same_state(dry_run: Mapping[str, Any], live: Mapping[str, Any], manager: str) -> bool:
    """True when applying would change neither a value nor what ``manager`` owns (no write needed)."""
    if comparable(dry_run) != comparable(live):
        return False
    return fields_digest(dry_run, manager) == fields_digest(live, manager)


# -- the inventory -----------------------------------------------------------------------------------------------
ENVIRONMENT_KEY = "environment.json"
INVENTORY_FORMAT = 2
_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]{1,200}")
Scope = tuple[str, str, str]  # apiVersion, kind, namespace ("" when cluster-scoped) where objects may be pending


def inventory_name(target: str, environment: str) -> str:
    """The ConfigMap holding the inventory of every application of ``environment`` on ``target``."""
    key = f"environment\0{target}\0{environment}".encode()
    return "reconciler-inventory-" + hashlib.sha256(key).hexdigest()[:24]


def legacy_inventory_name(owner: Owner) -> str:
    """The per-application inventory ConfigMap of earlier versions (read once, folded into the environment's)."""
    key = f"{owner.target}\0{owner.environment}\0{owner.application}".encode()
    return "reconciler-inventory-" + hashlib.sha256(key).hexdigest()[:24]


def application_key(application: str) -> str:
    """The inventory data key of ``application`` (``app.<name>.json``, hashed when the name is not a valid key)."""
    if _DATA_KEY.fullmatch(application):
        return f"app.{application}.json"
    return "app.h-" + hashlib.sha256(application.encode()).hexdigest()[:24] + ".json"


@dataclass(frozen=True)
class Entry:
    ref: Ref
    component: str = ""
    fields: str = ""  # fields_digest after the last apply ("" while pending)
    state: str = ""  # state_digest after the last apply ("" while pending or unknown)
    adopted: bool = False  # existed before our first apply (taken over on the application's opt-in)


@dataclass(frozen=True)
class Inventory:
    """What one application holds on one target (one record of the environment's inventory)."""

    owner: Owner
    version: str | None
    fingerprint: str | None
    applied_at: float = 0.0
    entries: tuple[Entry, ...] = ()
    unreadable: str | None = field(default=None, compare=False)

    def refs(self) -> set[Ref]:
        return {e.ref for e in self.entries}

    def payload(self) -> dict[str, Any]:
        return {
            "target": self.owner.target,
            "environment": self.owner.environment,
            "application": self.owner.application,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "appliedAt": self.applied_at,
            "objects": [
                {
                    "apiVersion": e.ref.api_version,
                    "kind": e.ref.kind,
                    "namespace": e.ref.namespace,
                    "name": e.ref.name,
                    "component": e.component,
                    "fields": e.fields,
                    "state": e.state,
                    **({"adopted": True} if e.adopted else {}),
                }
                for e in sorted(self.entries, key=lambda e: e.ref)
            ],
        }

    def text(self) -> str:
        return json.dumps(self.payload(), sort_keys=True, separators=(",", ":"))


def decode_record(text: Any, owner: Owner, where: str) -> Inventory:
    """One application's record; ``unreadable`` says why when it cannot be used."""
    try:
        doc = json.loads(text or "")
        entries = tuple(
            Entry(Ref(o["apiVersion"], o["kind"], o.get("namespace") or "", o["name"]), o.get("component", ""),
                  o.get("fields", ""), o.get("state", ""), o.get("adopted") is True)
            for o in doc["objects"]
        )  # fmt: skip
        if (doc["target"], doc["environment"], doc["application"]) != (
            owner.target,
            owner.environment,
            owner.application,
        ):
            raise ValueError("owner mismatch")
        if not all(isinstance(x, str) for e in entries for x in (e.ref.api_version, e.ref.kind, e.ref.name)):
            raise ValueError("malformed object reference")
        if not all(isinstance(x, str) for e in entries for x in (e.ref.namespace, e.fields, e.state)):
            raise ValueError("malformed object entry")
        return Inventory(owner, doc["version"], doc["fingerprint"], float(doc.get("appliedAt") or 0), entries)
    except (ValueError, KeyError, TypeError, AttributeError):
        return Inventory(owner, None, None, unreadable=f"{where} is unreadable")


def decode_inventory(obj: Mapping[str, Any], owner: Owner) -> Inventory:
    """The record in a per-application inventory ConfigMap of earlier versions."""
    name = (obj.get("metadata") or {}).get("name")
    return decode_record((obj.get("data") or {}).get(INVENTORY_KEY), owner, f"inventory ConfigMap {name}")


@dataclass
class EnvInventory:
    """The inventory of one (target, environment): the text of each application's record (``texts``, by data key;
    decoded when asked for, so a read or a write costs the same whatever the number of applications) and the
    pending scopes. A record that cannot be decoded is kept as it is (never lost by a write for another application)
    and reported unreadable; ``pending_unknown`` is set when ``environment.json`` itself is unreadable (then every
    (kind, namespace) of every record counts as pending). ``legacy`` names per-application ConfigMaps of earlier
    versions folded in (deleted once this inventory is written)."""

    target: str
    environment: str
    texts: dict[str, str] = field(default_factory=dict)  # application key -> the record's text
    pending: frozenset[Scope] = frozenset()
    pending_unknown: bool = False
    resource_version: str | None = None
    legacy: tuple[str, ...] = ()
    _decoded: dict[str, Inventory] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return inventory_name(self.target, self.environment)

    def copy(self) -> EnvInventory:
        return replace(self, texts=dict(self.texts), _decoded=dict(self._decoded))

    def record(self, application: str) -> Inventory | None:
        """``application``'s record, an ``unreadable`` one when it cannot be decoded, ``None`` when absent."""
        key = application_key(application)
        found = self._decoded.get(key)
        if found is not None:
            return found
        text = self.texts.get(key)
        if text is None:
            return None
        owner = Owner(self.target, self.environment, application)
        found = decode_record(text, owner, f"the inventory of {application} ({self.name}: {key})")
        self._decoded[key] = found
        return found

    def set_record(self, application: str, record: Inventory | None) -> bool:
        """Replace (``None``: drop) ``application``'s record; whether that changed anything."""
        key = application_key(application)
        text = None if record is None else record.text()
        if self.texts.get(key) == text:
            return False
        self._decoded.pop(key, None)
        if record is None or text is None:
            self.texts.pop(key, None)
        else:
            self.texts[key] = text
            self._decoded[key] = record
        return True

    def applications(self) -> list[str]:
        """Applications with a record (readable or not; a hashed key names its application only when readable)."""
        names = {k[len("app.") : -len(".json")] for k in self.texts if not k.startswith("app.h-")}
        names |= {a for k, t in self.texts.items() if k.startswith("app.h-") and (a := _application_of(t))}
        return sorted(names)

    def records(self) -> list[Inventory]:
        """Every readable record."""
        found = [self.record(a) for a in self.applications()]
        return [r for r in found if r is not None and r.unreadable is None]

    def all_scopes(self) -> frozenset[Scope]:
        """Where objects may be pending: ``pending``, or every (kind, namespace) recorded when that is unknown."""
        if not self.pending_unknown:
            return self.pending
        return self.pending | {(e.ref.api_version, e.ref.kind, e.ref.namespace) for r in self.records()
                               for e in r.entries}  # fmt: skip

    def empty(self) -> bool:
        return not (self.texts or self.pending or self.pending_unknown)

    def header(self) -> str:
        header = {"format": INVENTORY_FORMAT, "target": self.target, "environment": self.environment,
                  "pending": sorted(list(s) for s in self.all_scopes())}  # fmt: skip
        return json.dumps(header, sort_keys=True, separators=(",", ":"))

    def encode(self, namespace: str) -> dict[str, Any]:
        labels = {
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_ENVIRONMENT: label_value(self.environment),
            LABEL_INVENTORY: "true",
            LABEL_FORMAT: str(INVENTORY_FORMAT),
        }
        annotations = {ANN_TARGET: self.target, ANN_ENVIRONMENT: self.environment}
        metadata: dict[str, Any] = {"name": self.name, "namespace": namespace, "labels": labels,
                                    "annotations": annotations}  # fmt: skip
        if self.resource_version:
            metadata["resourceVersion"] = self.resource_version
        data = {ENVIRONMENT_KEY: self.header(), **self.texts}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}

    def patch(self, base: EnvInventory, applications: set[str]) -> dict[str, Any]:
        """A JSON merge patch turning ``base`` into this inventory, which differs from it in the records of
        ``applications`` and the pending scopes only (conditional on ``resource_version``)."""
        data: dict[str, str | None] = {}
        for application in applications:
            key = application_key(application)
            if self.texts.get(key) != base.texts.get(key):
                data[key] = self.texts.get(key)
        if self.header() != base.header():
            data[ENVIRONMENT_KEY] = self.header()
        return {"metadata": {"resourceVersion": self.resource_version}, "data": data}


def is_environment_inventory(obj: Mapping[str, Any], target: str, environment: str) -> bool:
    """True when ConfigMap ``obj`` carries the marks of the inventory of (``target``, ``environment``)."""
    metadata = obj.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    return (
        labels.get(LABEL_MANAGED_BY) == MANAGED_BY
        and labels.get(LABEL_INVENTORY) == "true"
        and labels.get(LABEL_FORMAT) == str(INVENTORY_FORMAT)
        and labels.get(LABEL_ENVIRONMENT) == label_value(environment)
        and annotations.get(ANN_TARGET) == target
        and annotations.get(ANN_ENVIRONMENT) == environment
        and ANN_APPLICATION not in annotations
    )


def decode_env_inventory(obj: Mapping[str, Any], target: str, environment: str) -> EnvInventory:
    """The inventory in ConfigMap ``obj`` (marks already checked); records are decoded when asked for."""
    metadata = obj.get("metadata") or {}
    data = obj.get("data") or {}
    inventory = EnvInventory(target, environment, resource_version=metadata.get("resourceVersion"))
    try:
        header = json.loads(data.get(ENVIRONMENT_KEY) or "")
        if (header["target"], header["environment"]) != (target, environment):
            raise ValueError("owner mismatch")
        scopes = [s for s in header.get("pending") or () if isinstance(s, list) and len(s) == 3]
        inventory.pending = frozenset((str(s[0]), str(s[1]), str(s[2])) for s in scopes)
    except (ValueError, KeyError, TypeError, AttributeError):
        inventory.pending_unknown = True
    inventory.texts = {k: v for k, v in data.items() if k.startswith("app.") and isinstance(v, str)}
    return inventory


def _application_of(text: str) -> str | None:
    try:
        doc = json.loads(text)
        name = doc.get("application") if isinstance(doc, dict) else None
    except ValueError:
        return None
    return name if isinstance(name, str) and name else None


# -- digests of live objects -------------------------------------------------------------------------------------
_MISSING = "\0missing"


def _project(value: Any, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of ``value`` at the paths of a ``fieldsV1`` set (``f:``, ``k:``, ``v:``, ``i:`` keys)."""
    out: dict[str, Any] = {}
    mapping = type(value) is dict or isinstance(value, Mapping)
    for key, sub in fields.items():
        child: Any = _MISSING
        if key[:2] == "f:":  # the common case first: a field of a mapping, most often a leaf ({})
            if mapping:
                child = value.get(key[2:], _MISSING)
            if sub and child is not _MISSING and (len(sub) != 1 or "." not in sub):
                child = _project(child, sub)
            out[key] = child
            continue
        if key == ".":
            continue
        kind, _, name = key.partition(":")
        if kind == "k":
            wanted = json.loads(name)
            if isinstance(value, list):
                child = next((x for x in value if isinstance(x, Mapping)
                              and all(x.get(k) == v for k, v in wanted.items())), _MISSING)  # fmt: skip
        elif kind == "v":
            wanted = json.loads(name)
            child = wanted if isinstance(value, list) and wanted in value else _MISSING
        elif kind == "i":
            index = int(name)
            child = value[index] if isinstance(value, list) and 0 <= index < len(value) else _MISSING
        else:
            raise ValueError(f"unknown fieldsV1 key {key!r}")
        out[key] = _project(child, sub) if sub and child is not _MISSING and not _leaf(sub) else child
    return out


def _leaf(fields: Mapping[str, Any]) -> bool:
    """A non-empty ``fieldsV1`` set naming only the value itself (``{".": {}}``)."""
    return len(fields) == 1 and "." in fields


def state_digest(obj: Mapping[str, Any], manager: str) -> str:
    """A digest of the fields ``manager`` owns through server-side apply *and their values* ("" when unknown).

    Equal digests before and after mean that applying the same configuration again changes nothing: the same
    fields hold the same values (what other managers own, status and server-managed metadata do not count)."""
    owned = managed_fields(obj, manager)
    return _state_digest(obj, owned, _COMPACT.encode(owned)) if owned else ""


def digests(obj: Mapping[str, Any], manager: str) -> tuple[str, str]:
    """``(fields_digest(obj, manager), state_digest(obj, manager))``, reading the managed fields once and encoding
    them once (their compact form, which the state digest hashes, is kept per distinct set of fields: the same sets
    recur in every environment). Called for every object the driver applies."""
    owned = managed_fields(obj, manager)
    text = _SORTED.encode(owned)
    fields = hashlib.sha256(text.encode()).hexdigest()[:32]
    if not owned:
        return fields, ""
    compact = _COMPACT_FIELDS.get(text)
    if compact is None:
        if len(_COMPACT_FIELDS) >= _COMPACT_FIELDS_KEPT:
            _COMPACT_FIELDS.clear()
        compact = _COMPACT_FIELDS[text] = _COMPACT.encode(owned)
    return fields, _state_digest(obj, owned, compact)


def _state_digest(obj: Mapping[str, Any], owned: list[Any], compact: str) -> str:
    """The digest of ``[owned, values of owned]`` in compact JSON, ``compact`` being ``owned``'s own encoding."""
    try:
        values = _COMPACT.encode([_project(obj, fields) for fields in owned])
    except (ValueError, TypeError):
        return ""
    return hashlib.sha256(f"[{compact},{values}]".encode()).hexdigest()[:32]
