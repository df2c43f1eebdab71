"""Write SOPS files as the ``sops`` CLI does (age recipients, AES256_GCM values, the MAC), for tests and examples.

The real ``sops`` is not installed here; the decryptor (:mod:`reconciler.secrets.sops`) is checked against files
the real CLI wrote (``tests/secrets/fixtures``), and this writer against the decryptor. Used by the tests that need
encrypted files with known plaintext and by ``python -m tests.support.sops_encrypt`` (regenerates the example
repo's encrypted files for the demo's age identity, ``examples/demo-age-identity.txt``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyrage
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reconciler.secrets.sops import Rules, mac_bytes

LASTMODIFIED = "2026-12-03T12:00:00Z"


def _enc(key: bytes, plain: bytes, aad: str, kind: str) -> str:
    iv = os.urandom(32)
    sealed = AESGCM(key).encrypt(iv, plain, aad.encode())
    data, tag = sealed[:-16], sealed[-16:]
    b64 = base64.b64encode
    return f"ENC[AES256_GCM,data:{b64(data).decode()},iv:{b64(iv).decode()},tag:{b64(tag).decode()},type:{kind}]"


def _kind(value: Any) -> str:
    return "bool" if isinstance(value, bool) else "int" if isinstance(value, int) else (
        "float" if isinstance(value, float) else "str")  # fmt: skip


class _Walk:
    def __init__(self, key: bytes, rules: Rules) -> None:
        self.key, self.rules, self.mac = key, rules, hashlib.sha512()

    def value(self, node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, Mapping):
            return {k: self.value(v, (*path, str(k))) for k, v in node.items()}
        if isinstance(node, list):
            return [self.value(v, path) for v in node]
        if self.rules.encrypted(path) and node is not None:
            plain = mac_bytes(node)
            self.mac.update(plain)
            return _enc(self.key, plain, ":".join(path) + ":", _kind(node))
        self.mac.update(mac_bytes(node))
        return node


def encrypt_document(document: Mapping[str, Any], recipients: list[str], encrypted_regex: str) -> dict[str, Any]:
    """``document`` as ``sops --encrypt --age R --encrypted-regex X`` writes it."""
    import re

    key = os.urandom(32)
    walk = _Walk(key, Rules(encrypted_regex=re.compile(encrypted_regex)))
    out = {k: walk.value(v, (str(k),)) for k, v in document.items()}
    stanzas = [{"recipient": r, "enc": pyrage.encrypt(key, [pyrage.x25519.Recipient.from_str(r)], armored=True)
                .decode()} for r in recipients]  # fmt: skip
    out["sops"] = {
        "kms": [], "gcp_kms": [], "azure_kv": [], "hc_vault": [], "age": stanzas, "lastmodified": LASTMODIFIED,
        "mac": _enc(key, walk.mac.hexdigest().upper().encode(), LASTMODIFIED, "str"), "pgp": [],
        "encrypted_regex": encrypted_regex, "version": "3.9.0",
    }  # fmt: skip
    return out


def encrypt_yaml(text: str, recipients: list[str], encrypted_regex: str = "^(data|stringData)$") -> str:
    return yaml.safe_dump(encrypt_document(yaml.safe_load(text), recipients, encrypted_regex), sort_keys=False)


def main(argv: list[str]) -> int:
    """``python -m tests.support.sops_encrypt RECIPIENT PLAIN.yaml OUT.yaml [REGEX]``: encrypt one file."""
    recipient, source, target = argv[:3]
    regex = argv[3] if len(argv) > 3 else "^(data|stringData)$"
    Path(target).write_text(encrypt_yaml(Path(source).read_text(), [recipient], regex))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
