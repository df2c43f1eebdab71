"""``reconciler status`` and ``reconciler history``: read the status branch and the audit trail.

Both read the status branch of the configured source through :class:`reconciler.status.store.StatusStore`, so
they show what the controller committed, from any machine that can fetch the repo.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from typing import Any

from reconciler.commands.common import ConfigError, fail, load_config, status_store
from reconciler.core.audit import AuditEntry
from reconciler.core.instants import read_instant
from reconciler.core.problems import ReconcilerError
from reconciler.status import document


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    widths[-1] = len(headers[-1])  # last column is free text
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _short(rev: Any) -> str:
    return str(rev)[:12] if rev else "-"


def run_status(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        snapshot = status_store(config).read()
    except ConfigError as exc:
        return fail(str(exc))
    except ReconcilerError as exc:
        return fail(f"cannot read status: {exc}")
    docs = {}
    for path, data in sorted(snapshot.files.items()):
        if path.startswith("environments/") and path.endswith(".yaml"):
            doc = document.parse(data)
            if doc is not None:
                docs[str(doc.get("environment", path))] = doc
    if args.env:
        if args.env not in docs:
            return fail(f"no status for environment {args.env!r} on branch {config.status_branch}")
        docs = {args.env: docs[args.env]}
    if args.format == "json":
        print(json.dumps(list(docs.values()) if not args.env else docs[args.env], indent=2, default=str))
        return 0
    if not docs:
        print(f"no status yet on branch {config.status_branch}")
        return 0
    if args.env:
        doc = docs[args.env]
        print(
            f"environment: {args.env}\nstage: {doc.get('stage')}\nphase: {doc.get('phase')}\n"
            f"message: {doc.get('message')}\nlastAppliedRevision: {doc.get('lastAppliedRevision')}\n"
            f"lastAttemptedRevision: {doc.get('lastAttemptedRevision')}\nupdated: {doc.get('updated')}\n"
            + "".join(
                f"pinned: {a} {v} (not its stage's version)\n" for a, v in sorted((doc.get("pins") or {}).items())
            )
        )
        rows = [
            [
                a,
                str(s.get("desired") or "-") + (" (pinned)" if a in (doc.get("pins") or {}) else ""),
                str(s.get("live") or "-"),
                str(s.get("phase")),
                str(s.get("message") or ""),
            ]
            for a, s in sorted((doc.get("applications") or {}).items())
        ]
        print(_table(rows, ["APPLICATION", "DESIRED", "LIVE", "PHASE", "MESSAGE"]))
        return 0
    rows = [
        [
            n,
            str(d.get("stage") or "-"),
            str(d.get("phase")),
            _short(d.get("lastAppliedRevision")),
            str(d.get("message") or ""),
        ]
        for n, d in sorted(docs.items())
    ]
    print(_table(rows, ["ENVIRONMENT", "STAGE", "PHASE", "APPLIED", "MESSAGE"]))
    return 0


# the CSV's first columns (a reader's order); then every other field of AuditEntry, then any other key an entry has
AUDIT_FIELDS = ["time", "environment", "stage", "application", "action", "from", "to", "result", "revision", "author",
                "committer", "signer", "signerTeam", "override", "trigger", "target", "start", "end",
                "message"]  # fmt: skip


def csv_columns(entries: list[dict[str, Any]]) -> list[str]:
    """Every key of ``entries`` (what the JSON export shows), known ones in a fixed order."""
    columns = AUDIT_FIELDS + [f for f in AuditEntry.FIELDS if f not in AUDIT_FIELDS]
    extra = sorted({k for e in entries for k in e} - set(columns))
    return columns + extra


def phase_rows(files: dict[str, bytes]) -> list[dict[str, Any]]:
    """Every recorded phase transition of every environment (status documents), in time order, each with the
    phase it left and how long the new phase lasted (until the next transition; None while it lasts)."""
    rows: list[dict[str, Any]] = []
    for path, data in sorted(files.items()):
        doc = document.parse(data) if path.startswith("environments/") else None
        if not doc or not isinstance(doc.get("phases"), list):
            continue
        phases = [p for p in doc["phases"] if isinstance(p, dict)]
        for i, entry in enumerate(phases):
            after = phases[i + 1].get("since") if i + 1 < len(phases) else None
            start, end = read_instant(entry.get("since")), read_instant(after)
            rows.append({
                "time": entry.get("since"), "environment": doc.get("environment"), "stage": doc.get("stage"),
                "from": phases[i - 1].get("phase") if i else None, "phase": entry.get("phase"),
                "seconds": round((end - start).total_seconds()) if start and end else None,
                "message": entry.get("message", ""),
            })  # fmt: skip
    return sorted(rows, key=lambda r: str(r["time"]))


def run_history(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        store = status_store(config)
        snapshot = store.read()
        entries = phase_rows(snapshot.files) if args.phases else list(store.audit_lines())
    except ConfigError as exc:
        return fail(str(exc))
    except ReconcilerError as exc:
        return fail(f"cannot read the audit trail: {exc}")
    selected = [e for e in entries if _matches(e, args)]
    if args.format == "json":
        print(json.dumps(selected, indent=2, default=str))
    elif args.format == "csv":
        out = io.StringIO()
        columns = list(selected[0]) if args.phases and selected else csv_columns(selected)
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for entry in selected:
            writer.writerow({k: "" if entry.get(k) is None else entry.get(k) for k in columns})
        sys.stdout.write(out.getvalue())
    elif args.phases:
        rows = [[str(e["time"]), str(e["environment"]), f"{e['from'] or '-'} -> {e['phase']}",
                 "-" if e["seconds"] is None else f"{e['seconds']}s", str(e["message"])] for e in selected]  # fmt: skip
        print(_table(rows, ["TIME", "ENVIRONMENT", "PHASE", "LASTED", "MESSAGE"]))
    else:
        rows = [
            [
                str(e.get("time", "")),
                str(e.get("environment", "")),
                str(e.get("application", "")),
                f"{e.get('from') or '-'} -> {e.get('to') or '-'}",
                str(e.get("result", "")),
                _short(e.get("revision")),
                str(e.get("author", "")),
            ]
            for e in selected
        ]
        print(_table(rows, ["TIME", "ENVIRONMENT", "APPLICATION", "CHANGE", "RESULT", "REVISION", "AUTHOR"]))
    return 0


def _matches(entry: dict[str, Any], args: argparse.Namespace) -> bool:
    if args.env and entry.get("environment") != args.env:
        return False
    if getattr(args, "app", None) and entry.get("application") != args.app:
        return False
    if getattr(args, "stage", None) and entry.get("stage") != args.stage:
        return False
    since, until = getattr(args, "since", None), getattr(args, "until", None)
    if since is None and until is None:
        return True
    when = read_instant(entry.get("time"))  # instants, not strings: 08:00Z is after 09:00+02:00
    if when is None:
        return False
    return (since is None or when >= since) and (until is None or when < until)
