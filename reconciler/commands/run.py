"""``reconciler run --config FILE [--once] [--dry-run]``: the controller.

Scale-out: ``--shard-index I --shard-count N`` (static) or ``--shards N`` with Kubernetes Leases in the cluster of
``--lease-kubeconfig`` (else the in-cluster service account), see :mod:`reconciler.engine.sharding`; every audit
entry names the replica (``--replica-id``, default ``HOSTNAME-PID``) that applied it.

``--once`` runs one full cycle and exits 0 when every environment ended Synced (or Blocked by a policy), 1
otherwise. Without it the controller loops until SIGTERM/SIGINT, which stop it cleanly: no new environment starts,
in-flight ones finish (each is bounded by ``applyTimeout``) and status is written. ``--dry-run`` plans and prints
what would change, applies nothing and writes no status. Without ``--once`` the HTTP server
(:mod:`reconciler.http.server`: dashboard, API, ``/metrics``, probes, webhooks) serves on ``config.listen`` and the
controller reports to :class:`~reconciler.observability.metrics.PrometheusMetrics`. Also used by ``reconciler demo``.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler.commands.common import ConfigError, fail, load_config, status_store
from reconciler.core.config import ControllerConfig
from reconciler.core.problems import ReconcilerError
from reconciler.drivers.k8s_api import KubeApi
from reconciler.drivers.k8s_store import api_client_for
from reconciler.engine.controller import Controller, CycleReport
from reconciler.engine.reconcile import set_replica_identity
from reconciler.engine.sharding import LeaseCoordinator, StaticShards, rearm
from reconciler.engine.targets import DriverPool
from reconciler.http.auth import AuthConfigError, build_policy
from reconciler.http.server import HttpServer
from reconciler.http.webhooks import WebhookSecrets
from reconciler.observability import logging as logs
from reconciler.observability.metrics import PrometheusMetrics
from reconciler.status.journal import open_journal


def build_controller(
    config: ControllerConfig,
    dry_run: bool = False,
    progress: bool = False,
    metrics: PrometheusMetrics | None = None,
) -> Controller:
    from reconciler.source.gitrepo import GitSource

    logs.register_secret(_url_password(config.source_url))
    for secret in WebhookSecrets.from_config(config.webhooks).values():  # env:/file: references resolved
        logs.register_secret(secret)
    source = GitSource(
        config.source_url, config.branch, Path(config.state_dir) / "source", timeout=config.source_timeout
    )
    store = None if dry_run else status_store(config)
    journal = None if dry_run else open_journal(Path(config.state_dir))
    return Controller(
        config,
        source,
        store,
        DriverPool(config, metrics=metrics),
        dry_run=dry_run,
        progress=_progress_printer() if progress else None,
        metrics=metrics,
        journal=journal,
    )


def http_server(config: ControllerConfig, metrics: PrometheusMetrics | None) -> Callable[[Controller, Any], HttpServer]:
    """The ``serve`` callback of :func:`run_controller`: starts the HTTP server on ``config.listen``."""

    def serve(controller: Controller, _wake: Any) -> HttpServer:
        server = HttpServer(controller, config.listen, webhooks=config.webhooks, metrics=metrics)
        server.start()
        return server

    return serve


def _url_password(url: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return parts.password or (parts.username if parts.username and parts.scheme in ("http", "https") else None)


def _progress_printer() -> Callable[[int, int], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done == total else ""
        print(f"\r  reconciling: {done}/{total} environments", end=end, file=sys.stderr, flush=True)

    return show


def summarize(controller: Controller, report: CycleReport) -> str:
    phases = controller.phases()
    counts: dict[str, int] = {}
    for phase in phases.values():
        counts[str(phase)] = counts.get(str(phase), 0) + 1
    parts = ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))
    head = (report.revision or "none")[:12]
    extra = ""
    if report.source_error:
        extra += f"\nsource error: {report.source_error}"
    if report.invalid:
        extra += f"\nrevision {head} is invalid:\n" + "\n".join(f"  {p}" for p in report.invalid[:20])
    commit = f", status commit {report.status_commit[:12]}" if report.status_commit else ", no status change"
    return (
        f"revision {head}: {len(phases)} environments ({parts}); {len(report.outcomes)} reconciled, "
        f"{report.skipped} unchanged{commit} in {report.duration:.2f}s{extra}"
    )


def print_plan(report: CycleReport) -> None:
    for name, outcome in sorted(report.outcomes.items()):
        changes = outcome.plans  # what would change (an outcome keeps no plan of an unchanged unit)
        if not changes:
            continue
        print(f"{name}:")
        for plan in changes:
            print(
                f"  {plan.action:<7} {plan.application} on {plan.target}: {plan.from_version or '-'} -> "
                f"{plan.to_version or '-'} ({plan.reason})"
            )


def install_signal_handlers(stop: threading.Event, wake: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        logs.get_logger().info("stopping", signal=signal.Signals(signum).name)
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_controller(
    controller: Controller, once: bool, serve: Callable[[Controller, threading.Event], Any] | None = None
) -> int:
    log = logs.get_logger()
    try:
        controller.restore()
    except ReconcilerError as exc:
        log.warning("could not read the status branch; starting fresh", error=str(exc))
    try:
        if once:
            report = controller.cycle("manual")
            controller.finish_overdue()  # the process would wait for them anyway: record them
            if controller.dry_run:
                print_plan(report)
            print(summarize(controller, report))
            owned = {name: phase for name, phase in controller.phases().items() if controller.owns(name)}
            return 0 if report.all_good(owned) else 1  # a shard's replica answers for its environments
        stop, wake = threading.Event(), controller.wake
        install_signal_handlers(stop, wake)
        try:
            server = serve(controller, wake) if serve else None
        except (OSError, ValueError) as exc:  # address in use, not allowed, malformed
            log.error("cannot serve HTTP", listen=controller.config.listen, error=str(exc))
            hint = ""
            if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
                hint = " (the port is in use: choose another with `listen:` in the config, or --listen for the demo)"
            return fail(f"cannot listen on {controller.config.listen}: {exc}{hint}")
        log.info("controller started", source=controller.config.source_url, interval=controller.config.interval)
        controller.run_forever(stop, wake)
        controller.finish_overdue()  # the process would wait for them anyway: record them
        if server is not None:
            server.shutdown()
        log.info("controller stopped")
        return 0
    finally:
        controller.close()


def sharding_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the scale-out options, or ``None``."""
    static = args.shard_index is not None or args.shard_count is not None
    if static and (args.shard_index is None or args.shard_count is None):
        return "--shard-index and --shard-count go together"
    if static and args.shards is not None:
        return "use either --shard-index/--shard-count (static) or --shards (leases), not both"
    if static and not 0 <= args.shard_index < args.shard_count:
        return f"--shard-index must be in 0..{args.shard_count - 1}"
    if args.shards is not None and args.shards < 1:
        return "--shards must be at least 1"
    if args.shards is not None and args.lease_duration < 3:
        return "--lease-duration must be at least 3 seconds"
    if args.shards is not None and not args.lease_kubeconfig and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "--shards needs --lease-kubeconfig FILE (or running inside a cluster)"
    return None


