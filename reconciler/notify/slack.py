"""A Slack-style incoming-webhook sink (Slack, Mattermost, Rocket.Chat, Teams' compatible hooks): ``{"text": ...}``.

The URL is the secret (it is the credential of an incoming webhook): given by reference in the config, never
shown; errors name the sink only. Answers are judged as :mod:`reconciler.notify.webhook` judges them.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.notify.http import post


class SlackSink:
    def __init__(self, name: str, url: str, timeout: float = 10.0) -> None:
        self.name = name
        self.url = url
        self.timeout = timeout

    def send(self, payload: dict[str, Any]) -> None:
        body = json.dumps({"text": str(payload.get("text", ""))}).encode()
        post(self.url, body, {"Content-Type": "application/json"}, self.timeout, f"chat {self.name}")
