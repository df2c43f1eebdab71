"""Thin, rate-limited REST access to one Kubernetes API server, shared by the kubernetes driver and shard leases.

:class:`KubeApi` sends JSON requests through the official client's ``ApiClient`` (its configuration: TLS, bearer
token or client certificate, proxies) with ``param_serialize`` + ``call_api``, so every call goes through one
place that

* waits for a token of a :class:`RateLimiter` (the Python client has no QPS limiter of its own),
* turns transport failures (refused connections, timeouts, broken TLS sessions) into
  :class:`~reconciler.core.problems.TemporaryError` and HTTP errors into :class:`ApiError` (status, reason, the
  server's message, field-manager conflicts, ``Retry-After``), which :meth:`KubeApi.classify` maps onto the
  controller's error tree: 429 -> temporary with the server's delay; 5xx -> temporary; 401/403/404/409/422 ->
  permanent with the server's message,
* and never lets a bearer token into a message (they are redacted, whatever the server echoes).

Discovery (``apiVersion`` + ``kind`` -> plural resource name and scope) is cached per group-version and refreshed
when a kind is missing (a CRD established since), see :meth:`KubeApi.resource`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3

from reconciler.core.problems import PermanentError, ReconcilerError, TemporaryError

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
_BEARER = re.compile(r"(?i)bearer\s+[^\s\"',;]+")
_CONFLICT_MANAGER = re.compile(r'conflict with "([^"]+)"')
_BAD_NAME = re.compile(r"[/%\\?#\x00-\x1f]")
# a server-side apply that cannot even be typed (a string where a number is expected...): bad input, not an outage
_TYPED_PATCH = "failed to create typed patch object"


class RateLimiter:
    """A token bucket: up to ``burst`` calls at once, ``qps`` calls per second on average (``qps=None``: no limit).

    Callers reserve a token and sleep until it is theirs, so concurrent callers are served in order.
    """

    def __init__(
        self,
        qps: float | None,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.qps = qps if qps and qps > 0 else None
        self.burst = max(1, int(burst))
        self._tokens = float(self.burst)
        self._clock = clock
        self._sleep = sleep
        self._stamp = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, waiting for it when the bucket is empty; returns the seconds waited."""
        if self.qps is None:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.qps)
            self._stamp = now
            self._tokens -= 1.0
            wait = -self._tokens / self.qps if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


@dataclass(frozen=True)
class Resource:
    """Where objects of one kind live: ``/api/v1/...`` or ``/apis/<group>/<version>/...``, namespaced or not."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        return base if name is None else f"{base}/{quote(name, safe='')}"


def safe_name(name: object) -> bool:
    """A name that can go into a URL path as one segment (the server validates the rest)."""
    return isinstance(name, str) and bool(name) and name not in (".", "..") and not _BAD_NAME.search(name)


class NotServed(PermanentError):
    """An object's namespace or kind does not exist (yet) on the server."""


