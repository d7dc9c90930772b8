"""Autostop settings: `autostop` (idle time) and `max_lifetime`, as "90s",
"30m", "8h" (or a bare number of seconds), parsed once into seconds; and the
watchdog's command line for a host (the watchdog itself: mlcluster/watchdog.py).
"""
from __future__ import annotations

import datetime
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .errors import MlclusterError

if TYPE_CHECKING:
    from .state import ClusterSpec

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


def summary(autostop: str, max_lifetime: str, started: Optional[float], hourly: Optional[float],
            now: Optional[float] = None) -> Optional[dict]:
    """What `status` shows of a cluster with autostop: its settings, the
    lifetime's deadline (UTC) and the cost so far (`hourly` estimate × the
    time since `started`, epoch seconds; None where unknown)."""
    if not (autostop or max_lifetime):
        return None
    now = time.time() if now is None else now
    lifetime = seconds_or_none(max_lifetime, "max_lifetime")
    deadline = started + lifetime if started and lifetime else None
    return {"autostop": autostop or None, "max_lifetime": max_lifetime or None,
            "deadline": _utc(deadline) if deadline else None,
            "running_s": round(now - started) if started else None,
            "cost_so_far_usd": round(hourly * (now - started) / 3600, 3) if started and hourly is not None else None}


def _utc(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def settings(spec: "ClusterSpec", resources) -> Optional[tuple[Optional[float], Optional[float]]]:
    """(idle seconds, deadline epoch) or None when neither is set. The lifetime
    counts from the cluster's first `up` with autostop (kept in
    `resources.autostop_started`: SSHResources' or, for a local cluster,
    Resources'; saved with the next record)."""
    idle = seconds_or_none(spec.autostop, "autostop")
    lifetime = seconds_or_none(spec.max_lifetime, "max_lifetime")
    if idle is None and lifetime is None:
        return None
    if resources.autostop_started is None:
        resources.autostop_started = time.time()
    started = resources.autostop_started
    return idle, (started + lifetime if lifetime else None)


def describe(record_text: str) -> str:
    """An autostop record as a phrase: "autostop at 2026-12-01 11:40 UTC"."""
    import json
    try:
        note = json.loads(record_text)  # what watchdog.py wrote when it fired
        when = datetime.datetime.fromtimestamp(note["stopped_at"], datetime.timezone.utc)
        return f"{note['reason']} at {when:%Y-%m-%d %H:%M:%S} UTC"
    except (ValueError, KeyError, TypeError):
        return "its watchdog fired"
