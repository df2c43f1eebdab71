"""``reconciler sync|refresh|suspend|resume --env E [--app A] [--reason TEXT]``: ask a running controller.

Talks to the controller's HTTP API (``--url``, default ``http://127.0.0.1:8080``) with a bearer token read from
``--token-file`` or the ``RECONCILER_TOKEN`` environment variable (never from the command line, where ``ps`` shows
it). The controller records and audits the request (who: the token's name) before honouring it. Exit 0 when it
was accepted, 1 with the controller's reason otherwise. Called by :mod:`reconciler.cli`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

TIMEOUT = 30.0


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            return Path(args.token_file).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ValueError(f"cannot read the token file {args.token_file}: {exc.strerror or exc}") from exc
    return os.environ.get("RECONCILER_TOKEN", "").strip() or None


def run_operate(args: argparse.Namespace) -> int:
    try:
        token = _token(args)
    except ValueError as exc:
        print(f"reconciler {args.command}: {exc}", file=sys.stderr)
        return 1
    body: dict[str, str] = {}
    if args.app:
        body["application"] = args.app
    if getattr(args, "reason", None):
        body["reason"] = args.reason
    url = f"{args.url.rstrip('/')}/api/v1/environments/{quote(args.env, safe='')}/{args.command}"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        print(f"reconciler {args.command}: {exc.code}: {_error(exc.read())}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, TimeoutError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"reconciler {args.command}: cannot reach {args.url}: {reason}", file=sys.stderr)
        return 1
    op = answer.get("accepted", {})
    scope = f"{op.get('environment')}/{op.get('application')}" if op.get("application") else op.get("environment")
    print(f"accepted: {op.get('action')} {scope} by {op.get('by')} (id {op.get('id')})")
    return 0


def _error(data: bytes) -> str:
    try:
        found = json.loads(data).get("error")
    except (ValueError, AttributeError):
        found = None
    return str(found) if found else data.decode("utf-8", "replace")[:300]
