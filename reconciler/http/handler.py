"""The request handler of :class:`reconciler.http.server.HttpServer`: routing, bounded reads, responses, access logs.

One handler instance serves one connection (HTTP/1.0: one request, then the connection closes). Reads go through
:class:`DeadlineReader`, so headers and body together must arrive before the request's deadline whatever the
client's pace. Responses always carry ``Cache-Control: no-store`` and ``X-Content-Type-Options: nosniff``; JSON and
HTML bodies are passed through the log redaction, so a secret can never leave in a response either.

Only used by :mod:`reconciler.http.server`.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import socket
import time
from enum import StrEnum
from functools import cache
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from reconciler.core.operations import Action
from reconciler.core.plan import Phase
from reconciler.core.problems import ReconcilerError
from reconciler.http import listing
from reconciler.http.auth import Denied, Need
from reconciler.http.ports import App
from reconciler.http.webhooks import Verdict, authenticate, decide, signed, unsigned
from reconciler.observability import logging as logs
from reconciler.observability.metrics import WebhookResult

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
CHUNK = 64 * 1024
LINGER_SECONDS = 2.0  # after refusing a body: how long unread bytes are drained so the client sees the answer
KNOWN_PHASES = frozenset({str(p) for p in Phase} | {"Unknown"})
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class Route(StrEnum):
    INDEX = "index"
    STAGES_PAGE = "stages-page"
    ENVIRONMENT_PAGE = "environment-page"
    API_ENVIRONMENTS = "api-environments"
    API_ENVIRONMENT = "api-environment"
    METRICS = "metrics"
    HEALTHZ = "healthz"
    READYZ = "readyz"
    WEBHOOK = "webhook"
    OPENAPI = "openapi"
    API_ACTION = "api-action"  # POST /api/v1/environments/<name>/<sync|refresh|suspend|resume>


EXACT = {
    "/": Route.INDEX,
    "/stages": Route.STAGES_PAGE,
    "/api/v1/environments": Route.API_ENVIRONMENTS,
    "/metrics": Route.METRICS,
    "/healthz": Route.HEALTHZ,
    "/readyz": Route.READYZ,
    "/webhook": Route.WEBHOOK,
    "/api/v1/openapi.json": Route.OPENAPI,
}
PREFIXES = (("/api/v1/environments/", Route.API_ENVIRONMENT), ("/environments/", Route.ENVIRONMENT_PAGE))
QUIET = {Route.HEALTHZ, Route.READYZ, Route.METRICS}  # probes and scrapes: access-logged at debug level
READ = {
    Route.INDEX,
    Route.STAGES_PAGE,
    Route.ENVIRONMENT_PAGE,
    Route.API_ENVIRONMENTS,
    Route.API_ENVIRONMENT,
}  # need Need.READ
MAX_ACTION_BODY = 16 * 1024


def resolve(path: str) -> tuple[Route, str | None] | None:
    """The route of a decoded path and its ``<name>`` part, or None (404)."""
    path = path.rstrip("/") or "/"
    if path in EXACT:
        return EXACT[path], None
    rest = path.removeprefix("/api/v1/environments/")
    if rest != path and rest.count("/") == 1 and rest.split("/")[1] in set(Action) and rest.split("/")[0]:
        return Route.API_ACTION, rest
    for prefix, route in PREFIXES:
        if path.startswith(prefix) and "/" not in path[len(prefix) :]:
            return route, path[len(prefix) :]
    return None


class TooLarge(Exception):
    pass


class BadBody(Exception):
    pass


class DeadlineReader(io.RawIOBase):
    """A socket reader that gives up at an absolute deadline, not only after one idle period."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not received in time")
        self.sock.settimeout(remaining)
        return self.sock.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    server_version = "reconciler"
    sys_version = ""
    protocol_version = "HTTP/1.0"
    default_request_version = "HTTP/1.0"  # even an unparseable request gets a status line and our headers

    def version_string(self) -> str:
        return self.server_version

    # --- connection set-up and logging ------------------------------------------------------------------------
    @property
    def app(self) -> App:
        app: App = self.server.app  # type: ignore[attr-defined]
        return app

    def setup(self) -> None:
        self.connection = self.request
        self.connection.settimeout(self.app.request_timeout)
        super().setup()
        self.deadline = time.monotonic() + self.app.request_timeout
        self.rfile = io.BufferedReader(DeadlineReader(self.connection, self.deadline), CHUNK)
        self.started = time.perf_counter()
        self.status: int | None = None
        self.sent = 0
        self.route: Route | None = None
        self.fields: dict[str, Any] = {}

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError) as exc:
            self.app.log.debug("http connection dropped", client=self.client_address[0], error=type(exc).__name__)

    def handle_one_request(self) -> None:
        super().handle_one_request()
        if self.status is None:
            return  # the client connected and went away, or timed out before a request line
        method = getattr(self, "command", None) or "-"
        path = urlsplit(getattr(self, "path", "") or "").path[:200]  # never the query: it may carry tokens
        log = self.app.log.debug if self.route in QUIET and self.status < 400 else self.app.log.info
        elapsed = round((time.perf_counter() - self.started) * 1000, 2)
        client = self.client_address[0]
        log("http request", method=method, path=path, status=self.status, bytes=self.sent, client=client,
            duration_ms=elapsed, **self.fields)  # fmt: skip

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        self.status = int(code) if str(code).isdigit() else self.status

    def log_message(self, format: str, *args: Any) -> None:
        self.app.log.warning("http protocol error", detail=(format % args)[:300], client=self.client_address[0])

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        self.close_connection = True
        text = message or self.responses.get(code, ("error",))[0]
        self.respond(code, json.dumps({"error": text}).encode(), JSON)

    # --- responses ------------------------------------------------------------------------------------------------
    def respond(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.connection.settimeout(self.app.request_timeout)  # writing gets its own bound
        headers = dict(headers or {})
        request_headers = getattr(self, "headers", None)  # absent when the request line itself was malformed
        accepts = "gzip" in (request_headers.get("Accept-Encoding", "") if request_headers else "").lower()
        if accepts and len(body) > 4096 and "Content-Encoding" not in headers and content_type != "application/gzip":
            body = gzip.compress(body, compresslevel=5)  # the 235 x 60 dashboard: ~830 KB -> ~15 KB
            headers["Content-Encoding"] = "gzip"
            headers["Vary"] = "Accept-Encoding"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if status != 304:  # (a 304's length would be the representation's, which it does not carry)
            self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and status >= 200 and status not in (204, 304):
            self.wfile.write(body)
            self.sent = len(body)

    def respond_json(self, status: int, value: Any, headers: dict[str, str] | None = None,
                     conditional: bool = False) -> None:  # fmt: skip
        """``conditional``: the body gets an ETag, and a client whose ``If-None-Match`` has it gets 304, no body."""
        body = logs.redact_text(json.dumps(value, ensure_ascii=False, default=str)).encode()
        if conditional:
            tag = listing.etag(body)
            headers = {**(headers or {}), "ETag": tag}
            if listing.fresh(self.headers.get("If-None-Match"), tag):
                self.respond(304, b"", JSON, headers)
                return
        self.respond(status, body, JSON, headers)

    def respond_text(self, status: int, text: str) -> None:
        self.respond(status, text.encode(), TEXT)

    # --- dispatch -------------------------------------------------------------------------------------------------
    def dispatch(self) -> None:
        parts = urlsplit(self.path)
        found = resolve(unquote(parts.path))
        if found is None:
            self.respond_json(404, {"error": "not found"})
            return
        self.route, name = found
        allowed = ("POST",) if self.route in (Route.WEBHOOK, Route.API_ACTION) else ("GET", "HEAD")
        if self.command not in allowed:
            self.close_connection = True
            self.respond_json(405, {"error": f"method {self.command} not allowed"}, {"Allow": ", ".join(allowed)})
            return
        try:
            query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True, max_num_fields=50).items()}
        except ValueError:
            self.respond_json(400, {"error": "too many query parameters"})
            return
        try:
            self.serve(self.route, name, query)
        except Exception:
            self.app.log.exception("http request failed", path=parts.path[:200])
            if self.status is None:
                self.respond_json(500, {"error": "internal error"})

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = dispatch

    def serve(self, route: Route, name: str | None, query: dict[str, str]) -> None:
        app = self.app
        if route in READ:
            caller = app.policy.decide(Need.READ, self.lower_headers(), self.client_address[0],
                                       name if route is Route.API_ENVIRONMENT else None)  # fmt: skip
            if isinstance(caller, Denied):
                self.deny(caller)
                return
        if route is Route.API_ACTION:
            assert name is not None
            self.act(*name.split("/"))
        elif route is Route.OPENAPI:
            self.respond_json(200, openapi())
        elif route is Route.HEALTHZ:
            self.respond_text(200, "ok\n")
        elif route is Route.READYZ:
            reasons = app.ready()
            self.respond_text(503 if reasons else 200, f"not ready: {'; '.join(reasons)}\n" if reasons else "ok\n")
        elif route is Route.METRICS:
            rendered = app.render_metrics(self.headers.get("Accept-Encoding", ""))
            if rendered is None:
                self.respond_json(404, {"error": "metrics are not enabled"})
            else:
                self.respond(200, rendered[0], rendered[1]["Content-Type"], rendered[1])
        elif route is Route.API_ENVIRONMENTS:
            self.api_environments(query)
        elif route is Route.API_ENVIRONMENT:
            assert name is not None
            self.fields["environment"] = name[:200]
            env = next((e for e in app.snapshot()["environments"] if e["name"] == name), None)
            if env is None:
                self.respond_json(404, {"error": f"environment {name[:200]!r} not found"})
            else:
                self.respond_json(200, env, conditional=True)
        elif route in (Route.INDEX, Route.STAGES_PAGE, Route.ENVIRONMENT_PAGE):
            self.dashboard(route, name, query)
        else:
            self.webhook()

    def api_environments(self, query: dict[str, str]) -> None:
        snapshot = self.app.snapshot()
        try:
            page = listing.select(snapshot["environments"], query, KNOWN_PHASES)
        except listing.BadQuery as exc:
            self.respond_json(400, {"error": str(exc)})
            return
        top = {k: v for k, v in snapshot.items() if k != "environments"}
        value = {**top, "count": page.count, "continue": page.next, "environments": page.environments}
        self.respond_json(200, value, conditional=True)

    def dashboard(self, route: Route, name: str | None, query: dict[str, str]) -> None:
        module = self.app.dashboard
        if module is None:
            self.respond_text(503, "the dashboard is not available in this build; see /api/v1/environments\n")
            return
        snapshot = self.app.snapshot()
        if route is Route.INDEX:
            page: bytes | None = module.render_index(snapshot, query)
        elif route is Route.STAGES_PAGE:
            page = module.render_stages(snapshot, query)
        else:
            self.fields["environment"] = (name or "")[:200]
            page = module.render_environment(snapshot, name)
        if page is None:
            self.respond_text(404, "environment not found\n")
            return
        self.respond(200, logs.redact_text(page.decode("utf-8", "replace")).encode(), HTML)

    # --- operator requests ---------------------------------------------------------------------------------------
    def lower_headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def deny(self, denied: Denied) -> None:
        self.fields["denied"] = denied.reason
        extra = {"WWW-Authenticate": 'Bearer realm="reconciler"'} if denied.status == 401 else None
        self.respond_json(denied.status, {"error": denied.reason}, extra)

    def act(self, environment: str, verb: str) -> None:
        """POST /api/v1/environments/<env>/<verb> with a JSON body ``{"application": ..., "reason": ...}``."""
        self.fields.update(environment=environment[:200], action=verb)
        headers = self.lower_headers()
        env = next((e for e in self.app.snapshot()["environments"] if e["name"] == environment), None)
        caller = self.app.policy.decide(Need.ACT, headers, self.client_address[0], environment,
                                        env["stage"] if env else None)  # fmt: skip
        if isinstance(caller, Denied):
            self.close_connection = True
            self.deny(caller)
            return
        problem = _csrf(headers)
        if problem:
            self.close_connection = True
            self.respond_json(403, {"error": problem})
            return
        body = self.action_body(headers)
        if isinstance(body, str):
            self.respond_json(400, {"error": body})
            return
        self.fields["caller"] = caller.identity
        try:
            op = self.app.controller.request(Action(verb), environment, body.get("application"), caller.identity,
                                             body.get("reason") or "")  # fmt: skip
        except ValueError as exc:
            self.respond_json(404, {"error": str(exc)})
            return
        except ReconcilerError as exc:
            self.respond_json(503, {"error": f"not recorded, nothing done: {exc}"})
            return
        self.respond_json(202, {"accepted": op.as_dict()})

    def action_body(self, headers: dict[str, str]) -> dict[str, Any] | str:
        text = headers.get("content-length", "0").strip()
        if not text.isdigit() or len(text) > 9:
            return "invalid Content-Length"
        if int(text) > MAX_ACTION_BODY:
            self.close_connection = True
            return f"body over the limit of {MAX_ACTION_BODY} bytes"
        try:
            raw = self.read_exact(int(text)) if int(text) else b"{}"
            body = json.loads(raw)
        except (ValueError, BadBody, TooLarge, TimeoutError):
            self.close_connection = True
            return "the body must be a JSON object"
        if not isinstance(body, dict) or set(body) - {"application", "reason"}:
            return 'the body must be a JSON object with only "application" and "reason"'
        for key in ("application", "reason"):
            if body.get(key) is not None and not isinstance(body[key], str):
                return f"{key} must be a string"
        if len(body.get("reason") or "") > 500:
            return "reason is over 500 characters"
        return body

    # --- webhooks -------------------------------------------------------------------------------------------------
    def webhook(self) -> None:
        app = self.app
        headers = {k.lower(): v for k, v in self.headers.items()}
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length: int | None = None
        if not chunked and "content-length" in headers:
            text = headers["content-length"].strip()
            if not text.isdigit() or len(text) > 18:
                self.finish_webhook(Verdict(400, WebhookResult.BAD_REQUEST, "invalid Content-Length"), unread=True)
                return
            length = int(text)
        unread = chunked or bool(length) or (length is None and self.request_version == "HTTP/1.0")
        if length is not None and length > app.max_body:
            message = f"body of {length} bytes is over the limit of {app.max_body} bytes"
            self.finish_webhook(Verdict(413, WebhookResult.TOO_LARGE, message), unread=True)
            return
        if not signed(headers):
            self.finish_webhook(unsigned(), unread=unread)
            return
        try:
            body = self.read_body(length, chunked)
        except TooLarge:
            message = f"body over the limit of {app.max_body} bytes"
            self.finish_webhook(Verdict(413, WebhookResult.TOO_LARGE, message), unread=True)
            return
        except BadBody as exc:
            self.finish_webhook(Verdict(400, WebhookResult.BAD_REQUEST, str(exc)), unread=True)
            return
        except TimeoutError:
            self.finish_webhook(Verdict(408, WebhookResult.TIMEOUT, "request body not received in time"), unread=False)
            return
        found = authenticate(headers, body, app.secrets)
        verdict = found if isinstance(found, Verdict) else decide(found, headers, body, app.branch)
        if verdict.trigger:
            app.controller.trigger()
        self.finish_webhook(verdict, unread=False)

    def read_body(self, length: int | None, chunked: bool) -> bytes:
        limit = self.app.max_body
        if chunked:
            return self.read_chunked(limit)
        if length is None:  # HTTP/1.0 without a length: the body ends when the client closes (bounded)
            return self.read_exact(limit + 1, until_eof=True)
        return self.read_exact(length)

    def read_exact(self, count: int, until_eof: bool = False) -> bytes:
        parts: list[bytes] = []
        remaining = count
        while remaining > 0:
            data = self.rfile.read1(min(CHUNK, remaining))
            if not data:
                if until_eof:
                    break
                raise BadBody("the body ended before Content-Length bytes")
            parts.append(data)
            remaining -= len(data)
        body = b"".join(parts)
        if until_eof and len(body) > self.app.max_body:
            raise TooLarge
        return body

    def read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1026)
            size_text = line.split(b";", 1)[0].strip()
            if not line.endswith(b"\n") or not _HEX.fullmatch(size_text):
                raise BadBody("malformed chunked encoding")
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if total > limit:
                raise TooLarge
            parts.append(self.read_exact(size))
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise BadBody("malformed chunked encoding")
        for _ in range(32):  # trailers, up to the blank line
            if self.rfile.readline(1026) in (b"\r\n", b"\n", b""):
                return b"".join(parts)
        raise BadBody("too many trailer lines")

    def finish_webhook(self, verdict: Verdict, unread: bool) -> None:
        app = self.app
        if app.metrics is not None:
            app.metrics.webhook(verdict.result)
        self.fields.update(result=str(verdict.result))
        if verdict.forge:
            self.fields.update(forge=str(verdict.forge), webhook_event=verdict.event)
        level = app.log.info if verdict.status < 400 else app.log.warning
        level("webhook", status=verdict.status, message=verdict.message, **self.fields)
        status = {202: "accepted", 200: "pong" if verdict.result is WebhookResult.PING else "ignored"}
        if unread:
            self.close_connection = True
        self.respond_json(
            verdict.status,
            {"status": status.get(verdict.status, "error"), "message": verdict.message},
            {"Connection": "close"} if unread else None,
        )
        if unread:
            self.linger()

    def linger(self) -> None:
        """Drain (and drop) what the client still sends for a while, so it reads our answer instead of a reset."""
        end = time.monotonic() + LINGER_SECONDS
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while (remaining := end - time.monotonic()) > 0:
                self.connection.settimeout(remaining)
                if not self.connection.recv(CHUNK):
                    break
        except OSError:
            pass


def _csrf(headers: dict[str, str]) -> str:
    """Cross-site request forgery: a browser sends a JSON body to another origin only after a preflight we never
    answer, and says where the page came from; refuse anything else."""
    if "application/json" not in headers.get("content-type", "").lower() and headers.get("content-length", "0") != "0":
        return "Content-Type must be application/json"
    origin = headers.get("origin")
    if origin and urlsplit(origin).netloc != headers.get("host", ""):
        return f"cross-origin request from {origin[:100]} refused"
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return "cross-site request refused"
    return ""


@cache
def openapi() -> dict[str, Any]:
    """The API's OpenAPI description (``reconciler/http/openapi.yaml``, shipped in the package)."""
    text = resources.files("reconciler.http").joinpath("openapi.yaml").read_text("utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded
