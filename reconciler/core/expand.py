"""EnvironmentSet expansion: generator (list and/or matrix) x template -> Environment documents.

Deterministic: list items in order, crossed with the matrix in key order then value order. Each result is a
plain Environment document (``metadata`` + ``spec``) that the loader validates against the Environment schema
like a hand-written one, with errors pointing at the set's template. Called by :mod:`reconciler.core.loader`.
Pure.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.core.substitute import MissingKey, lookup_in, substitute_tree


@dataclass(frozen=True)
class Generated:
    params: Mapping[str, Any]
    metadata: dict[str, Any]
    spec: dict[str, Any]


class ExpansionError(ValueError):
    def __init__(self, message: str, where: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.where = where


def parameter_sets(generator: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every parameter set of a generator, in a stable order."""
    items: list[dict[str, Any]] = list(generator.get("list") or [{}])
    matrix: Mapping[str, list[Any]] = generator.get("matrix") or {}
    keys = list(matrix)
    for item in items:
        for combo in itertools.product(*(matrix[k] for k in keys)):
            params = dict(item)
            params.update(zip(keys, combo, strict=True))
            yield params


def _find_missing(template: Any, key: str, where: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Path of the first string in ``template`` that mentions ``${key}`` (for the error's line)."""
    if isinstance(template, str):
        return where if "${" + key + "}" in template else ()
    if isinstance(template, dict):
        items: Any = template.items()
    elif isinstance(template, list):
        items = enumerate(template)
    else:
        return ()
    for k, v in items:
        found = _find_missing(v, key, (*where, k))
        if found:
            return found
    return ()


def expand(spec: Mapping[str, Any], limit: int) -> Iterator[Generated]:
    """Expand a validated EnvironmentSet ``spec``. Raises :class:`ExpansionError` with a path inside ``spec``."""
    template = spec["template"]
    for count, params in enumerate(parameter_sets(spec["generator"]), start=1):
        if count > limit:
            raise ExpansionError(f"expands to more than {limit} environments", ("generator",))
        try:
            metadata = substitute_tree(template["metadata"], lookup_in(params))
            body = substitute_tree(template["spec"], lookup_in(params))
        except MissingKey as exc:
            where = _find_missing(template, exc.key, ("template",)) or ("template",)
            known = ", ".join(sorted(params)) or "none"
            raise ExpansionError(f"unknown placeholder ${{{exc.key}}} (parameters: {known})", where) from None
        yield Generated(params=params, metadata=metadata, spec=body)
