"""What ``reconciler diff`` shows: desired content against live content, per file or object, secrets masked.

:func:`mask_secrets` replaces the values of Kubernetes Secrets (``data`` / ``stringData``, in YAML text or in an
object) with ``<secret sha256:...>``: a changed value still shows as a change, its content never. :func:`unified`
is a unified diff of two texts (``None``: absent). Pure; called by the drivers' ``contents`` and by the command.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from reconciler.core.plaintext import SECRET_FIELDS


@dataclass(frozen=True)
class Content:
    """One file or object of a unit: what runs (None: absent) and what Git wants, as text, secrets masked."""

    name: str
    live: str | None
    desired: str


def secret_digest(value: Any) -> str:
    """How a secret value is shown (diff, plan): a short digest, so that a change shows and the value never."""
    return "<secret sha256:" + hashlib.sha256(str(value).encode()).hexdigest()[:12] + ">"


def mask_object(obj: Any) -> Any:
    """An object with a Secret's values replaced by digests (other objects unchanged)."""
    if not isinstance(obj, Mapping) or obj.get("kind") != "Secret":
        return obj
    masked = dict(obj)
    for field in SECRET_FIELDS:
        values = obj.get(field)
        if isinstance(values, Mapping):
            masked[field] = {k: secret_digest(v) for k, v in values.items()}
    return masked


def mask_secrets(text: str) -> str:
    """YAML text with every Secret document's values masked (text that is not YAML, or has no Secret, as it is)."""
    if "Secret" not in text:
        return text
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return text
    if not any(isinstance(d, Mapping) and d.get("kind") == "Secret" for d in documents):
        return text
    return yaml.safe_dump_all([mask_object(d) for d in documents], sort_keys=False)


def as_text(obj: Any) -> str:
    return yaml.safe_dump(mask_object(obj), sort_keys=True, default_flow_style=False)


def unified(name: str, live: str | None, desired: str) -> str:
    """``live`` -> ``desired`` as a unified diff ("" when equal)."""
    before = (live or "").splitlines(keepends=True)
    after = desired.splitlines(keepends=True)
    lines = difflib.unified_diff(before, after, f"live/{name}" if live is not None else "/dev/null", f"git/{name}")
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
