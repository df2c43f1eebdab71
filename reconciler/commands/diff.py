"""``reconciler diff --config FILE --env E [--app A] [--format text|json]``: what Git wants against what runs.

Renders the environment at the tracked branch's head (as the controller would) and asks each target's driver for
the live content: local targets the deployed files, Kubernetes the server-side dry-run result beside the live
object (no managedFields, status or server-set metadata). Secret values are digests, never values. Nothing is
applied. Exit 0 when nothing differs, 1 when something does, 2 on an error (as ``kubectl diff``). Called by
:mod:`reconciler.cli`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from reconciler.commands.common import ConfigError, load_config
from reconciler.commands.run import build_controller
from reconciler.core.contentdiff import unified
from reconciler.core.problems import ReconcilerError


def run_diff(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        controller = build_controller(config, dry_run=True)
    except (ConfigError, ReconcilerError) as exc:
        print(f"reconciler diff: {exc}", file=sys.stderr)
        return 2
    try:
        found = controller.contents(args.env, args.app)
    except (ValueError, ReconcilerError) as exc:
        print(f"reconciler diff: {exc}", file=sys.stderr)
        return 2
    finally:
        controller.close()
    changed = False
    report: list[dict[str, Any]] = []
    for app, contents in found.items():
        for content in contents:
            text = unified(f"{app}/{content.name}", content.live, content.desired)
            changed = changed or bool(text)
            report.append({"application": app, "name": content.name, "live": content.live is not None, "diff": text})
    if args.format == "json":
        print(json.dumps({"environment": args.env, "changed": changed, "items": report}, indent=2))
    else:
        for entry in report:
            sys.stdout.write(entry["diff"])
        if not changed:
            print(f"{args.env}: live equals desired ({len(report)} files or objects)")
    return 1 if changed else 0