def attach_sharding(controller: Controller, args: argparse.Namespace, replica: str) -> LeaseCoordinator | None:
    """Restrict ``controller`` to its shard: static (``--shard-index``) or through Leases (``--shards``)."""
    if args.shard_count is not None:
        controller.owns = StaticShards(args.shard_index, args.shard_count).owns
        controller.shared = True  # the other replicas' operator requests are read from the status branch
        return None
    if args.shards is None:
        return None
    controller.shared = True
    client = api_client_for(
        "leases", kubeconfig=args.lease_kubeconfig, context=args.lease_context, in_cluster=not args.lease_kubeconfig
    )
    api = KubeApi(client, target="leases", timeout=max(1.0, args.lease_duration / 3))

    def acquired(shards: set[int]) -> None:
        rearm(controller.states, shards, args.shards)
        controller.trigger()

    coordinator = LeaseCoordinator(
        api,
        shards=args.shards,
        replica=replica,
        namespace=args.lease_namespace,
        duration=args.lease_duration,
        on_acquire=acquired,
    )
    controller.owns = coordinator.owns
    return coordinator


def run_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return fail(str(exc))
    problem = sharding_error(args)
    if problem:
        return fail(f"reconciler run: {problem}")
    try:
        build_policy(config.api)  # the api section's tokens resolve (the server builds it again when it starts)
    except AuthConfigError as exc:
        return fail(f"{config.path}: {exc}")
    logs.configure(level=args.log_level)
    replica = args.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    set_replica_identity(replica)
    metrics = PrometheusMetrics()
    try:
        controller = build_controller(config, dry_run=args.dry_run, progress=True, metrics=metrics)
    except ReconcilerError as exc:  # the audit journal in stateDir cannot be used
        return fail(str(exc))
    try:
        coordinator = attach_sharding(controller, args, replica)
    except ReconcilerError as exc:
        controller.close()
        return fail(str(exc))
    if coordinator is not None:
        coordinator.start()
    try:
        return run_controller(controller, args.once, serve=None if args.once else http_server(config, metrics))
    finally:
        if coordinator is not None:
            coordinator.stop(release=True)
