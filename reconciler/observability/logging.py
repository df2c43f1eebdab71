"""Structured logging (structlog): JSON lines when stderr is not a terminal, readable console output otherwise.

Every event may carry ``environment``, ``application`` and ``revision``. A redaction processor replaces every
registered secret (webhook secrets, credentials found in URLs) and any ``user:password@`` in URLs before an event
is rendered, so secrets never reach the log. Configured once by the ``run``/``demo`` commands.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRETS: set[str] = set()
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*)(?::[^/@\s]*)?@")


def register_secret(secret: str | None) -> None:
    """Never log ``secret`` (ignored when shorter than 4 characters, which would redact ordinary words)."""
    if secret and len(secret) >= 4:
        _SECRETS.add(secret)


def redact_text(text: str) -> str:
    if "://" in text:  # what the pattern needs; looking for it first is ~100x faster on a page without URLs
        text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{m.group('user') or ''}:***@", text)
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact(value)
    return event_dict


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of the write (it may be replaced after configuring)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(stream: TextIO | None = None, level: str = "info", json: bool | None = None) -> None:
    out: Any = stream or _CurrentStderr()
    if json is None:
        json = not out.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger().bind(**context)
