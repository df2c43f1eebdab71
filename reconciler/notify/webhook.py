"""A generic webhook sink: each message as a CloudEvents 1.0 event in structured mode, the body signed.

``POST`` with ``Content-Type: application/cloudevents+json`` and ``X-Reconciler-Signature: sha256=<hex>``, the
HMAC-SHA256 of the exact body with the operator's secret (by reference in the config), so the receiver can check
who sent it and that nothing changed. Answers: 2xx delivered; 429 and 5xx retried (429's ``Retry-After`` honoured);
another 4xx given up; a timeout or a refused connection retried. Error texts name the sink, never its URL's query
or the secret. Used by :class:`reconciler.notify.outbox.Outbox`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from reconciler.notify.http import post

SIGNATURE_HEADER = "X-Reconciler-Signature"


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSink:
    def __init__(
        self,
        name: str,
        url: str,
        secret: bytes,
        timeout: float = 10.0,
        source: str = "reconciler",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.name = name
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.source = source
        self.clock = clock

    def envelope(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": self.source,
            "type": f"io.reconciler.{payload.get('kind', 'message')}",
            "time": self.clock().isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": payload,
        }

    def send(self, payload: dict[str, Any]) -> None:
        body = json.dumps(self.envelope(payload), sort_keys=True).encode()
        headers = {"Content-Type": "application/cloudevents+json", SIGNATURE_HEADER: signature(self.secret, body)}
        post(self.url, body, headers, self.timeout, f"webhook {self.name}")
