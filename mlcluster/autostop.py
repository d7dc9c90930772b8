"""Autostop settings: `autostop` (idle time) and `max_lifetime`, as "90s",
"30m", "8h" (or a bare number of seconds), parsed once into seconds; and the
watchdog's command line for a host (the watchdog itself: mlcluster/watchdog.py).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from .errors import MlclusterError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
WATCHDOG_SOURCE = Path(__file__).with_name("watchdog.py")


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


def watchdog_command(python: str, script: str, status_url: str, record: str, idle_s: Optional[float],
                     deadline: Optional[float], stop: list[str], interval_s: float = 10.0) -> list[str]:
    """The watchdog's argv: it runs `stop` once the cluster was idle for
    `idle_s` or the wall clock passed `deadline` (epoch seconds)."""
    return [python, "-I", script, "--status-url", status_url, "--record", record,
            "--idle-s", str(idle_s or 0), "--deadline", str(deadline or 0), "--interval-s", str(interval_s),
            "--", *stop]
