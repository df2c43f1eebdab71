"""Non-executing ``${name}`` substitution, used for EnvironmentSet templates and component templates.

Nothing from the repo is ever evaluated: a placeholder is a dotted name looked up in a mapping, ``$${`` writes a
literal ``${``, and a string that is exactly one placeholder keeps the looked-up value's type. Called by
:mod:`reconciler.core.expand` and :mod:`reconciler.core.render`. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.core.yamlsafe import YamlFloat, YamlInt

PLACEHOLDER = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*)\}")
WHOLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*)\}")


class MissingKey(KeyError):
    """A placeholder names nothing; ``key`` is the dotted name."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def lookup_in(values: Mapping[str, Any]) -> Callable[[str], Any]:
    """A lookup for dotted names (``env.labels.region``) in nested mappings."""

    def lookup(key: str) -> Any:
        current: Any = values
        for part in key.split("."):
            if not isinstance(current, Mapping) or part not in current:
                raise MissingKey(key)
            current = current[part]
        if isinstance(current, Mapping | list):
            raise MissingKey(key)  # a placeholder must name a scalar
        return current

    return lookup


def text_of(value: Any) -> str:
    """A scalar's text inside a longer string (``true``/``false``, a number as written)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value.text if isinstance(value, YamlInt | YamlFloat) else str(value)


def substitute_string(text: str, lookup: Callable[[str], Any]) -> Any:
    """Substitute placeholders in one string; exactly ``${x}`` returns x's value with its own type."""
    if "$" not in text:
        return text
    whole = WHOLE.fullmatch(text)
    if whole:
        return lookup(whole.group(1))

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        return text_of(lookup(match.group(1)))

    return PLACEHOLDER.sub(replace, text)


def substitute_tree(value: Any, lookup: Callable[[str], Any]) -> Any:
    """Substitute in every string value (not keys) of a nested structure."""
    if isinstance(value, str):
        return substitute_string(value, lookup)
    if isinstance(value, dict):
        return {k: substitute_tree(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_tree(v, lookup) for v in value]
    return value


def placeholders(text: str) -> list[str]:
    """The dotted names a string refers to (escapes excluded)."""
    return [m.group(1) for m in PLACEHOLDER.finditer(text) if m.group(1)]
