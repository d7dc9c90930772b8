"""The roll's decisions as pure functions: which containers go in which wave,
what a version label is, and how a canary splits requests. No I/O.

A wave replaces up to `max_unavailable` old containers: its new containers
start and become ready beside the old ones, then those old ones are drained
and stopped, so the serving capacity never drops below N - K (here it never
drops below N: the old ones leave only once their replacements serve)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class Slot:
    """One container to replace: its id and the (simulated) machine it runs on."""
    id: str
    worker: str


def waves(slots: Sequence[Slot], max_unavailable: Optional[int], per_host: int) -> list[list[Slot]]:
    """The containers to replace, in waves of `max_unavailable` (default: one
    host's containers, `per_host`), host after host, in the order given
    within a host. Raises ValueError for a wave size below 1."""
    size = per_host if max_unavailable is None else max_unavailable
    if size < 1:
        raise ValueError("a wave replaces at least one container (--max-unavailable >= 1)")
    hosts: dict[str, list[Slot]] = {}
    for slot in slots:
        hosts.setdefault(slot.worker, []).append(slot)
    ordered = [slot for group in hosts.values() for slot in group]
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def version_label(model: str, backend: str, batch_max: int, batch_wait_ms: float) -> str:
    """A short label for what a container serves and how ("v" + 8 hex digits):
    the same serving settings always give the same label."""
    key = f"{model}\0{backend}\0{batch_max}\0{batch_wait_ms:g}".encode()
    return "v" + hashlib.sha256(key).hexdigest()[:8]


def canary_size(total: int, percent: float, per_wave: int) -> int:
    """How many new containers a canary starts beside `total` old ones: enough
    for its share of the load (at least one), at most one wave."""
    if not 0 < percent < 100:
        raise ValueError("--canary is a percentage between 0 and 100 (exclusive)")
    wanted = max(1, round(total * percent / 100))
    return max(1, min(wanted, per_wave, total))

