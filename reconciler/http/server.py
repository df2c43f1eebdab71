"""The controller's HTTP server: dashboard, JSON API, Prometheus metrics, health probes and forge webhooks.

Routes (anything else is 404; a known path with another method is 405 with ``Allow``):

- ``GET /`` and ``GET /environments/<name>``: the dashboard (:mod:`reconciler.http.dashboard`);
- ``GET /api/v1/environments`` (filters ``stage``, ``phase``, ``application``) and ``/api/v1/environments/<name>``;
- ``GET /metrics``: Prometheus text format (gzip when the scraper accepts it);
- ``GET /healthz``: 200 while the process serves; ``GET /readyz``: 200 once the source was fetched and the
  controller loop runs, and while the source has not failed ``UNREADY_AFTER_FAILURES`` fetches in a row, else 503
  with the reasons;
- ``POST /webhook``: see :mod:`reconciler.http.webhooks`.

Every request runs in its own daemon thread and only reads :meth:`Controller.snapshot` or calls
:meth:`Controller.trigger`, so no request ever blocks reconciliation. Requests are bounded: the whole request
(headers and body) must arrive within ``request_timeout`` seconds (a slowloris client is cut off, not only an idle
one), bodies are read in chunks and never past ``max_body``, and at most ``max_connections`` are served at once.
Access logs go through structlog; secrets are redacted from every JSON and HTML response as well.

Started by ``reconciler run`` and ``reconciler demo`` (:mod:`reconciler.commands.run`) on ``config.listen``.
"""

from __future__ import annotations

import importlib
import socket
import threading
from collections.abc import Mapping
from http.server import ThreadingHTTPServer
from typing import Any

from reconciler.http.auth import build_policy
from reconciler.http.handler import Handler
from reconciler.http.ports import App, ControllerView
from reconciler.http.webhooks import WebhookSecrets
from reconciler.observability import logging as logs
from reconciler.observability.metrics import PrometheusMetrics

DEFAULT_MAX_BODY = 1024 * 1024
DASHBOARD_MODULE = "reconciler.http.dashboard"

UNREADY_AFTER_FAILURES = 3  # consecutive failed fetches after which /readyz says 503


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port). Raises ValueError on anything else."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"invalid listen address {listen!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"invalid listen address {listen!r}: write an IPv6 address as [ADDR]:PORT")
    return host or "0.0.0.0", int(port_text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128
    app: HttpServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (a DNS lookup at start); the address is enough here
        super(ThreadingHTTPServer, self).server_bind()  # socketserver.TCPServer.server_bind
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.app.slots.acquire(blocking=False):  # too many connections: refuse at once, hold no thread
            try:
                request.settimeout(1.0)
                request.sendall(
                    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nRetry-After: 1\r\n"
                    b"Content-Length: 17\r\nConnection: close\r\n\r\ntoo many requests"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.app.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.app.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.app.log.exception("http handler crashed", client=str(client_address[0]))


class _Server6(_Server):
    address_family = socket.AF_INET6


class HttpServer(App):
    """Serves the controller over HTTP in daemon threads; ``start()`` binds (port 0: any free port)."""

    def __init__(
        self,
        controller: ControllerView,
        listen: str,
        *,
        webhooks: Mapping[str, Any] | None = None,
        metrics: PrometheusMetrics | None = None,
        max_body: int | None = None,
        request_timeout: float = 10.0,
        max_connections: int = 64,
        branch: str | None = None,
        api: Mapping[str, Any] | None = None,
    ) -> None:
        webhooks = webhooks or {}
        self.policy = build_policy(controller.config.api if api is None else api)  # AuthConfigError: named
        for token in self.policy.tokens:
            logs.register_secret(token.secret.decode())
        configured = webhooks.get("maxBodyBytes")
        self.controller = controller
        self.listen = listen
        self.metrics = metrics
        self.max_body = max_body or (configured if isinstance(configured, int) else DEFAULT_MAX_BODY)
        self.request_timeout = request_timeout
        self.branch = branch or controller.config.branch
        self.secrets = WebhookSecrets.from_config(webhooks)
        for secret in self.secrets.values():
            logs.register_secret(secret)
        self.slots = threading.BoundedSemaphore(max_connections)
        self.log = logs.get_logger(component="http")
        self.dashboard = _load_dashboard(self.log)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        host, port = parse_listen(self.listen)
        cls = _Server6 if ":" in host else _Server
        cls.app = self
        server = cls((host, port), Handler, bind_and_activate=False)
        server.app = self
        try:
            server.server_bind()
            server.server_activate()
        except OSError:
            server.server_close()
            raise
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.name = "http-server"
        self._thread.start()
        for problem in self.secrets.problems:
            self.log.error("webhook secret unavailable", problem=problem)
        bound = (server.server_name, server.server_port)
        self.log.info("http server listening", url=self.url)
        return bound

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return self._server.server_name, self._server.server_port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def shutdown(self) -> None:
        """Stop accepting requests and close the socket (in-flight requests finish on their own threads)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.log.info("http server stopped")

    # --- what handlers read ---------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The controller's snapshot; retried when a concurrent cycle mutated what it was copying."""
        for attempt in range(3):
            try:
                return self.controller.snapshot()
            except RuntimeError:  # "changed size during iteration": a cycle is updating the same structures
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def ready(self) -> list[str]:
        """Why the controller is not ready (empty: ready)."""
        reasons = []
        if not self.controller.loop_running:
            reasons.append("controller loop not running")
        if not self.controller.fetched_once.is_set():
            reasons.append("source not fetched yet")
        failures = self.controller.source_failures
        if failures >= UNREADY_AFTER_FAILURES:  # serving the last good revision, but blind to new commits
            reasons.append(f"source failing ({failures} fetches in a row): {self.controller.source_error}")
        return reasons

    def render_metrics(self, accept_encoding: str) -> tuple[bytes, dict[str, str]] | None:
        if self.metrics is None:
            return None
        compressed = "gzip" in accept_encoding.lower()
        headers = {"Content-Type": self.metrics.content_type}
        if compressed:
            headers["Content-Encoding"] = "gzip"
        return self.metrics.render(compressed), headers


def _load_dashboard(log: Any) -> Any | None:
    """The dashboard module, or None when it is missing or broken (the API, metrics and webhooks work without it)."""
    try:
        return importlib.import_module(DASHBOARD_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != DASHBOARD_MODULE:
            log.exception("dashboard unavailable", module=DASHBOARD_MODULE)
        else:
            log.warning("dashboard unavailable", module=DASHBOARD_MODULE)
    except Exception:  # a broken dashboard must not take the API, metrics and webhooks down
        log.exception("dashboard unavailable", module=DASHBOARD_MODULE)
    return None
