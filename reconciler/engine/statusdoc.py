"""Status documents of the status branch (``environments/<env>.yaml``, ``controller.yaml``) and their identity.

A document is rewritten only when something other than its ``updated`` time changed, so a cycle in which nothing
happened makes no status commit. Called by the controller; the bytes go to :mod:`reconciler.status.store`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import yaml


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump(doc: Mapping[str, Any]) -> bytes:
    text: str = yaml.dump(dict(doc), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=200)
    return text.encode()


def identity(doc: Mapping[str, Any]) -> str:
    """A digest of the document without its ``updated`` field."""
    body = {k: v for k, v in doc.items() if k != "updated"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def parse(data: bytes) -> dict[str, Any] | None:
    """A status document written by us (or ``None`` when unreadable: it will be rewritten)."""
    try:
        doc = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None
    return doc if isinstance(doc, dict) else None


def environment_path(name: str) -> str:
    return f"environments/{name}.yaml"


def audit_path(entry_time: str) -> str:
    """Audit entries go to one JSON-lines file per month: ``audit/2026-11.jsonl``."""
    return f"audit/{entry_time[:7]}.jsonl"