class ApiError(Exception):
    """An HTTP error answer of the API server (internal: the driver turns it into a ReconcilerError)."""

    def __init__(self, status: int, body: Mapping[str, Any], retry_after: float | None = None) -> None:
        self.status = status
        self.body = body
        self.reason = str(body.get("reason") or "")
        self.message = redact(str(body.get("message") or f"HTTP {status}"))
        self.retry_after = retry_after
        super().__init__(f"{status} {self.reason}: {self.message}")

    @property
    def conflicts(self) -> dict[str, list[str]]:
        """Field-manager conflicts of a server-side apply: manager -> fields (empty for other 409s)."""
        found: dict[str, list[str]] = {}
        details = self.body.get("details")
        causes = details.get("causes") if isinstance(details, Mapping) else None
        for cause in causes if isinstance(causes, list) else []:
            if not isinstance(cause, Mapping) or cause.get("reason") != "FieldManagerConflict":
                continue
            match = _CONFLICT_MANAGER.search(str(cause.get("message", "")))
            found.setdefault(match.group(1) if match else "unknown", []).append(str(cause.get("field", "")))
        return found


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without bearer tokens (``Bearer xyz``) and without any of ``secrets``."""
    text = _BEARER.sub("Bearer ***", text)
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, "***")
    return text


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: let the caller's default apply


class KubeApi:
    """JSON requests to one API server (see the module docstring). Thread-safe."""

    def __init__(
        self,
        api_client: Any,
        *,
        target: str,
        qps: float | None = None,
        burst: int = 10,
        timeout: float = 30.0,
    ) -> None:
        self.client = api_client
        self.target = target
        self.limiter = RateLimiter(qps, burst)
        self.timeout = timeout
        self.calls = 0  # requests sent (for benchmarks and tests)
        key = getattr(getattr(api_client, "configuration", None), "api_key", None) or {}
        self._secrets = tuple(str(v).removeprefix("Bearer ").strip() for v in key.values() if v)
        self._discovery: dict[str, dict[str, Resource]] = {}
        self._lock = threading.Lock()

    # -- requests ----------------------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        query: Iterable[tuple[str, str]] = (),
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        """Send one request; the decoded JSON answer. Raises :class:`ApiError` or :class:`TemporaryError`."""
        self.limiter.acquire()
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        with self._lock:
            self.calls += 1
        if content_type == APPLY_PATCH and isinstance(body, dict):
            # sent as it is (the client passes a str or bytes body of a YAML content type unchanged): JSON is YAML,
            # and the C encoder spares the client's walk of the body in Python (sanitize_for_serialization)
            body = _json_bytes(body)
        try:
            verb, url, sent_headers, payload, _ = self.client.param_serialize(
                method, path, query_params=list(query), header_params=headers, body=body, auth_settings=["BearerToken"]
            )
            response = self.client.call_api(
                verb, url, header_params=sent_headers, body=payload, _request_timeout=self.timeout
            )
            raw = response.read()
        except urllib3.exceptions.HTTPError as exc:
            raise TemporaryError(f"kubernetes target {self.target}: API server unreachable ({_cause(exc)})") from None
        except Exception as exc:  # the client wraps TLS failures in ApiException(status=0)
            if getattr(exc, "status", None) == 0:
                raise TemporaryError(f"kubernetes target {self.target}: TLS connection failed") from None
            raise
        status = int(response.status)
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {"message": f"HTTP {status} (not JSON)"}
        if not isinstance(doc, dict):
            doc = {"message": f"HTTP {status} (unexpected answer)"}
        if 200 <= status < 300:
            return doc
        raise ApiError(status, doc, _retry_after(response.headers.get("Retry-After")))

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or ``None`` when it does not exist (404)."""
        try:
            return self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def classify(self, exc: ApiError, what: str) -> ReconcilerError:
        """The controller's error for an API error while doing ``what`` (a short phrase naming the object)."""
        message = redact(f"kubernetes target {self.target}: {what}: {exc.message}", self._secrets)
        if exc.status == 429:
            return TemporaryError(message, delay=exc.retry_after if exc.retry_after is not None else 5.0)
        if exc.status >= 500 and _TYPED_PATCH not in exc.message:
            return TemporaryError(message, delay=exc.retry_after if exc.retry_after is not None else 5.0)
        if exc.status == 401:
            return PermanentError(f"kubernetes target {self.target}: {what}: unauthorized (credentials refused)")
        return PermanentError(message)

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    # -- discovery ---------------------------------------------------------------------------------------------
    def resource(self, api_version: str, kind: str) -> Resource | None:
        """The resource serving ``kind`` of ``api_version``, or ``None`` when the server does not serve it."""
        with self._lock:
            table = self._discovery.get(api_version)
        if table is not None and kind in table:
            return table[kind]
        table = self._discover(api_version)  # first use, or a kind added since (a new CRD)
        return None if table is None else table.get(kind)

    def _discover(self, api_version: str) -> dict[str, Resource] | None:
        if api_version.count("/") > 1 or not all(safe_name(p) for p in api_version.split("/")):
            return None
        path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            doc = self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise self.classify(exc, f"discover {api_version}") from None
        table = {
            str(r["kind"]): Resource(api_version, str(r["kind"]), str(r["name"]), bool(r.get("namespaced")))
            for r in doc.get("resources", [])
            if isinstance(r, dict) and "/" not in str(r.get("name", "/")) and r.get("kind")
        }
        with self._lock:
            self._discovery[api_version] = table
        return table

    def invalidate(self, api_version: str | None = None) -> None:
        with self._lock:
            if api_version is None:
                self._discovery.clear()
            else:
                self._discovery.pop(api_version, None)

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if callable(close):
            close()


def _json_bytes(body: dict[str, Any]) -> dict[str, Any] | bytes:
    """``body`` as JSON bytes; ``body`` itself when it holds values that only the client serializes (dates...)."""
    try:
        return json.dumps(body, separators=(",", ":")).encode()
    except (TypeError, ValueError):
        return body


def _cause(exc: urllib3.exceptions.HTTPError) -> str:
    """A few words on why a request got no answer. urllib3's ``NewConnectionError`` is a ``ConnectTimeoutError``
    whatever the cause, so the socket error under it decides: a refused connection is not a timeout."""
    reason = getattr(exc, "reason", None)
    inner = reason if isinstance(reason, BaseException) else exc
    if isinstance(inner, urllib3.exceptions.NameResolutionError):
        return "host name not resolved"
    if isinstance(inner, urllib3.exceptions.NewConnectionError):
        cause = inner.__cause__ or inner.__context__
        if isinstance(cause, ConnectionRefusedError) or "Connection refused" in str(inner):
            return "connection refused"
        if isinstance(cause, TimeoutError) or "timed out" in str(inner):
            return "timed out"
        return f"cannot connect: {cause or inner}" if isinstance(cause, OSError) else "cannot connect"
    if isinstance(inner, urllib3.exceptions.TimeoutError | TimeoutError):
        return "timed out"
    return type(inner).__name__
