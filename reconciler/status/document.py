"""Status documents of the status branch (``environments/<env>.yaml``, ``controller.yaml``) and their identity.

A document is rewritten only when something other than its ``updated`` time changed, so a cycle in which nothing
happened makes no status commit. The schema lives with the status branch, not the engine: the controller writes
documents (the bytes go to :mod:`reconciler.status.store`), and the ``status``, ``history`` and ``plan --live``
commands read them without importing the engine.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import yaml


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# a string that YAML reads back as the same string when written plain: starts with a letter (so never a number
# or a date), no ": " / " #" / flow or quote characters, and not one of YAML 1.1's booleans or null
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./@+-]*(?: [A-Za-z0-9_./@+()=<>-]+)*")
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return _text(value)
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return _text(str(value))


@lru_cache(maxsize=1 << 16)
def _text(text: str) -> str:
    """``text`` as a YAML scalar (cached: status documents repeat the same names, versions and phases)."""
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    # a JSON string is a valid YAML double-quoted scalar; anything not printable (line separators too) escaped
    return json.dumps(text, ensure_ascii=not text.isprintable())


def _emit(value: Any, indent: str, out: list[str]) -> None:
    """Block-style YAML for the status documents' shapes: mappings with string keys, lists, scalars."""
    if isinstance(value, Mapping):
        items = tuple(value.items())
        if len(items) <= 8 and all(type(k) is str and (type(v) is str or v is None) for k, v in items):
            out.append(_flat(indent, items))  # an application's entry: mostly the same as in the last document
            return
        for key, item in items:
            name = _scalar(key)
            if isinstance(item, Mapping) and item:
                out.append(f"{indent}{name}:\n")
                _emit(item, indent + "  ", out)
            elif isinstance(item, list) and item:
                out.append(f"{indent}{name}:\n")
                _emit(item, indent, out)
            else:
                out.append(f"{indent}{name}: {_flow(item)}\n")
    else:
        for item in value:
            if isinstance(item, Mapping) and item:
                inner: list[str] = []
                _emit(item, indent + "  ", inner)
                out.append(indent + "- " + inner[0][len(indent) + 2 :])
                out.extend(inner[1:])
            else:
                out.append(f"{indent}- {_flow(item)}\n")


@lru_cache(maxsize=1 << 15)
def _flat(indent: str, items: tuple[tuple[str, str | None], ...]) -> str:
    """A mapping of strings (or nulls) as block YAML, cached by its items."""
    return "".join(f"{indent}{_text(key)}: {'null' if item is None else _text(item)}\n" for key, item in items)


@lru_cache(maxsize=1 << 16)
def app_entry(desired: str | None, live: str | None, phase: str, message: str) -> dict[str, str | None]:
    """An application's entry in an environment's document, one object per content: a fleet's documents, which the
    controller keeps, repeat the same few entries (``1.4.0``, ``1.4.0``, ``Synced``) thousands of times. Shared,
    so never mutated."""
    return {"desired": desired, "live": live, "phase": phase, "message": message}


def _flow(value: Any) -> str:
    if isinstance(value, Mapping | list):  # JSON is YAML's flow style
        return json.dumps(value, ensure_ascii=False, default=str)
    return _scalar(value)


def dump(doc: Mapping[str, Any]) -> bytes:
    """The document as block-style YAML (PyYAML's representer, even with the C dumper, cost 8 ms a document)."""
    out: list[str] = []
    _emit(doc, "", out)
    return "".join(out).encode()


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


def audit_path(written: datetime, token: str) -> str:
    """Where the audit entries of one status commit, made at ``written``, go: a new file,
    ``audit/2026-11/29/031502.123456-<token>.jsonl`` (UTC), never rewritten, so a commit costs the same however long
    the trail is. Names sort in the order they were written (after the month's single file of earlier versions,
    ``audit/2026-11.jsonl``, which readers still read)."""
    utc = written.astimezone(UTC)
    return f"audit/{utc:%Y-%m}/{utc:%d}/{utc:%H%M%S.%f}-{token}.jsonl"
