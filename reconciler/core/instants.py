"""Points in time written by users on the command line (``history --since/--until``, ``plan --now``).

:func:`parse_instant` reads an ISO 8601 date (``2026-11-01``, midnight UTC) or date-time (``2026-11-01T08:00``,
with ``Z`` or an offset; none means UTC) into an aware :class:`datetime`, and refuses anything else (``foo``,
``2026-13-45``, ``2026-02-30``) with :class:`InstantError`, so a filter can never silently match nothing. The audit
trail's own times go through :func:`read_instant`, which returns ``None`` for what it cannot read. Called by the
CLI's argument parser and by ``reconciler history``. Pure.
"""

from __future__ import annotations

from datetime import UTC, datetime

EXAMPLE = "e.g. 2026-11-01, 2026-11-01T08:00:00Z or 2026-11-01T09:00:00+01:00"


class InstantError(ValueError):
    """Text that is not an ISO 8601 date or date-time; the message quotes it and shows the accepted forms."""


def parse_instant(text: str) -> datetime:
    """The aware instant ``text`` names (a date alone is its midnight UTC; no offset means UTC)."""
    try:
        when = datetime.fromisoformat(text.strip())  # a date alone is its midnight
    except ValueError as exc:
        raise InstantError(f"{text!r} is not an ISO 8601 date or time ({EXAMPLE})") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def read_instant(value: object) -> datetime | None:
    """:func:`parse_instant` for recorded times: ``None`` for a missing or unreadable one."""
    if not isinstance(value, str):
        return None
    try:
        return parse_instant(value)
    except InstantError:
        return None
