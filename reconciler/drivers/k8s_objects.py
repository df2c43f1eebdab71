"""Kubernetes objects of a desired unit, the controller's ownership marks, and the per-application inventory.

* :func:`parse_documents_of` reads every YAML document of ``unit.files()`` with the hardened loader (no aliases,
  no tags); empty documents are skipped and anything that is not an object (``apiVersion``, ``kind``,
  ``metadata.name``) is a :class:`PermanentError` naming the file and line.
* Ownership: labels ``reconciler.io/environment``, ``reconciler.io/application``, ``reconciler.io/managed-by:
  reconciler`` (selectable) and annotations ``reconciler.io/target``, ``reconciler.io/version``,
  ``reconciler.io/fingerprint``, ``reconciler.io/component`` plus the full environment and application names. A
  name that is not a valid label value (over 63 characters...) is labelled ``h-<sha256 prefix>``; the
  annotation keeps it whole and is what :func:`owner_of` trusts. An object is *ours* only when the managed-by
  label, the target annotation and both names match: anything else is foreign and never touched.
* :class:`Inventory`: what one (target, environment, application) holds, kept in a ConfigMap
  ``reconciler-inventory-<hash>`` in the inventory namespace (see :mod:`reconciler.drivers.kubernetes`): the
  applied version and fingerprint, the apply time and, per object, a digest of the fields this controller's field
  manager owns (:func:`fields_digest`); another manager changing one of those fields takes its ownership, so the
  digest changes and the object shows up as drifted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.core.problems import PermanentError
from reconciler.core.yamlsafe import YamlError, parse_documents
from reconciler.drivers.k8s_api import Resource

DOMAIN = "reconciler.io"
LABEL_ENVIRONMENT = f"{DOMAIN}/environment"
LABEL_APPLICATION = f"{DOMAIN}/application"
LABEL_MANAGED_BY = f"{DOMAIN}/managed-by"
LABEL_INVENTORY = f"{DOMAIN}/inventory"
MANAGED_BY = "reconciler"
ANN_TARGET = f"{DOMAIN}/target"
ANN_VERSION = f"{DOMAIN}/version"
ANN_FINGERPRINT = f"{DOMAIN}/fingerprint"
ANN_COMPONENT = f"{DOMAIN}/component"
ANN_ENVIRONMENT = f"{DOMAIN}/environment-name"
ANN_APPLICATION = f"{DOMAIN}/application-name"
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


@dataclass
class Document:
    """One YAML document of one file: ``source`` is ``<component>/<file>:<line>``."""

    component: str
    source: str
    body: dict[str, Any]


def _plain(value: Any) -> Any:
    """Loader values (ints/floats that remember their text) as plain JSON values."""
    return json.loads(json.dumps(value))


def parse_documents_of(files: Mapping[str, bytes]) -> list[Document]:
    """Every non-empty YAML document of ``files`` (``<component>/<file>`` -> bytes), in file order."""
    documents: list[Document] = []
    for path in sorted(files):
        component = path.split("/", 1)[0]
        try:
            docs = parse_documents(path, files[path])
        except YamlError as exc:
            where = f"{path}:{exc.line}" if exc.line else path
            raise PermanentError(f"{where}: {exc.message}") from None
        for doc in docs:
            if doc.data is None:
                continue
            line = doc.line() or 1
            source = f"{path}:{line}"
            body = doc.data
            problem = _not_an_object(body)
            if problem:
                raise PermanentError(f"{source}: document {doc.index + 1} is not a Kubernetes object: {problem}")
            documents.append(Document(component, source, _plain(body)))
    return documents


def _not_an_object(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "expected a mapping"
    for key in ("apiVersion", "kind"):
        if not isinstance(body.get(key), str) or not body[key]:
            return f"missing {key}"
    metadata = body.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        return "missing metadata.name"
    for key in ("labels", "annotations"):
        if metadata.get(key) is not None and not isinstance(metadata[key], dict):
            return f"metadata.{key} must be a mapping"
    if metadata.get("namespace") is not None and not isinstance(metadata["namespace"], str):
        return "metadata.namespace must be a string"
    return None


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
    order = ("created", "configured", "unchanged", "pruned")
    text = ", ".join(f"{counts[k]} {k}" for k in order if counts[k]) or "nothing to do"
    return text + "".join(f"; {n}" for n in notes)


def names(refs: Sequence[Ref], limit: int = 5) -> str:
    shown = ", ".join(str(r) for r in refs[:limit])
    return shown + (f" (+{len(refs) - limit} more)" if len(refs) > limit else "")


# -- comparing desired with live ---------------------------------------------------------------------------------
def managed_fields(obj: Mapping[str, Any], manager: str) -> Any:
    """The fields ``manager`` owns through server-side apply (``fieldsV1``), merged over its entries."""
    owned: list[Any] = []
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply" and not entry.get("subresource"):
            owned.append(entry.get("fieldsV1") or {})
    return owned


def fields_digest(obj: Mapping[str, Any], manager: str) -> str:
    return hashlib.sha256(json.dumps(managed_fields(obj, manager), sort_keys=True).encode()).hexdigest()[:32]


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
def inventory_name(owner: Owner) -> str:
    key = f"{owner.target}\0{owner.environment}\0{owner.application}".encode()
    return "reconciler-inventory-" + hashlib.sha256(key).hexdigest()[:24]


@dataclass(frozen=True)
class Entry:
    ref: Ref
    component: str = ""
    fields: str = ""  # fields_digest after the last apply ("" while pending)


@dataclass(frozen=True)
class Inventory:
    owner: Owner
    version: str | None
    fingerprint: str | None
    applied_at: float = 0.0
    entries: tuple[Entry, ...] = ()
    resource_version: str | None = None  # of the ConfigMap, for optimistic concurrency
    unreadable: str | None = field(default=None, compare=False)

    def refs(self) -> set[Ref]:
        return {e.ref for e in self.entries}

    def encode(self, namespace: str) -> dict[str, Any]:
        payload = {
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
                }
                for e in sorted(self.entries, key=lambda e: e.ref)
            ],
        }
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": inventory_name(self.owner), "namespace": namespace},
            "data": {INVENTORY_KEY: json.dumps(payload, indent=1, sort_keys=True)},
        }
        mark(body, self.owner, "", self.version or "", self.fingerprint or "")
        body["metadata"]["labels"][LABEL_INVENTORY] = "true"
        if self.resource_version:
            body["metadata"]["resourceVersion"] = self.resource_version
        return body


def decode_inventory(obj: Mapping[str, Any], owner: Owner) -> Inventory:
    """The inventory in ConfigMap ``obj``; ``unreadable`` says why when it cannot be used."""
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        doc = json.loads(((obj.get("data") or {}).get(INVENTORY_KEY)) or "")
        entries = tuple(
            Entry(Ref(o["apiVersion"], o["kind"], o.get("namespace") or "", o["name"]), o.get("component", ""),
                  o.get("fields", ""))
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
        return Inventory(owner, doc["version"], doc["fingerprint"], float(doc.get("appliedAt") or 0), entries, rv)
    except (ValueError, KeyError, TypeError, AttributeError):
        name = (obj.get("metadata") or {}).get("name")
        return Inventory(owner, None, None, resource_version=rv, unreadable=f"inventory ConfigMap {name} is unreadable")
