"""A Slack-style incoming-webhook sink (Slack, Mattermost, Rocket.Chat, Teams' compatible hooks): ``{"text": ...}``.

The URL is the secret (it is the credential of an incoming webhook): given by reference in the config, never
shown; errors name the sink only. Answers are judged as :mod:`reconciler.notify.webhook` judges them.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from reconciler.notify.outbox import DeliveryError
from reconciler.notify.webhook import seconds


class SlackSink:
    def __init__(self, name: str, url: str, timeout: float = 10.0) -> None:
        self.name = name
        self.url = url
        self.timeout = timeout

    def send(self, payload: dict[str, Any]) -> None:
        body = json.dumps({"text": str(payload.get("text", ""))}).encode()
        request = urllib.request.Request(self.url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                answer.read(65536)
        except urllib.error.HTTPError as exc:
            retry_after = seconds(exc.headers.get("Retry-After")) if exc.headers else None
            raise DeliveryError(f"chat {self.name}: HTTP {exc.code}", exc.code == 429 or exc.code >= 500,
                                retry_after) from None  # fmt: skip
        except (urllib.error.URLError, TimeoutError, OSError):
            raise DeliveryError(f"chat {self.name}: no answer", True) from None
