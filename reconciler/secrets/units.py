"""SOPS files in a desired unit, decrypted at the last moment: just before a driver applies the unit (or shows it).

Templates that ``sops`` encrypted stay encrypted through loading, validation, ``plan``, rendering and the unit's
fingerprint (so status, drift and audit only ever see ciphertext). :class:`Decryptor` turns a
:class:`~reconciler.core.desired.DesiredUnit` into the one a driver writes: every SOPS file (a YAML document with
``sops`` metadata) decrypted with the operator's age identities, its MAC verified, serialized as YAML without the
metadata; the unit keeps its fingerprint. It also returns the plaintext values, so that the caller can mask them
in any text that leaves the apply (:func:`redact`: an error message from a driver or a target). A tampered file,
a wrong or missing identity is a :class:`~reconciler.secrets.sops.SopsError` naming the file, never a value.

Called by the engine's executor (apply) and the controller's ``diff``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pyrage
import yaml

from reconciler.core.contentdiff import Content, secret_digest
from reconciler.core.desired import DesiredComponent, DesiredUnit
from reconciler.core.yamlsafe import YamlFloat, YamlInt, parse_file
from reconciler.secrets.sops import METADATA_KEY, SopsError, decrypt_document, is_encrypted

MIN_SECRET = 4  # shorter plaintext values are not masked in messages (they would mask ordinary words)
_MARK = b"ENC[AES256_GCM,"


class Decryptor:
    """Decrypts the SOPS files of units with the operator's age identities (``[]``: none configured)."""

    def __init__(self, identities: Sequence[pyrage.x25519.Identity]) -> None:
        self.identities = list(identities)
        # one cycle's decryptions by the digest of the encrypted file: a stage's environments share one file, which
        # is decrypted and verified once (forget() at the end of each cycle: plaintext is not kept longer)
        self._memo: dict[bytes, tuple[bytes, tuple[str, ...]]] = {}
        self.decryptions = 0  # files decrypted (tests, benches)

    def forget(self) -> None:
        """Drop what this cycle decrypted (the controller calls it when a cycle ends)."""
        self._memo = {}

    def unit(self, unit: DesiredUnit) -> tuple[DesiredUnit, tuple[str, ...]]:
        """``unit`` with its SOPS files decrypted, and the plaintext values found (for :func:`redact`)."""
        if not any(_MARK in data for c in unit.components for data in c.files.values()):
            return unit, ()
        secrets: list[str] = []
        components = tuple(self._component(unit, c, secrets) for c in unit.components)
        return replace(unit, components=components), tuple(sorted(set(secrets), key=len, reverse=True))

    def _component(self, unit: DesiredUnit, component: DesiredComponent, secrets: list[str]) -> DesiredComponent:
        files = dict(component.files)
        decrypted: set[str] = set()
        for path, data in component.files.items():
            if _MARK not in data:
                continue
            key = hashlib.sha256(data).digest()
            found = self._memo.get(key)
            if found is None:
                found = self._memo[key] = self._decrypt(f"{unit.application}/{component.name}/{path}", data)
            files[path] = found[0]
            secrets.extend(found[1])
            decrypted.add(path)
        if not decrypted:
            return component
        # the template fill no longer describes the bytes; script agents get the decrypted text (as_json)
        return replace(component, files=files, filled={}, decrypted=frozenset(decrypted))

    def _decrypt(self, where: str, data: bytes) -> tuple[bytes, tuple[str, ...]]:
        """One SOPS file decrypted (its MAC verified): the YAML without the metadata, and its plaintext values."""
        docs, problems = parse_file(where, data)
        if problems:
            raise SopsError(f"{problems[0]}")
        if len(docs) != 1 or not is_encrypted(docs[0].data):
            raise SopsError(f"{where}: holds ENC[...] values but is not one sops document")
        plain = _plain(decrypt_document(docs[0].data, self.identities, where))
        self.decryptions += 1
        return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True).encode(), tuple(_leaves(plain, docs[0].data))


def _plain(node: Any) -> Any:
    """The parsed tree with the YAML parser's own scalar types turned into plain ones (for ``yaml.safe_dump``)."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items() if k != METADATA_KEY}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, bool):
        return node
    if isinstance(node, YamlInt):
        return int(node)
    if isinstance(node, YamlFloat):
        return float(node)
    if isinstance(node, bytes):
        return node.decode("utf-8", "replace")
    return node


def _leaves(plain: Any, encrypted: Any) -> list[str]:
    """The plaintext of every value that was encrypted (``encrypted`` holds ``ENC[...]`` where ``plain`` holds it)."""
    if isinstance(plain, Mapping) and isinstance(encrypted, Mapping):
        return [s for k, v in plain.items() for s in _leaves(v, encrypted.get(k))]
    if isinstance(plain, list) and isinstance(encrypted, list):
        return [s for p, e in zip(plain, encrypted, strict=False) for s in _leaves(p, e)]
    if isinstance(encrypted, str) and encrypted.startswith("ENC[") and plain is not None:
        text = str(plain)
        return [text] if len(text) >= MIN_SECRET else []
    return []


def masked(content: Content, secrets: Sequence[str]) -> Content:
    """A file or object of ``diff`` with every decrypted value shown as its digest (a change stays visible)."""
    if not secrets:
        return content

    def mask(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, secret_digest(secret))
        return text

    return Content(content.name, None if content.live is None else mask(content.live), mask(content.desired))


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every decrypted value replaced by ``<secret>`` (longest first)."""
    for secret in secrets:
        text = text.replace(secret, "<secret>")
    return text
