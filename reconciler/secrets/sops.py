"""Decrypt files that the ``sops`` CLI encrypted to age recipients (YAML and JSON), verifying their MAC.

A SOPS file is the user's document with each value to protect replaced by
``ENC[AES256_GCM,data:...,iv:...,tag:...,type:...]`` and a top-level ``sops`` key holding the metadata: the 32-byte
data key wrapped for each age recipient, which keys were encrypted (``encrypted_regex``, ``unencrypted_suffix``...),
``lastmodified`` and the ``mac``. Each value is AES-256-GCM with the data key, its 32-byte IV and, as additional
data, its path (``stringData:password:``); the MAC is the SHA-512 of every value of the document in order (the
plaintext of the encrypted ones), upper-case hex, itself encrypted with ``lastmodified`` as additional data. A
changed value fails its GCM tag; a value moved, added or removed fails the MAC; a wrong identity cannot unwrap the
data key. The crypto is the ``cryptography`` (AES-GCM) and ``pyrage`` (age) libraries'.

:func:`decrypt_document` takes a parsed document and age identities and returns the plaintext document (without the
``sops`` key); :func:`is_encrypted` tells whether a parsed document is a SOPS file. Errors are
:class:`SopsError` (a :class:`PermanentError`: retrying does not help until the file or the key changes); their
messages name the file and the key path, never a value. Called by the engine at apply time, never earlier.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyrage
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reconciler.core.problems import PermanentError

METADATA_KEY = "sops"
_VALUE = re.compile(
    r"^ENC\[AES256_GCM,data:(?P<data>[^,]*),iv:(?P<iv>[^,]+),tag:(?P<tag>[^,]+),type:(?P<type>[a-z]+)\]$"
)
DEFAULT_UNENCRYPTED_SUFFIX = "_unencrypted"


class SopsError(PermanentError):
    """A SOPS file that cannot be decrypted (no identity, wrong identity, tampered, malformed). Names no value."""


@dataclass(frozen=True)
class Rules:
    """Which keys ``sops`` encrypted, from the file's metadata (the same rules the CLI applies on decrypt)."""

    unencrypted_suffix: str = ""
    encrypted_suffix: str = ""
    unencrypted_regex: re.Pattern[str] | None = None
    encrypted_regex: re.Pattern[str] | None = None
    mac_only_encrypted: bool = False

    def encrypted(self, path: Sequence[str]) -> bool:
        encrypted = True
        if self.unencrypted_suffix and any(p.endswith(self.unencrypted_suffix) for p in path):
            encrypted = False
        if self.encrypted_suffix:
            encrypted = any(p.endswith(self.encrypted_suffix) for p in path)
        if self.unencrypted_regex is not None and any(self.unencrypted_regex.search(p) for p in path):
            encrypted = False
        if self.encrypted_regex is not None:
            encrypted = any(self.encrypted_regex.search(p) for p in path)
        return encrypted


def is_encrypted(document: object) -> bool:
    """Whether a parsed document is a SOPS file (a mapping with ``sops`` metadata holding a ``mac``)."""
    meta = document.get(METADATA_KEY) if isinstance(document, Mapping) else None
    return isinstance(meta, Mapping) and "mac" in meta


def _rules(meta: Mapping[str, Any], where: str) -> Rules:
    def regex(key: str) -> re.Pattern[str] | None:
        text = meta.get(key)
        if not text:
            return None
        try:
            return re.compile(str(text))
        except re.error as exc:
            raise SopsError(f"{where}: sops.{key} is not a regular expression this controller reads: {exc}") from exc

    given = [
        k for k in ("unencrypted_suffix", "encrypted_suffix", "unencrypted_regex", "encrypted_regex") if meta.get(k)
    ]
    return Rules(
        unencrypted_suffix=str(meta.get("unencrypted_suffix") or ("" if given else DEFAULT_UNENCRYPTED_SUFFIX)),
        encrypted_suffix=str(meta.get("encrypted_suffix") or ""),
        unencrypted_regex=regex("unencrypted_regex"),
        encrypted_regex=regex("encrypted_regex"),
        mac_only_encrypted=meta.get("mac_only_encrypted") is True,
    )


