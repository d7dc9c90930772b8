"""How long a measurement step runs, and where the knee of a sweep is."""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Optional, Sequence

from .stats import StepSummary, is_stable, window_rates


@dataclass
class StepPolicy:
    """A sweep step without --requests/--duration runs until its throughput
    is stable (the last `windows` windows of `window_s` within `tolerance` of
    their mean, with at least `min_requests` answers) or `time_limit_s`."""
    time_limit_s: float = 10.0
    window_s: float = 1.0
    windows: int = 3
    tolerance: float = 0.1
    min_requests: int = 100  # so a step's p99 is not just its single slowest answer

    def settled(self, done_times: Sequence[float], start_s: float, now_s: float) -> bool:
        if len(done_times) < self.min_requests:
            return False
        return is_stable(window_rates(done_times, start_s, now_s, self.window_s), self.windows, self.tolerance)


class Settling:
    """`StepPolicy.settled` for one step polled while it runs, kept up as
    answers come: `add` the done times new since the last poll, then ask
    `settled(now)`. The same answer as `settled` over all the step's done
    times, at a cost per new answer instead of per answer so far per poll."""

    def __init__(self, policy: StepPolicy, start_s: float):
        self.policy, self.start_s = policy, start_s
        self.total = 0
        self.buckets: collections.Counter = collections.Counter()  # window index -> answers done in it

    def add(self, done_times: Sequence[float]) -> None:
        self.total += len(done_times)
        self.buckets.update(int((t - self.start_s) // self.policy.window_s) for t in done_times)

    def settled(self, now_s: float) -> bool:
        policy = self.policy
        if self.total < policy.min_requests:
            return False
        count = int((now_s - self.start_s) // policy.window_s)  # whole windows so far, as window_rates
        rates = [self.buckets[i] / policy.window_s for i in range(max(0, count))]
        return is_stable(rates, policy.windows, policy.tolerance)


def parse_steps(text: str, kind: type, option: str) -> list:
    """'1,2,4,8' -> [1, 2, 4, 8]; raises ValueError with a sentence on bad input."""
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} takes a comma-separated list of numbers, like 1,2,4,8; got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{option} needs one or more positive numbers; got {text!r}")
    return values


def find_knee(steps: Sequence[StepSummary], factor: float = 1.5, max_error_rate: float = 0.01) -> Optional[int]:
    """The knee of a sweep: the last step, counting from the first, whose p99
    stays within `factor` times the first step's p99 (and whose errors stay
    under `max_error_rate`). `steps` are in sweep order.
    None when even the first step has no answers or too many errors."""
    knee = None
    base = None
    for i, step in enumerate(s.summary for s in steps):
        p99 = step.latency_ms.p99
        if p99 is None or step.requests == 0 or step.errors / step.requests > max_error_rate:
            break
        if base is None:
            base = p99
        if p99 > factor * base:
            break
        knee = i
    return knee
