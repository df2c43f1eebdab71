"""Secrets the operator's config refers to instead of holding them: ``env:NAME`` or ``file:/path``.

:func:`resolve_secret` turns a reference into the secret (webhook secrets, API tokens, age identities, forge
tokens); its errors name the reference, never a value. Used by :mod:`reconciler.http` and
:mod:`reconciler.secrets.identity`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

MAX_SECRET_FILE = 64 * 1024


class SecretError(ValueError):
    """A secret reference that cannot be resolved. The message names the reference, never a secret value."""


def resolve_secret(value: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The secret a config value stands for; None when unset or empty.

    ``env:NAME`` is the value of environment variable ``NAME``; ``file:/path`` is the content of that file
    (UTF-8, surrounding whitespace stripped, at most 64 KiB: a Kubernetes Secret mounted as a file works as is);
    anything else is the secret itself. Raises :class:`SecretError` when the variable is unset or the file cannot
    be read.
    """
    if not value:
        return None
    if value.startswith("env:"):
        name = value[4:]
        found = (os.environ if environ is None else environ).get(name)
        if not name or found is None:
            raise SecretError(f"environment variable {name!r} is not set")
        return found.strip() or None
    if value.startswith("file:"):
        path = Path(value[5:])
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_SECRET_FILE + 1)
        except OSError as exc:
            raise SecretError(f"cannot read secret file {str(path)!r}: {exc.strerror or type(exc).__name__}") from None
        if len(data) > MAX_SECRET_FILE:
            raise SecretError(f"secret file {str(path)!r} is larger than {MAX_SECRET_FILE} bytes")
        try:
            return data.decode().strip() or None
        except UnicodeDecodeError:
            raise SecretError(f"secret file {str(path)!r} is not UTF-8") from None
    return value