def data_key(meta: Mapping[str, Any], identities: Sequence[pyrage.x25519.Identity], where: str) -> bytes:
    """The file's 32-byte data key, unwrapped with the first identity that can (age recipients only)."""
    stanzas = meta.get("age")
    if not isinstance(stanzas, list) or not stanzas:
        raise SopsError(f"{where}: no age recipient in the sops metadata (only age-encrypted files are supported)")
    if not identities:
        raise SopsError(f"{where}: encrypted with sops, but no age identity is configured (secrets.ageIdentity)")
    recipients = []
    for stanza in stanzas:
        if not isinstance(stanza, Mapping) or not isinstance(stanza.get("enc"), str):
            raise SopsError(f"{where}: malformed age entry in the sops metadata")
        recipients.append(str(stanza.get("recipient", "?")))
        try:
            key = pyrage.decrypt(stanza["enc"].encode(), list(identities))
        except pyrage.DecryptError:
            continue
        if len(key) != 32:
            raise SopsError(f"{where}: the wrapped data key is {len(key)} bytes, not 32")
        return bytes(key)
    raise SopsError(
        f"{where}: none of the configured age identities can decrypt it (recipients: {', '.join(recipients)})"
    )


def _b64(text: str, what: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SopsError(f"{where}: {what} is not valid base64") from exc


def decrypt_value(value: str, key: bytes, aad: str, where: str) -> tuple[bytes, str]:
    """One ``ENC[...]`` value: its plaintext bytes and its sops type (str, int, float, bool, bytes, comment)."""
    found = _VALUE.match(value)
    if found is None:
        raise SopsError(f"{where}: not a sops AES256_GCM value")
    data, iv, tag = (_b64(found[k], k, where) for k in ("data", "iv", "tag"))
    if not iv:
        raise SopsError(f"{where}: empty IV")
    try:
        return AESGCM(key).decrypt(iv, data + tag, aad.encode()), found["type"]
    except InvalidTag:
        raise SopsError(f"{where}: authentication failed: the value was changed after it was encrypted") from None
    except ValueError as exc:
        raise SopsError(f"{where}: cannot decrypt: {exc}") from exc


def _typed(plain: bytes, kind: str, where: str) -> Any:
    try:
        text = plain.decode()
        if kind == "str":
            return text
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            return text.lower() == "true"
        if kind == "bytes":
            return plain
    except (UnicodeDecodeError, ValueError) as exc:
        raise SopsError(f"{where}: the decrypted value is not a valid {kind}") from exc
    raise SopsError(f"{where}: unknown sops value type {kind!r}")


def mac_bytes(value: Any) -> bytes:
    """A plaintext leaf as sops feeds it to the MAC (Go's formatting of each type)."""
    if isinstance(value, bool):
        return b"True" if value else b"False"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return _go_float(value).encode()
    if isinstance(value, bytes):
        return value
    if value is None:
        return b""
    return str(value).encode()


def _go_float(value: float) -> str:
    """``strconv.FormatFloat(f, 'f', -1, 64)``: the shortest digits that round-trip, never an exponent."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class _Walk:
    """Decrypts a tree in document order, feeding the MAC as sops does."""

    def __init__(self, key: bytes, rules: Rules, where: str) -> None:
        self.key, self.rules, self.where = key, rules, where
        self.mac = hashlib.sha512()

    def value(self, node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, Mapping):
            return {k: self.value(v, (*path, str(k))) for k, v in node.items()}
        if isinstance(node, list):
            return [self.value(v, path) for v in node]  # list items share their parent's path, as in sops
        encrypted = self.rules.encrypted(path)
        if encrypted and isinstance(node, str) and node.startswith("ENC["):
            where = f"{self.where}: {'.'.join(path) or '(root)'}"
            plain, kind = decrypt_value(node, self.key, ":".join(path) + ":", where)
            if kind == "comment":
                return node
            self.mac.update(plain)
            return _typed(plain, kind, where)
        if encrypted and node is not None:
            raise SopsError(f"{self.where}: {'.'.join(path)} should be encrypted but is not (the file was edited)")
        if not self.rules.mac_only_encrypted:
            self.mac.update(mac_bytes(node))
        return node


def decrypt_document(document: Mapping[str, Any], identities: Sequence[pyrage.x25519.Identity], where: str) -> Any:
    """The plaintext of a parsed SOPS document (YAML or JSON), its MAC verified; raises :class:`SopsError`."""
    meta = document.get(METADATA_KEY)
    if not isinstance(meta, Mapping) or not isinstance(meta.get("mac"), str):
        raise SopsError(f"{where}: not a sops file (no sops.mac)")
    lastmodified = meta.get("lastmodified")
    if not isinstance(lastmodified, str):
        raise SopsError(f"{where}: sops.lastmodified is missing or not a string")
    key = data_key(meta, identities, where)
    walk = _Walk(key, _rules(meta, where), where)
    plain = {k: walk.value(v, (str(k),)) for k, v in document.items() if k != METADATA_KEY}
    stored, _kind = decrypt_value(meta["mac"], key, lastmodified, f"{where}: sops.mac")
    computed = walk.mac.hexdigest().upper().encode()
    if not hmac.compare_digest(stored, computed):
        raise SopsError(f"{where}: MAC mismatch: the file was changed after sops encrypted it")
    return plain
