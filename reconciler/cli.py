"""The ``reconciler`` command line: argument parsing and dispatch to :mod:`reconciler.commands`.

Every command returns an exit code; nothing a user feeds in may end in a traceback, so unexpected exceptions are
caught here and printed as one line (with ``RECONCILER_DEBUG=1`` showing the traceback for developers).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from reconciler.core.instants import InstantError, parse_instant
from reconciler.core.loader import Limits

MAX_SIZE = 1024**4  # 1 TiB: a bound on --max-file-size / --max-repo-size


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        size = int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except (ValueError, OverflowError) as exc:  # 1e400k is inf: OverflowError, not a crash
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 1048576, 512k, 1m)") from exc
    if not 1 <= size <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"size {text!r} is out of bounds (1 byte to 1 TiB)")
    return size


def _instant(text: str) -> datetime:
    try:
        return parse_instant(text)
    except InstantError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-file-size",
        type=_size,
        default=Limits.max_file_size,
        metavar="SIZE",
        help="largest manifest file accepted (default 1m)",
    )
    p.add_argument(
        "--max-repo-size",
        type=_size,
        default=Limits.max_repo_size,
        metavar="SIZE",
        help="largest total size of manifests accepted (default 256m)",
    )


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default when it has one worth showing and its help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return super()._get_help_string(action)


def _command(sub: Any, name: str, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".",
                                                     formatter_class=_Help)  # fmt: skip
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="GitOps release controller for Kubernetes and legacy hosts.",
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"reconciler {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "validate", "check a releases repo; exit 1 with every problem as path:line: message")
    p.add_argument("path", nargs="?", default=".", help="the releases repo (default: current directory)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    _add_limits(p)

    p = _command(sub, "plan", "what a change between two revisions does, with policy verdicts")
    p.add_argument("--repo", default=".", help="the releases repository (a checkout or a bare repo)")
    p.add_argument("--base", default="HEAD~1", help="the revision to compare from (default HEAD~1)")
    p.add_argument("--head", default="HEAD", help="the revision to compare to (default HEAD)")
    p.add_argument("--format", choices=("text", "markdown", "json"), default="text",
                   help="output format (markdown: a pull request comment)")  # fmt: skip
    p.add_argument("--live", action="store_true", help="compare with the live versions on the status branch")
    p.add_argument("--config", help="the controller config (with --live; its allowedSigners verify signatures)")
    p.add_argument(
        "--allowed-signers",
        metavar="FILE",
        help="git's allowed-signers file to verify commit signatures (default: the config's)",
    )
    p.add_argument("--status-ref", help="where the audit trail is (default: reconciler-status, local or origin)")
    p.add_argument("--now", type=_instant, help="evaluate time-based policies at this ISO 8601 time (default: now)")
    p.add_argument("--env", action="append", metavar="NAME", help="only this environment (repeatable)")
    p.add_argument("--stage", action="append", metavar="NAME", help="only this stage (repeatable)")
    p.add_argument("--app", action="append", metavar="NAME", help="only this application (repeatable)")
    p.add_argument("--output", metavar="DIR", help="also write the full report there (plan.md uncut, plan.json, "
                   "plan.txt): a CI artifact")  # fmt: skip
    _add_limits(p)

    p = _command(sub, "run", "run the controller")
    p.add_argument("--config", required=True, help="the controller config file")
    p.add_argument("--once", action="store_true", help="one full cycle; exit 0 if every environment is Synced")
    p.add_argument("--dry-run", action="store_true", help="plan and print; apply nothing, write no status")
    _add_sharding(p)
    _add_logging(p)

    p = _command(sub, "status", "show the status branch")
    p.add_argument("--config", required=True, help="the controller config file (names the status branch)")
    p.add_argument("--env", help="one environment, with its applications")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")

    p = _command(sub, "history", "show or export the audit trail")
    p.add_argument("--config", required=True, help="the controller config file (names the status branch)")
    p.add_argument("--env", help="only this environment")
    p.add_argument("--app", help="only this application")
    p.add_argument("--stage", help="only this stage")
    p.add_argument("--since", type=_instant, help="from this time (ISO 8601, e.g. 2026-11-01; UTC unless an offset)")
    p.add_argument("--until", type=_instant, help="before this time (ISO 8601)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    p.add_argument("--phases", action="store_true",
                   help="the environments' phase transitions (when each went Degraded, for how long)")  # fmt: skip

    verbs = {
        "sync": "reconcile an environment now, skipping backoff and the poll interval",
        "refresh": "observe and drift-check an environment now, applying nothing",
        "suspend": "hold every change and drift repair of an environment (or application) until resumed",
        "resume": "lift a suspension",
    }
    for verb, text in verbs.items():
        p = _command(sub, verb, f"{text} (asks a running controller)")
        p.add_argument("--env", required=True, help="the environment")
        if verb != "refresh":
            p.add_argument("--app", help="only this application")
        p.add_argument("--reason", required=verb == "suspend", help="why (recorded in the audit trail)")
        p.add_argument("--url", default="http://127.0.0.1:8080", help="the controller's address")
        p.add_argument("--token-file", help="a file holding an operator token (default: $RECONCILER_TOKEN)")

    p = _command(sub, "diff", "what Git wants of an environment against what runs there (secrets masked)")
    p.add_argument("--config", required=True, help="the controller config file")
    p.add_argument("--env", required=True, help="the environment")
    p.add_argument("--app", help="only this application")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    p = _command(sub, "rollback", "commit a pin of an environment's application to the version it ran before")
    p.add_argument("--env", required=True, help="the environment")
    p.add_argument("--app", required=True, help="the application")
    p.add_argument("--to", help="the version (default: the one it ran before, from the audit trail)")
    p.add_argument("--repo", default=".", help="your clone of the releases repo (default: current directory)")
    p.add_argument("--branch", help="commit on this new branch (for a pull request) instead of the tracked one")
    p.add_argument("--reason", help="why (in the commit message and the pin)")
    p.add_argument("--no-push", action="store_true", help="commit only; push yourself")

    p = _command(sub, "codeowners", "print or write the CODEOWNERS file that the Teams imply")
    p.add_argument("path", nargs="?", default=".", help="the releases repo (default: current directory)")
    p.add_argument("--syntax", choices=("github", "gitlab"), default="github",
                   help="github: one line a pattern; gitlab: a section per team (default github)")  # fmt: skip
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", nargs="?", const="", metavar="FILE",
                   help="write it (default: the repo's CODEOWNERS, else .github/CODEOWNERS)")  # fmt: skip
    g.add_argument("--check", action="store_true", help="exit 1 when the committed CODEOWNERS is stale or missing")

    p = _command(sub, "demo", "run the controller on the embedded example fleet")
    p.add_argument("--state-dir", default=".reconciler-demo", help="where the demo keeps everything")
    p.add_argument("--listen", default="127.0.0.1:8080", help="address of the dashboard and metrics")
    p.add_argument("--once", action="store_true", help="one cycle, exit code as run --once")
    _add_logging(p)
    return parser


def _add_sharding(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale-out (README: Kubernetes and scale-out)")
    g.add_argument("--shard-index", type=int, metavar="I", help="static sharding: this replica's index, 0..N-1")
    g.add_argument("--shard-count", type=int, metavar="N", help="static sharding: the number of replicas")
    g.add_argument("--shards", type=int, metavar="N", help="dynamic sharding: N shards handed out with Leases")
    g.add_argument(
        "--lease-kubeconfig", metavar="FILE", help="kubeconfig of the cluster holding the Leases (default: in-cluster)"
    )
    g.add_argument("--lease-context", metavar="NAME", help="context of --lease-kubeconfig (default: its current one)")
    g.add_argument("--lease-namespace", default="reconciler-system", metavar="NS", help="namespace of the Leases")
    g.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS", help="lease duration")
    g.add_argument("--replica-id", metavar="ID", help="this replica's unique name (default: HOSTNAME-PID)")


def _add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="the least severe log events written")  # fmt: skip


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("release-reconciler")
    except PackageNotFoundError:
        return "0+unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from reconciler.commands.common import COMMAND

    COMMAND["name"] = args.command
    try:
        if args.command == "validate":
            from reconciler.commands.validate import run_validate

            return run_validate(args)
        if args.command == "plan":
            from reconciler.commands.plan import run_plan

            if args.live and not args.config:
                print("reconciler plan: --live needs --config", file=sys.stderr)
                return 1
            return run_plan(args)
        if args.command == "run":
            from reconciler.commands.run import run_run

            return run_run(args)
        if args.command == "status":
            from reconciler.commands.status import run_status

            return run_status(args)
        if args.command == "history":
            from reconciler.commands.status import run_history

            return run_history(args)
        if args.command in ("sync", "refresh", "suspend", "resume"):
            from reconciler.commands.operate import run_operate

            if args.command == "refresh":
                args.app = None
            return run_operate(args)
        if args.command == "diff":
            from reconciler.commands.diff import run_diff

            return run_diff(args)
        if args.command == "rollback":
            from reconciler.commands.rollback import run_rollback

            return run_rollback(args)
        if args.command == "codeowners":
            from reconciler.commands.codeowners import run_codeowners

            return run_codeowners(args)
        if args.command == "demo":
            from reconciler.commands.demo import run_demo

            return run_demo(args)
        raise AssertionError(args.command)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`: not an error worth a message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # the last line of defence against tracebacks
        if os.environ.get("RECONCILER_DEBUG"):
            raise
        print(
            f"reconciler {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(set RECONCILER_DEBUG=1 for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
