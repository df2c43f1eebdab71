"""SOPS files written by the real ``sops`` CLI (Flux's test fixtures, see fixtures/README.md) decrypt with their age
keys, and every kind of tampering (a value, the MAC, the wrapped data key, a moved value, an unencrypted field),
the wrong identity or none at all is a clear error that names the file and key path, never a value."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pyrage
import pytest

from reconciler.core.yamlsafe import parse_documents
from reconciler.secrets.identity import IdentityError, load_identities, parse_identities, public_keys
from reconciler.secrets.sops import SopsError, decrypt_document, is_encrypted, mac_bytes

FIXTURES = Path(__file__).parent / "fixtures"
AGE = FIXTURES / "algorithms" / "age.yaml"
GLOBAL = FIXTURES / "global" / "secret.yaml"


def identities(name: str = "age.txt") -> list[pyrage.x25519.Identity]:
    return load_identities(f"file:{FIXTURES / 'keys' / name}")


def parsed(text: str, path: str = "secrets/age.yaml") -> Any:
    (document,) = parse_documents(path, text.encode())
    return document.data


def decrypt(text: str, keys: list[pyrage.x25519.Identity] | None = None) -> Any:
    return decrypt_document(parsed(text), identities() if keys is None else keys, "secrets/age.yaml")


def flip(text: str, marker: str) -> str:
    """``text`` with one byte changed inside the base64 that follows ``marker`` (still valid base64)."""
    start = text.index(marker) + len(marker)
    end = start + 8
    raw = bytearray(base64.b64decode(text[start:end]))
    raw[1] ^= 0x01
    return text[:start] + base64.b64encode(bytes(raw)).decode() + text[end:]


def test_the_sops_cli_fixtures_decrypt_with_their_age_keys() -> None:
    plain = decrypt(AGE.read_text())
    assert plain == {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "age"}, "stringData": {"key": "value"}}
    other = decrypt_document(parsed(GLOBAL.read_text()), identities("age-global.txt"), "global/secret.yaml")
    assert other["metadata"] == {"name": "global-age-secret", "namespace": "default"}
    assert isinstance(other["stringData"]["key"], str) and not other["stringData"]["key"].startswith("ENC[")
    assert "sops" not in plain and is_encrypted(parsed(AGE.read_text())) and not is_encrypted(plain)


def mac_tag(text: str) -> str:
    """The marker just before the MAC's GCM tag."""
    line = next(line for line in text.splitlines() if line.strip().startswith("mac: ENC["))
    return line[: line.index("tag:") + len("tag:")]


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("key: ENC[AES256_GCM,data:", "secrets/age.yaml: stringData.key: authentication failed"),
        ("mac: ENC[AES256_GCM,data:", "secrets/age.yaml: sops.mac: authentication failed"),
        (None, "secrets/age.yaml: sops.mac: authentication failed"),  # the MAC's tag
    ],
)
def test_one_changed_byte_is_refused(marker: str | None, expected: str) -> None:
    text = AGE.read_text()
    changed = flip(text, marker or mac_tag(text))
    assert changed != text
    with pytest.raises(SopsError) as info:
        decrypt(changed)
    assert str(info.value) == f"{expected}: the value was changed after it was encrypted"  # (and no plaintext)


def test_a_changed_byte_in_the_wrapped_data_key_is_refused() -> None:
    text = AGE.read_text()
    lines = text.splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if "BEGIN AGE ENCRYPTED FILE" in line) + 4  # inside the body
    body = lines[index].strip()
    raw = bytearray(base64.b64decode(body))
    raw[10] ^= 0x01
    lines[index] = lines[index].replace(body, base64.b64encode(bytes(raw)).decode())
    with pytest.raises(SopsError, match="none of the configured age identities can decrypt it"):
        decrypt("".join(lines))


def test_the_wrong_identity_or_none_is_a_clear_error() -> None:
    with pytest.raises(SopsError, match=r"none of the configured age identities .* age1l44xcng8dqj32n"):
        decrypt(AGE.read_text(), identities("age-global.txt"))
    with pytest.raises(SopsError, match=r"no age identity is configured \(secrets.ageIdentity\)"):
        decrypt(AGE.read_text(), [])


def test_a_value_moved_or_an_unencrypted_field_changed_fails() -> None:
    text = AGE.read_text()
    with pytest.raises(SopsError, match=r"stringData.password: authentication failed"):
        decrypt(text.replace("  key: ENC[", "  password: ENC["))  # the path is the value's additional data
    with pytest.raises(SopsError, match="MAC mismatch"):
        decrypt(text.replace("name: age", "name: other"))  # not encrypted, but covered by the MAC
    with pytest.raises(SopsError, match=r"stringData.extra should be encrypted but is not"):
        decrypt(text.replace("stringData:\n", "stringData:\n  extra: plain\n"))


def test_malformed_metadata_is_named() -> None:
    text = AGE.read_text()
    with pytest.raises(SopsError, match=r"sops.lastmodified is missing"):
        decrypt(re.sub(r"  lastmodified: .*\n", "", text))
    with pytest.raises(SopsError, match="only age-encrypted files are supported"):
        decrypt(text.replace("  age:\n", "  age_off:\n"))
    with pytest.raises(SopsError, match="not valid base64"):
        decrypt(text.replace("key: ENC[AES256_GCM,data:", "key: ENC[AES256_GCM,data:*"))
    with pytest.raises(SopsError, match="not a sops file"):
        decrypt_document({"kind": "Secret"}, identities(), "x.yaml")


def test_identities_by_reference(tmp_path: Path) -> None:
    key_text = (FIXTURES / "keys" / "age.txt").read_text()
    assert public_keys(load_identities("env:AGE_KEY", {"AGE_KEY": key_text})) == [
        "age1l44xcng8dqj32nlv6d930qvvrny05hglzcv9qpc7kxjc6902ma4qufys29"
    ]
    assert load_identities(None) == [] and load_identities("") == []
    with pytest.raises(IdentityError, match="must be a reference"):
        load_identities(key_text.splitlines()[-1])
    with pytest.raises(IdentityError, match="environment variable 'NOPE' is not set"):
        load_identities("env:NOPE", {})
    bad = tmp_path / "keys.txt"
    bad.write_text("# comment\nAGE-SECRET-KEY-1NOTAKEY\n")
    with pytest.raises(IdentityError, match=rf"{re.escape(str(bad))}:2: not a valid age identity") as info:
        load_identities(f"file:{bad}")
    assert "NOTAKEY" not in str(info.value)
    with pytest.raises(IdentityError, match=":1: not an age identity"):
        parse_identities("hello\n", "inline")
    with pytest.raises(IdentityError, match="holds no age identity"):
        parse_identities("# only a comment\n", "inline")


def test_mac_bytes_follow_go_formatting() -> None:
    assert mac_bytes(True) == b"True" and mac_bytes(False) == b"False"
    assert mac_bytes(3) == b"3" and mac_bytes(-0.5) == b"-0.5" and mac_bytes(3.0) == b"3"
    assert mac_bytes(1e-07) == b"0.0000001" and mac_bytes(1e22) == b"10000000000000000000000"
    assert mac_bytes("é") == "é".encode() and mac_bytes(None) == b""
