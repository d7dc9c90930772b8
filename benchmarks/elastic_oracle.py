"""The best any scaler could do on benchmarks/elastic_diurnal.py's day: for each 10-s window, the fewest containers
(capacity 1, a fixed service time, one FIFO queue) whose p99 under that window's mean Poisson rate stays within
the SLO, as if the scaler knew the rate in advance and a container started at once. Its container-seconds are a
lower bound for every reactive scaler (mlcluster's and Ray's alike) at that SLO: a target below it is out of
reach on this trace whatever the rule. Computed by simulating the M/D/c queue (seeded), no I/O."""
from __future__ import annotations

import functools
import heapq
import random


@functools.lru_cache(maxsize=None)
def md_c_p99(containers: int, load: float, service_s: float, n: int = 20_000) -> float:
    """p99 latency (wait + service) of an M/D/c queue at `load` (arrivals / capacity, < 1)."""
    rng, rate, t = random.Random(1), load * containers / service_s, 0.0
    free, latencies = [0.0] * containers, []
    for _ in range(n):
        t += rng.expovariate(rate)
        start = max(t, heapq.heappop(free))
        heapq.heappush(free, start + service_s)
        latencies.append(start + service_s - t)
    latencies.sort()
    return latencies[int(0.99 * n)]


def fewest(rate_rps: float, service_s: float, slo_s: float, most: int) -> int:
    """The fewest containers (1..most) within the SLO at `rate_rps`; `most` when none is."""
    for c in range(1, most + 1):
        load = round(rate_rps * service_s / c, 2)  # rounded: the cache holds a few hundred cases
        if load < 1 and md_c_p99(c, load, service_s) <= slo_s:
            return c
    return most


def oracle_container_s(rates_rps: list[float], width_s: float, service_s: float, slo_s: float, most: int) -> float:
    """Container-seconds of the oracle over windows of `width_s` with these mean rates."""
    return sum(fewest(r, service_s, slo_s, most) * width_s for r in rates_rps)
