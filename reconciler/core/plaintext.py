"""Refuse Kubernetes Secrets with plaintext values in the releases repo: they belong in SOPS-encrypted files.

A template (or manifest) document of ``kind: Secret`` whose ``data`` / ``stringData`` holds any value that is not
``ENC[...]`` (a value ``sops`` encrypted) is a problem naming the file and line, so a password committed in clear
fails ``validate`` (and the pull request) before anything reads it. Documents that do not parse as YAML (templates
with placeholders in odd places) are left to rendering. Pure; called by :mod:`reconciler.core.loader`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from reconciler.core.problems import Problem
from reconciler.core.yamlsafe import YamlError, parse_documents

ENCRYPTED_PREFIX = "ENC[AES256_GCM,"
SECRET_FIELDS = ("data", "stringData")


def plaintext_secrets(path: str, data: bytes) -> list[Problem]:
    """A problem for each Secret document of ``path`` with a plaintext value (none when the file has no Secret)."""
    if b"Secret" not in data:  # the common case: no parse
        return []
    try:
        documents = parse_documents(path, data)
    except YamlError:
        return []
    problems: list[Problem] = []
    for doc in documents:
        body = doc.data
        if not isinstance(body, Mapping) or body.get("kind") != "Secret":
            continue
        for field in SECRET_FIELDS:
            values = body.get(field)
            if not isinstance(values, Mapping):
                continue
            for key, value in values.items():
                if not (isinstance(value, str) and value.startswith(ENCRYPTED_PREFIX)):
                    problems.append(Problem(path, doc.line((field, key)),
                                            f"Secret {field}.{key} is in plain text: encrypt the file with sops "
                                            "(age recipients; see docs/secrets.md)"))  # fmt: skip
    return problems


_CHECKED: dict[tuple[str, str], list[Problem]] = {}  # (path, content digest) -> problems: a load reads no template
_MOST = 65536  # it has seen, and the cache never grows past this many files


def plaintext_secrets_cached(path: str, digest: str, read: Callable[[], bytes]) -> list[Problem]:
    """:func:`plaintext_secrets` of a file known by its content digest: read only when not seen before."""
    key = (path, digest)
    found = _CHECKED.get(key)
    if found is None:
        if len(_CHECKED) >= _MOST:
            _CHECKED.clear()
        found = _CHECKED[key] = plaintext_secrets(path, read())
    return list(found)
