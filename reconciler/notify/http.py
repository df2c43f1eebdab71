"""One HTTP POST for the sinks that speak HTTP (webhook, chat, forge commit statuses), and how its answer is judged.

2xx: delivered. 429, 5xx, and a 403 with ``Retry-After`` (GitHub's secondary rate limit): retried, after
``Retry-After`` when given. Another 4xx: given up. A timeout or no connection: retried. Error texts name the sink
(``who``), never the URL (a chat URL is a credential) or a header (tokens).
"""

from __future__ import annotations

import urllib.error
import urllib.request

from reconciler.notify.outbox import DeliveryError


def post(url: str, body: bytes, headers: dict[str, str], timeout: float, who: str) -> None:
    """POST ``body``; :class:`DeliveryError` naming ``who`` (never the URL) unless the answer is 2xx."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read(65536)
    except urllib.error.HTTPError as exc:
        retry_after = seconds(exc.headers.get("Retry-After")) if exc.headers else None
        # 429 and 5xx may pass; so may a 403 that says when to come back (GitHub's secondary rate limit)
        retry = exc.code == 429 or exc.code >= 500 or (exc.code == 403 and retry_after is not None)
        raise DeliveryError(f"{who}: HTTP {exc.code}", retry, retry_after) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        text = "timed out" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else "no connection"
        raise DeliveryError(f"{who}: no answer ({text})", True) from None


def seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
