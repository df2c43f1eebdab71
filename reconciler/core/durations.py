"""Durations written as ``2d``, ``24h``, ``90m``, ``1h30m``, ``45s``, bounded by :data:`MAX_DURATION` (10 years).

Used by the manifest loader (stage ``soak``, freeze ``duration``), the controller-config loader (intervals,
timeouts, backoff) and the drivers (target timeouts). A duration that matches the form but is longer than ten years
is refused here, with a message naming the maximum, so no caller ever hands ``timedelta`` or a timer a value it
cannot hold.
"""

from __future__ import annotations

import re

# ASCII digits only (``\d`` would accept other scripts' digits, which the JSON schemas refuse)
_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?", re.ASCII)
_DIGITS = 12  # a count of more digits than this is over ten years in any unit (and int() of it is never tried)

MAX_DURATION = 3653 * 86400  # ten years (leap days included): no soak, freeze, interval or timeout is longer
MAX_DURATION_TEXT = "3653d (10 years)"


class DurationError(ValueError):
    pass


def parse_duration(text: str) -> int:
    """Seconds in ``text``; raises :class:`DurationError` with a readable message (also when over 10 years)."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if not text or match is None or not any(match.groups()):
        raise DurationError(f"invalid duration {_shown(text)}: use forms like 30s, 90m, 24h, 2d or 1h30m")
    over = DurationError(f"duration {_shown(text)} is over the maximum of {MAX_DURATION_TEXT}")
    if any(len(g) > _DIGITS for g in match.groups() if g):
        raise over
    d, h, m, s = (int(g or 0) for g in match.groups())
    seconds = ((d * 24 + h) * 60 + m) * 60 + s
    if seconds > MAX_DURATION:
        raise over
    return seconds


def _shown(text: object) -> str:
    shown = repr(text)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds}s")
    return "".join(parts)
