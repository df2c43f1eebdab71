"""What the HTTP layer reads of the objects it serves, declared as protocols.

:class:`ControllerView` is what :class:`reconciler.http.server.HttpServer` reads of the controller (a snapshot,
readiness, a trigger), so the HTTP package does not import the engine. :class:`App` is what a request handler
(:mod:`reconciler.http.handler`) reads of the server that runs it; the server declares it, so the handler does not
import the server (which imports the handler). Used by the server and the handler only.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from reconciler.core.config import ControllerConfig
from reconciler.core.operations import Action
from reconciler.http.auth import Policy
from reconciler.http.webhooks import WebhookSecrets
from reconciler.observability.metrics import PrometheusMetrics


class ControllerView(Protocol):
    """The controller as the HTTP server sees it (:class:`reconciler.engine.controller.Controller`)."""

    config: ControllerConfig
    fetched_once: threading.Event  # set once the source has been fetched
    loop_running: bool  # the controller loop runs (for ``/readyz``)
    source_error: str | None  # the last fetch's error (None: it succeeded)

    @property
    def source_failures(self) -> int:
        """How many fetches failed in a row (0: the last one succeeded)."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """Phases, revisions and recent audit of every environment (the API and dashboard read only this)."""
        ...

    def trigger(self) -> None:
        """Start a cycle soon (a webhook push); never blocks."""
        ...

    def request(self, action: Action, environment: str, application: str | None, by: str, reason: str = "") -> Any:
        """An operator's request, recorded and audited first; raises ValueError for an unknown environment or
        application, :class:`ReconcilerError` when it cannot be recorded (then nothing is done)."""
        ...


class App(Protocol):
    """What a request handler reads of the server that runs it."""

    controller: ControllerView
    branch: str  # the tracked branch: webhooks for other branches are ignored
    max_body: int
    request_timeout: float
    secrets: WebhookSecrets
    policy: Policy  # who may read and act
    metrics: PrometheusMetrics | None
    dashboard: Any | None  # the dashboard module, None when it could not be loaded
    log: Any

    def snapshot(self) -> dict[str, Any]: ...

    def ready(self) -> list[str]:
        """Why the controller is not ready (empty: ready)."""
        ...

    def render_metrics(self, accept_encoding: str) -> tuple[bytes, dict[str, str]] | None: ...
