"""JSON Schemas of the manifest kinds and of the operator config, and schema errors as readable problems.

The schema files live in ``reconciler/schemas/`` (the repo's top-level ``schemas/`` points there) so editors and
the loader use the same files. :func:`check` validates one document and turns every jsonschema error into a
:class:`Problem` with the line of the offending key: unknown fields are named one by one with a suggestion.
Called by the manifest loader and the config loader. Valid documents are checked by a compiled
validator (fastjsonschema); jsonschema explains the invalid ones.
Pure apart from reading the packaged schema files once.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from reconciler.core.problems import Problem
from reconciler.core.yamlsafe import Document, Path

KIND_FILES = {
    "Application": "application",
    "Release": "release",
    "Stage": "stage",
    "Environment": "environment",
    "EnvironmentSet": "environmentset",
    "FreezeWindow": "freezewindow",
    "Team": "team",
}


@cache
def schema(name: str) -> dict[str, Any]:
    text = resources.files("reconciler.schemas").joinpath(f"{name}.schema.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


@cache
def fast_validator(name: str) -> Any:
    """A compiled validator (fastjsonschema): ~50x faster for the common case of a valid document."""
    return fastjsonschema.compile(schema(name))


def dotted(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "document"


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def _describe_type(expected: Any) -> str:
    names = expected if isinstance(expected, list) else [expected]
    return " or ".join(_TYPE_NAMES.get(str(n), str(n)) for n in names)


def _messages(error: ValidationError, where: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], str]]:
    """(path, message) pairs for one jsonschema error; ``where`` is the error's absolute path."""
    field = dotted(where)
    v, sch, inst = error.validator, error.schema, error.instance
    expected: Any = error.validator_value
    if isinstance(sch, dict) and sch.get("writeOnly"):  # a secret written where its reference belongs: not shown
        return [(where, f"{field}: not valid (the value is not shown): {sch.get('description', error.validator)}")]
    if v == "additionalProperties" and isinstance(inst, dict) and isinstance(sch, dict):
        allowed = sorted(sch.get("properties", {}))
        out = []
        for key in inst:
            if key in allowed:
                continue
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            tip = f"; did you mean {hint[0]!r}?" if hint else (f" (allowed: {', '.join(allowed)})" if allowed else "")
            out.append(((*where, key), f"unknown field {key!r} in {field}{tip}"))
        if out:
            return out
    if v == "required":
        missing = [k for k in expected if isinstance(inst, dict) and k not in inst]
        return [(where, f"{field}: missing required field {k!r}") for k in missing]
    if v == "type":
        return [(where, f"{field}: expected {_describe_type(error.validator_value)}, got {_short(inst)}")]
    if v == "const":
        return [(where, f"{field}: must be {error.validator_value!r}, got {_short(inst)}")]
    if v == "pattern" and isinstance(sch, dict) and sch.get("description"):
        return [(where, f"{field}: {_short(inst)} is not valid: {sch['description']}")]
    if v in ("oneOf", "anyOf") and all(set(s) == {"required"} for s in expected):
        options = " or ".join(repr(s["required"][0]) for s in expected)
        how = "exactly one of" if v == "oneOf" else "at least one of"
        return [(where, f"{field}: needs {how} {options}")]
    if v in ("maxLength", "maximum", "minimum") and not isinstance(inst, dict | list):  # the value shortened
        bound = {"maxLength": "longer than", "maximum": "over the maximum of", "minimum": "under the minimum of"}[v]
        unit = " characters" if v == "maxLength" else ""
        return [(where, f"{field}: {_short(inst)} is {bound} {expected}{unit}")]
    if v == "propertyNames" and error.context:
        return [(where, f"{field}: invalid key: {error.context[0].message}")]
    return [(where, f"{field}: {error.message}")]


def check(name: str, data: Any, doc: Document, prefix: Path = (), path: str | None = None) -> list[Problem]:
    """Validate ``data`` against schema ``name``; lines come from ``doc`` at ``prefix`` + the error path."""
    try:
        fast_validator(name)(data)
        return []
    except fastjsonschema.JsonSchemaException as fast_error:
        first = str(fast_error)
    problems = []
    for error in validator(name).iter_errors(data):
        for where, message in _messages(error, tuple(error.absolute_path)):
            problems.append(Problem(path or doc.path, doc.line((*prefix, *where)), message))
    return problems or [Problem(path or doc.path, doc.line(prefix), first)]
