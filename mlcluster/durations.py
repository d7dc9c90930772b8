"""Durations as people write them: "90s", "30m", "8h", "1d" (or a bare number
of seconds), parsed once into seconds (autostop, max_lifetime)."""
from __future__ import annotations

import re
from typing import Optional

from .errors import MlclusterError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(value: str, what: str) -> float:
    """Seconds in "90s", "30m", "8h", "1d" or "45" (seconds); > 0."""
    match = _DURATION.match(str(value))
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"] if match else 0.0
    if seconds <= 0:
        raise MlclusterError(f"{what} {value!r} is not a duration", 'write it like "90s", "30m" or "8h"')
    return seconds


def seconds_or_none(value: str, what: str) -> Optional[float]:
    """"" (not set) is None; anything else must parse."""
    return parse_duration(value, what) if value else None
