"""The overhead benchmark's statistics, on known data (the benchmark itself
prints figures and is run by hand: speed is never asserted in a test)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from orchestrator_overhead import Stats, percentile  # noqa: E402


def test_nearest_rank_percentiles_of_1_to_100():
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (1, 50, 95, 99, 100)] == [1, 50, 95, 99, 100]
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_percentiles_never_exceed_the_maximum_on_small_samples():
    values = sorted([3.0, 1.0, 2.0])
    assert percentile(values, 99) == 3.0 and percentile(values, 50) == 2.0


def test_summary_derives_rate_and_net_latency():
    stats = Stats(started=10.0, ended=12.0)
    for i in range(1, 11):
        stats.add(latency_ms=50.0 + i, queue_ms=float(i))
    stats.errors = 1
    summary = stats.summary()
    assert summary["requests"] == 10 and summary["errors"] == 1 and summary["rps"] == 5.0
    assert summary["p50_ms"] == 55.0 and summary["p99_ms"] == 60.0
    assert summary["net_p50_ms"] == 50.0 and summary["net_p99_ms"] == 50.0
