"""Problems found in user input, and the controller's error tree.

A :class:`Problem` is one finding in the releases repo or the operator config (file, line, message). Loading and
validation collect *every* problem instead of stopping at the first, so a developer fixes a pull request in one
round. The exception classes below are what effect code raises; they decide retry in the engine:

* :class:`PermanentError` - bad input or a refusal that retrying cannot fix (report and stop).
* :class:`TemporaryError` - an outage that may pass (back off for ``delay`` seconds, then retry).

Used by every layer; imports nothing but the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True)
class Problem:
    """One finding, printed as ``path:line: message`` (line omitted when unknown)."""

    path: str
    line: int | None
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        prefix = "" if self.severity is Severity.ERROR else "warning: "
        return f"{where}: {prefix}{self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "line": self.line, "message": self.message, "severity": str(self.severity)}


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """Stable, readable order: by file, then line, then message."""
    return sorted(problems, key=lambda p: (p.path, p.line or 0, p.message))


class ReconcilerError(Exception):
    """Base of the controller's own errors. ``str()`` is safe to show (no secrets, no traceback)."""


class InvalidInput(ReconcilerError):
    """Input that cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sort_problems(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid input")


class PermanentError(ReconcilerError):
    """Retrying will not help until the input changes."""


class TemporaryError(ReconcilerError):
    """May pass by itself; retry after ``delay`` seconds."""

    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay
