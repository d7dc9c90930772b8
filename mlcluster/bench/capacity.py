"""Capacity at an SLO: which open-loop rate to try next, as a pure function of
the rates tried so far and whether each met every objective.

A coarse sweep first (start, then × `factor` while every step holds; ÷
`factor` while even the first fails), then bisection between the highest rate
that held and the lowest that did not, until they are within `precision` of
each other. The capacity is the highest rate that held below the lowest that
did not (a rate that held above one that failed is noise, not capacity).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass
class SearchPolicy:
    start_rps: float = 10.0
    factor: float = 2.0
    precision: float = 0.05   # stop when (lowest failing - highest holding) / highest holding is within this
    max_steps: int = 16
    min_rps: float = 0.5
    max_rps: float = 20000.0


@dataclass(frozen=True)
class Probe:
    """One step of the search: the rate offered and whether every objective held."""
    rate: float
    held: bool


def _bounds(probes: Sequence[Probe]) -> tuple[Optional[float], Optional[float]]:
    failed = [p.rate for p in probes if not p.held]
    high = min(failed) if failed else None
    held = [p.rate for p in probes if p.held and (high is None or p.rate < high)]
    return (max(held) if held else None), high


def next_rate(probes: Sequence[Probe], policy: SearchPolicy) -> Optional[float]:
    """The next rate to try, or None when the search is over."""
    if not probes:
        return policy.start_rps
    if len(probes) >= policy.max_steps:
        return None
    low, high = _bounds(probes)
    if high is None:                         # everything held so far: sweep up
        rate = low * policy.factor
        return rate if rate <= policy.max_rps else None
    if low is None:                          # even the lowest tried failed: sweep down
        rate = high / policy.factor
        return rate if rate >= policy.min_rps else None
    if (high - low) / low <= policy.precision:
        return None
    return _round((low + high) / 2)


def capacity(probes: Sequence[Probe]) -> Optional[float]:
    """The highest rate that held below the lowest that failed (None: none held)."""
    return _bounds(probes)[0]


def per_million(hourly_usd: Optional[float], rate_rps: Optional[float]) -> Optional[float]:
    """What a million requests cost at `rate_rps` on a cluster costing `hourly_usd`."""
    if hourly_usd is None or not rate_rps:
        return None
    return hourly_usd / (rate_rps * 3600.0) * 1e6


def _round(rate: float) -> float:
    """Three significant figures: a rate a person can read and type again."""
    return float(f"{rate:.3g}")
