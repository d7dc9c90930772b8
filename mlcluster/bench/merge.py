"""Several load hosts, one result: split the load between them, put every
host's records on the controller's clock, and merge them (pure functions).

Clocks. Each host times its records with its own monotonic clock, as seconds
from its own origin; hosts' clocks neither agree nor need to. Around the
start command the controller notes its own monotonic time just before sending
`go` and just after the host's answer, and the host answers with its
monotonic time on reading `go`: that instant is, on the controller's clock,
within half the round trip of the midpoint (NTP's estimate, one exchange). A
record's time on the controller's clock is then

    host time - host's time at go + controller's midpoint.

Monotonic clocks, unlike wall clocks, never step during a run; the error is
at most half of one round trip inside the cluster's network (well under a
millisecond there) and it shifts a host's timeline only: latencies are
differences on one host's clock and are exact.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

from .stats import RequestRecord


@dataclass(frozen=True)
class ClockSync:
    """One exchange around `go`: controller times before/after (ns), the host's time at go (ns)."""
    controller_sent_ns: int
    controller_answered_ns: int
    host_ns: int

    @property
    def offset_ns(self) -> int:
        """Add to a host time to get the controller's time."""
        midpoint = (self.controller_sent_ns + self.controller_answered_ns) // 2
        return midpoint - self.host_ns

    @property
    def uncertainty_s(self) -> float:
        return (self.controller_answered_ns - self.controller_sent_ns) / 2e9


@dataclass
class HostRecords:
    """What one load host measured: its records (seconds from `origin_ns`, its
    clock), its measurement window, how many it left unanswered, and the
    clock exchange that places it on the controller's clock."""
    host: str
    origin_ns: int
    records: list[RequestRecord]
    start_s: float
    end_s: float
    unanswered: int
    sync: ClockSync
    model: Optional[str] = None
    interrupted: bool = False
    engine: str = ""
    stopped_by: str = "done"

    def shift_s(self, controller_origin_ns: int) -> float:
        """Seconds to add to this host's times to put them on the controller's, from its origin."""
        return (self.origin_ns + self.sync.offset_ns - controller_origin_ns) / 1e9


@dataclass
class Merged:
    records: list[RequestRecord]  # every host's, on the controller's clock, in order of scheduled time
    start_s: float
    end_s: float
    unanswered: int
    model: Optional[str]
    interrupted: bool
    shifts_s: dict[str, float]    # host -> where its origin fell on the controller's clock


def split_concurrency(total: int, hosts: int) -> list[int]:
    """`total` connections over `hosts`, as even as can be (15 over 2: 8, 7); every host at least one."""
    if hosts < 1 or total < hosts:
        raise ValueError(f"a concurrency of {total} cannot be split over {hosts} load host(s): give at least one each")
    return [total // hosts + (1 if i < total % hosts else 0) for i in range(hosts)]


def split_rate(total: float, hosts: int) -> list[float]:
    """An open loop's rate in equal shares (their sum is the rate)."""
    if hosts < 1:
        raise ValueError("no load host to send from")
    return [total / hosts] * hosts


def split_requests(total: Optional[int], hosts: int) -> list[Optional[int]]:
    return [None] * hosts if total is None else split_concurrency(max(total, hosts), hosts)


def align(records: Sequence[RequestRecord], shift_s: float) -> list[RequestRecord]:
    return [dataclasses.replace(r, scheduled_s=r.scheduled_s + shift_s, sent_s=r.sent_s + shift_s,
                                done_s=r.done_s + shift_s) for r in records]


def merge(hosts: Sequence[HostRecords], controller_origin_ns: int) -> Merged:
    """Every host's records, each on the controller's clock, renumbered in order
    of their scheduled time; the window from the first start to the last end."""
    shifts = {h.host: h.shift_s(controller_origin_ns) for h in hosts}
    records = [r for h in hosts for r in align(h.records, shifts[h.host])]
    records.sort(key=lambda r: (r.step, r.scheduled_s))
    records = [dataclasses.replace(r, index=i) for i, r in enumerate(records)]
    starts = [h.start_s + shifts[h.host] for h in hosts]
    ends = [h.end_s + shifts[h.host] for h in hosts]
    return Merged(records, min(starts, default=0.0), max(ends, default=0.0), sum(h.unanswered for h in hosts),
                  next((h.model for h in hosts if h.model), None), any(h.interrupted for h in hosts), shifts)
