"""A light environments list: filters, fields, pages, and entity tags for conditional requests.

``select`` applies the query of ``GET /api/v1/environments`` to the snapshot's environments: ``stage``, ``phase``,
``application`` filter; ``fields=name,phase,applications`` keeps only those keys of each environment (``name``
always); ``limit`` (1 to 1,000) and ``continue`` (the token the previous page returned) page through the result in
the snapshot's order. ``etag`` names a response body (strong: its SHA-256), ``fresh`` tells whether the client's
``If-None-Match`` already has it (then the answer is 304, no body). Raises :class:`BadQuery` with a message for the
client. Called by :mod:`reconciler.http.handler`. Pure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FIELDS = ("name", "stage", "labels", "wave", "phase", "message", "lastAppliedRevision", "lastAttemptedRevision",
          "updated", "applications", "phases", "recentAudit")  # fmt: skip
MAX_LIMIT = 1000


class BadQuery(ValueError):
    pass


@dataclass(frozen=True)
class Page:
    environments: list[dict[str, Any]]
    count: int  # every environment the filters matched
    next: str | None  # the ``continue`` token of the next page; None on the last one


def select(environments: Sequence[Mapping[str, Any]], query: Mapping[str, str], phases: frozenset[str]) -> Page:
    phase = query.get("phase")
    if phase is not None and phase not in phases:
        raise BadQuery(f"unknown phase {phase[:50]!r}; one of {', '.join(sorted(phases))}")
    matched = [
        e
        for e in environments
        if ("stage" not in query or e["stage"] == query["stage"])
        and (phase is None or e["phase"] == phase)
        and ("application" not in query or query["application"] in e["applications"])
    ]
    start, limit = _window(query, len(matched))
    chosen = matched[start : start + limit] if limit else matched[start:]
    keys = _fields(query.get("fields"))
    page = [{k: e[k] for k in keys if k in e} for e in chosen] if keys else [dict(e) for e in chosen]
    more = bool(limit) and start + limit < len(matched)
    return Page(page, len(matched), str(start + limit) if more else None)


def _fields(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    asked = value.split(",")  # as the description's pattern has it: names, one comma between each, no spaces
    if "" in asked:
        raise BadQuery(f"fields are comma-separated field names, none empty; fields are {', '.join(FIELDS)}")
    unknown = [f for f in asked if f not in FIELDS]
    if unknown:
        raise BadQuery(f"unknown field {unknown[0][:50]!r}; fields are {', '.join(FIELDS)}")
    return ("name", *dict.fromkeys(f for f in asked if f != "name"))


def _window(query: Mapping[str, str], total: int) -> tuple[int, int]:
    """(start, limit) of the page; limit 0: everything from start."""
    try:
        limit = int(query["limit"]) if "limit" in query else 0
        start = int(query["continue"]) if "continue" in query else 0
    except ValueError as exc:
        raise BadQuery("limit and continue are whole numbers (continue: the token of the previous page)") from exc
    if "limit" in query and not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be between 1 and {MAX_LIMIT}")
    if start < 0:
        raise BadQuery("continue is not a token of this list")
    return min(start, total), limit  # past the end (the list shrank since): an empty last page


def etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def fresh(if_none_match: str | None, tag: str) -> bool:
    """Whether ``If-None-Match`` names ``tag`` (or ``*``); weak tags compare by their opaque part (RFC 9110)."""
    if not if_none_match:
        return False
    offered = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in offered or tag in offered
