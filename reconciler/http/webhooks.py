"""Forge webhooks: authenticate a delivery, then decide whether it should trigger a fetch. Nothing else.

Git stays the only source of desired state (design invariant 3): a valid push to the tracked branch only wakes
the controller, which fetches the branch itself. The payload's content is never trusted; its ``ref`` is read only
to skip pushes to other branches and tags.

Authentication, always with :func:`hmac.compare_digest` over the raw body bytes:

- GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`` with ``webhooks.githubSecret``;
- GitLab: ``X-Gitlab-Token: <token>`` equal to ``webhooks.gitlabToken``;
- Gitea / Forgejo: ``X-Gitea-Signature`` / ``X-Forgejo-Signature: <hex HMAC-SHA256 of the body>`` with
  ``webhooks.giteaSecret``.

A forge without a configured secret is refused (401). Secret values in the config may name where the secret is
instead of holding it (see :func:`resolve_secret`): ``env:NAME`` or ``file:/path``.

Used by :mod:`reconciler.http.server` (``POST /webhook``) and ``reconciler run`` (to register the resolved
secrets for log redaction).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler.observability.metrics import WebhookResult
from reconciler.secrets.references import SecretError, resolve_secret

__all__ = ["SecretError", "resolve_secret"]  # (they lived here first)


class Forge(StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"
    GITEA = "gitea"


CONFIG_KEYS = {Forge.GITHUB: "githubSecret", Forge.GITLAB: "gitlabToken", Forge.GITEA: "giteaSecret"}
# Headers are looked up lower-cased. Gitea also sends GitHub's headers: its own are checked first.
SIGNATURE_HEADERS = (
    (Forge.GITEA, "x-forgejo-signature"),
    (Forge.GITEA, "x-gitea-signature"),
    (Forge.GITLAB, "x-gitlab-token"),
    (Forge.GITHUB, "x-hub-signature-256"),
)
EVENT_HEADERS = {
    Forge.GITHUB: ("x-github-event",),
    Forge.GITLAB: ("x-gitlab-event",),
    Forge.GITEA: ("x-forgejo-event", "x-gitea-event", "x-gogs-event", "x-github-event"),
}
PUSH_EVENTS = {"push", "Push Hook", "Tag Push Hook"}
PING_EVENTS = {"ping"}


@dataclass(frozen=True)
class WebhookSecrets:
    """The resolved secret of each forge (None: that forge is refused) and the problems met resolving them."""

    secrets: Mapping[Forge, str | None]
    problems: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, webhooks: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> WebhookSecrets:
        secrets: dict[Forge, str | None] = {}
        problems: list[str] = []
        for forge, key in CONFIG_KEYS.items():
            raw = webhooks.get(key)
            try:
                secrets[forge] = resolve_secret(raw if isinstance(raw, str) else None, environ)
            except SecretError as exc:
                secrets[forge] = None
                problems.append(f"webhooks.{key}: {exc}; {forge} webhooks are refused")
        return cls(secrets, tuple(problems))

    def values(self) -> list[str]:
        return [s for s in self.secrets.values() if s]


@dataclass(frozen=True)
class Verdict:
    """How a delivery is answered: HTTP status, outcome, a message for the sender, and whether to fetch now."""

    status: int
    result: WebhookResult
    message: str
    forge: Forge | None = None
    event: str | None = None
    trigger: bool = False


def _hmac_hex(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()


def _given(value: str) -> bytes:
    return value.strip().encode("utf-8", "replace")


def _valid(forge: Forge, header: str, value: str, secret: str, body: bytes) -> bool:
    if forge is Forge.GITLAB:
        return hmac.compare_digest(_given(value), secret.encode())
    given = _given(value).lower()
    if header == "x-hub-signature-256":
        if not given.startswith(b"sha256="):
            return False
        given = given[len(b"sha256=") :]
    return hmac.compare_digest(given, _hmac_hex(secret, body))


def signed(headers: Mapping[str, str]) -> bool:
    """Whether the request carries any signature header at all (checked before the body is read)."""
    return any(header in headers for _, header in SIGNATURE_HEADERS)


def authenticate(headers: Mapping[str, str], body: bytes, secrets: WebhookSecrets) -> Forge | Verdict:
    """The forge whose signature verifies, or a 401 verdict. ``headers`` keys are lower-case."""
    reasons: list[str] = []
    for forge, header in SIGNATURE_HEADERS:
        value = headers.get(header)
        if value is None:
            continue
        secret = secrets.secrets.get(forge)
        if not secret:
            reasons.append(f"{forge} webhooks are not enabled (no webhooks.{CONFIG_KEYS[forge]} configured)")
        elif _valid(forge, header, value, secret, body):
            return forge
        else:
            reasons.append(f"invalid {header_title(header)}")
    return Verdict(401, WebhookResult.UNAUTHORIZED, reasons[0]) if reasons else unsigned()


def unsigned() -> Verdict:
    """The answer to a delivery without any signature header."""
    return Verdict(
        401, WebhookResult.UNAUTHORIZED, "missing signature (X-Hub-Signature-256, X-Gitlab-Token, X-Gitea-Signature)"
    )


def header_title(header: str) -> str:
    return "-".join("GitHub" if p == "github" else p.capitalize() for p in header.split("-"))


def parse_payload(body: bytes) -> dict[str, Any] | str:
    """The JSON object of the body, or why it is not one (never raises, whatever the bytes)."""
    try:
        data = json.loads(body)
    except RecursionError:
        return "malformed JSON: nested too deeply"
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers over the digit limit
        return f"malformed JSON: {str(exc)[:200]}"
    if not isinstance(data, dict):
        return f"the payload must be a JSON object, not {type(data).__name__}"
    return data


def decide(forge: Forge, headers: Mapping[str, str], body: bytes, branch: str) -> Verdict:
    """What an authenticated delivery means: ping, a push to the tracked branch (trigger), or ignored."""
    event = next((headers[h] for h in EVENT_HEADERS[forge] if h in headers), None)
    if event is None:
        names = ", ".join(header_title(h) for h in EVENT_HEADERS[forge][:2])
        return Verdict(400, WebhookResult.BAD_REQUEST, f"missing event header ({names})", forge)
    event = event.strip()[:100]
    payload = parse_payload(body)
    if isinstance(payload, str):
        return Verdict(400, WebhookResult.BAD_REQUEST, payload, forge, event)
    if event in PING_EVENTS:
        return Verdict(200, WebhookResult.PING, "pong", forge, event)
    if event not in PUSH_EVENTS:
        return Verdict(200, WebhookResult.IGNORED, f"ignored: {event!r} events do not trigger a fetch", forge, event)
    ref = payload.get("ref")
    if not isinstance(ref, str):
        return Verdict(400, WebhookResult.BAD_REQUEST, "push payload without a string 'ref'", forge, event)
    tracked = f"refs/heads/{branch}"
    if ref != tracked:
        shown = ref if len(ref) <= 200 else ref[:200] + "..."
        return Verdict(200, WebhookResult.IGNORED, f"ignored: {shown!r} is not the tracked {tracked}", forge, event)
    return Verdict(202, WebhookResult.ACCEPTED, f"fetch of {tracked} triggered", forge, event, trigger=True)
