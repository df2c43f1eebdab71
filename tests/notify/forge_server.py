"""A local forge API for the commit-status tests: a real HTTP server that checks each request against an excerpt of
the forge's published API description (tests/notify/fixtures/forge-api/) and answers as scripted.

Checked per request: the method and path match the operation (base path included; path parameters are single
segments, so a GitLab project path must come URL-encoded), the body is JSON and valid against the operation's body
schema (required fields, enums), the auth header is the one the description's security scheme names, with an
allowed prefix and the right token. A request that breaks a rule is recorded in ``violations`` and answered 422.
Scripted answers: ``(status, headers)`` or ``HANG`` (accept, read, never answer until the server stops).
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema

FIXTURES = Path(__file__).parent / "fixtures" / "forge-api"
HANG = "hang"


@dataclass(frozen=True)
class Operation:
    method: str
    pattern: re.Pattern[str]
    body: dict[str, Any]  # JSON schema, definitions included
    header: str
    prefixes: tuple[str, ...]


def operation(forge: str, prefix: str = "") -> Operation:
    """The create-status operation of ``forge``'s description; ``prefix``: where a self-hosted server mounts the API
    (GitHub Enterprise: /api/v3)."""
    doc = json.loads((FIXTURES / f"{forge}.json").read_text())
    ((template, item),) = doc["paths"].items()
    ((method, op),) = item.items()
    base = prefix + doc.get("basePath", "")
    names: list[str] = []

    def group(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return f"(?P<{match.group(1)}>[^/]+)"

    pattern = re.compile("^" + re.sub(r"\\\{(\w+)\\\}", group, re.escape(base + template)) + "$")
    if "requestBody" in op:  # OpenAPI 3
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        schemes = doc["components"]["securitySchemes"]
    else:  # Swagger 2: the body parameter, $refs into definitions
        (param,) = [p for p in op["parameters"] if p["in"] == "body"]
        schema = dict(param["schema"], definitions=doc.get("definitions", {}))
        schemes = doc["securityDefinitions"]
    (scheme,) = [schemes[name] for requirement in doc["security"] for name in requirement]
    assert scheme["in"] == "header"
    return Operation(method.upper(), pattern, schema, scheme["name"], tuple(scheme.get("x-prefixes", [""])))


class ForgeServer:
    def __init__(self, forge: str, token: str, answers: list[Any] | None = None, prefix: str = "") -> None:
        self.op = operation(forge, prefix)
        self.token = token
        self.answers = list(answers or [])
        self.requests: list[dict[str, Any]] = []  # {"params": path parameters decoded, "body": ..., "headers": ...}
        self.violations: list[str] = []
        self.arrived = threading.Condition()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                server.handle(self)

            def do_PUT(self) -> None:
                server.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def check(self, handler: BaseHTTPRequestHandler, raw: bytes) -> tuple[list[str], dict[str, str], Any]:
        problems: list[str] = []
        path = handler.path.split("?")[0]
        match = self.op.pattern.match(path)
        if handler.command != self.op.method:
            problems.append(f"method {handler.command}, the description says {self.op.method}")
        if match is None:
            problems.append(f"path {path} does not match {self.op.pattern.pattern}")
        params = {k: urllib.parse.unquote(v) for k, v in (match.groupdict() if match else {}).items()}
        auth = handler.headers.get(self.op.header)
        if auth is None or not any(auth == prefix + self.token for prefix in self.op.prefixes):
            problems.append(f"auth header {self.op.header} missing or wrong")
        body: Any = None
        if (handler.headers.get("Content-Type") or "").split(";")[0] != "application/json":
            problems.append("body is not application/json")
        try:
            body = json.loads(raw)
            jsonschema.validate(body, self.op.body)
        except (ValueError, jsonschema.ValidationError) as exc:
            problems.append(f"body: {str(exc).splitlines()[0]}")
        return problems, params, body

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        problems, params, body = self.check(handler, raw)
        with self.arrived:
            self.violations.extend(problems)
            self.requests.append({"params": params, "body": body, "headers": dict(handler.headers)})
            answer = self.answers.pop(0) if self.answers else (201, {})
            self.arrived.notify_all()
        if answer == HANG:
            self.release.wait()
            return
        status, headers = (422, {}) if problems else answer
        payload = b'{"message": "Validation Failed"}' if problems else b"{}"
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.requests) >= count, timeout)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
