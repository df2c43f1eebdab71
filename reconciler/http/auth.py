"""Who may read and who may act: bearer tokens by reference, or a trusted reverse proxy's identity headers.

Reading (dashboard, GET API) and acting (sync, refresh, suspend, resume) are separate permissions. A token from
the operator's config (``api.tokens``: a name, a reference ``env:NAME`` / ``file:/path``, a role ``viewer`` or
``operator``, optionally environment globs and stages) is compared in constant time and never logged; the caller
is then ``token:<name>``. A request from an address in ``api.trustedProxies`` may instead carry oauth2-proxy's
``X-Forwarded-User`` / ``X-Forwarded-Groups`` (roles from ``api.proxyRoles``); from any other address those headers
are refused, not ignored. ``api.auth: none`` (the demo, on loopback) lets anyone act, as ``anonymous``.

:func:`build_policy` resolves the config once (errors name the reference, never a value); :meth:`Policy.decide`
answers a request: a :class:`Caller` or a :class:`Denied` (401: who are you; 403: not allowed). Used by
:mod:`reconciler.http.handler`.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler.secrets.references import SecretError, resolve_secret


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"


class Need(StrEnum):
    READ = "read"
    ACT = "act"


@dataclass(frozen=True)
class Token:
    name: str
    secret: bytes
    role: Role
    environments: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()

    def covers(self, environment: str | None, stage: str | None) -> bool:
        if environment is None:
            return not self.environments and not self.stages
        if self.environments and not any(fnmatch.fnmatchcase(environment, g) for g in self.environments):
            return False
        return not self.stages or stage in self.stages


@dataclass(frozen=True)
class Caller:
    identity: str  # token:<name>, proxy:<user>, anonymous


@dataclass(frozen=True)
class Denied:
    status: int  # 401 or 403
    reason: str


class AuthConfigError(ValueError):
    """The ``api`` section cannot be used; names the token, never its value."""


@dataclass(frozen=True)
class Policy:
    open_actions: bool = False
    read_requires_token: bool = False
    tokens: tuple[Token, ...] = ()
    proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    proxy_roles: Mapping[str, Role] | None = None

    def decide(self, need: Need, headers: Mapping[str, str], peer: str, environment: str | None = None,
               stage: str | None = None) -> Caller | Denied:  # fmt: skip
        """Whether the request (lower-case ``headers``, from address ``peer``) may ``need`` on ``environment``."""
        proxied = "x-forwarded-user" in headers or "x-forwarded-groups" in headers
        if proxied and not self._trusted(peer):
            return Denied(403, "identity headers from an address that is not a trusted proxy")
        if proxied:
            return self._proxy(need, headers)
        auth = headers.get("authorization", "")
        if auth:
            return self._token(need, auth, environment, stage)
        if need is Need.READ and not self.read_requires_token:
            return Caller("anonymous")
        if need is Need.ACT and self.open_actions:
            return Caller("anonymous")
        return Denied(401, "a bearer token is required (Authorization: Bearer ...)")

    def _trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in net for net in self.proxies)

    def _token(self, need: Need, auth: str, environment: str | None, stage: str | None) -> Caller | Denied:
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return Denied(401, "the Authorization header must be 'Bearer <token>'")
        offered = given.strip().encode()
        found = None
        for token in self.tokens:  # every token compared, in constant time: no early exit on a match
            if hmac.compare_digest(token.secret, offered):
                found = token
        if found is None:
            return Denied(401, "unknown token")
        if need is Need.ACT and found.role is not Role.OPERATOR:
            return Denied(403, f"token {found.name!r} is a viewer token: acting needs an operator token")
        if not found.covers(environment, stage) and (need is Need.ACT or environment is not None):
            return Denied(403, f"token {found.name!r} does not cover {environment or 'every environment'}")
        return Caller(f"token:{found.name}")

    def _proxy(self, need: Need, headers: Mapping[str, str]) -> Caller | Denied:
        user = headers.get("x-forwarded-user", "").strip()
        if not user:
            return Denied(401, "X-Forwarded-User is empty")
        groups = [g.strip() for g in headers.get("x-forwarded-groups", "").split(",") if g.strip()]
        roles = {(self.proxy_roles or {}).get(g) for g in groups}
        if need is Need.ACT and Role.OPERATOR not in roles:
            return Denied(403, f"{user[:100]} is not in an operator group")
        if need is Need.READ and not roles & {Role.VIEWER, Role.OPERATOR} and self.read_requires_token:
            return Denied(403, f"{user[:100]} is not in a viewer group")
        return Caller(f"proxy:{user[:100]}")


def build_policy(api: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Policy:
    """The policy of a config's ``api`` section; raises :class:`AuthConfigError` naming what cannot be used."""
    tokens: list[Token] = []
    for raw in api.get("tokens", ()):
        try:
            secret = resolve_secret(raw["token"], environ)
        except SecretError as exc:
            raise AuthConfigError(f"api.tokens {raw['name']!r}: {exc}") from exc
        if not secret or len(secret) < 16:
            raise AuthConfigError(f"api.tokens {raw['name']!r}: the token must have at least 16 characters")
        tokens.append(Token(raw["name"], secret.encode(), Role(raw["role"]), tuple(raw.get("environments", ())),
                            tuple(raw.get("stages", ()))))  # fmt: skip
    proxies = []
    for text in api.get("trustedProxies", ()):
        try:
            proxies.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise AuthConfigError(f"api.trustedProxies: {text!r} is not an address or network") from exc
    roles = {g: Role(r) for g, r in (api.get("proxyRoles") or {}).items()}
    reading = bool(api.get("readRequiresToken"))
    return Policy(open_actions=api.get("auth", "token") == "none", read_requires_token=reading,
                  tokens=tuple(tokens), proxies=tuple(proxies), proxy_roles=roles)  # fmt: skip
