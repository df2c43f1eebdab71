"""The operator's age identities, from the config by reference (``file:/path/keys.txt`` or ``env:NAME``).

The text is what ``age-keygen`` writes: comment lines (``# public key: age1...``) and one ``AGE-SECRET-KEY-1...``
line per identity. :func:`load_identities` parses it with ``pyrage``; :func:`public_keys` gives the recipients
they decrypt for (for messages and ``validate``). Errors are :class:`IdentityError` naming the reference and the
line, never a key. Used by the commands that build the controller and by the engine's decryption at apply time.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyrage

from reconciler.core.problems import PermanentError
from reconciler.secrets.references import SecretError, resolve_secret

SECRET_KEY_PREFIX = "AGE-SECRET-KEY-1"


class IdentityError(PermanentError):
    """Age identities that cannot be read; the message names the reference and line, never the key."""


def parse_identities(text: str, where: str) -> list[pyrage.x25519.Identity]:
    """Every ``AGE-SECRET-KEY-1...`` line of ``text`` (comments and blank lines skipped)."""
    found: list[pyrage.x25519.Identity] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.upper().startswith(SECRET_KEY_PREFIX):
            raise IdentityError(f"{where}:{number}: not an age identity (expected a line AGE-SECRET-KEY-1...)")
        try:
            found.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise IdentityError(f"{where}:{number}: not a valid age identity") from None
    if not found:
        raise IdentityError(f"{where}: holds no age identity")
    return found


def load_identities(reference: str | None, environ: Mapping[str, str] | None = None) -> list[pyrage.x25519.Identity]:
    """The identities a config reference stands for; ``[]`` when none is configured."""
    if not reference:
        return []
    if not reference.startswith(("file:", "env:")):
        raise IdentityError("secrets.ageIdentity must be a reference (file:/path or env:NAME), not the key itself")
    try:
        text = resolve_secret(reference, environ)
    except SecretError as exc:
        raise IdentityError(f"secrets.ageIdentity: {exc}") from exc
    return parse_identities(text or "", reference)


def public_keys(identities: list[pyrage.x25519.Identity]) -> list[str]:
    """The age recipients (``age1...``) these identities decrypt for."""
    return [str(identity.to_public()) for identity in identities]
