"""The bench's maths and parsing, with known data: exact percentiles, the
summary, stability, the knee, compare's ratios. No processes, no clock."""
from __future__ import annotations

import json
import random
from typing import Optional

import pytest

from mlcluster.bench.load import text_bodies
from mlcluster.bench.report import Report, compare_rows, load_result, ratio, read_csv, report_of, write_csv
from mlcluster.bench.runner import BenchConfig, BenchResult
from mlcluster.bench.setup import _instance_types
from mlcluster.bench.stats import (
    Distribution,
    RequestRecord,
    StepSummary,
    Summary,
    distribution,
    is_stable,
    percentile,
    summarise,
    window_rates,
)
from mlcluster.bench.sweep import StepPolicy, find_knee, parse_steps
from mlcluster.errors import MlclusterError


def test_percentiles_are_exact_nearest_rank():
    values = list(range(1, 101))
    random.Random(7).shuffle(values)
    d = distribution(values)
    assert (d.p50, d.p90, d.p99, d.max, d.min) == (50, 90, 99, 100, 1)
    assert percentile(sorted(values), 95) == 95
    assert percentile(sorted(values), 100) == 100 and percentile(sorted(values), 0) == 1
    assert percentile([42.5], 99) == 42.5
    assert percentile([], 50) is None and distribution([]).p99 is None
    # Never above the max, and always a recorded value (no bucket rounding).
    data = sorted([1.0, 2.0, 3.0, 1000.0])
    assert percentile(data, 50) == 2.0 and percentile(data, 99) == 1000.0
    assert {percentile(data, p) for p in range(101)} <= set(data)
    with pytest.raises(ValueError):
        percentile(data, 101)


def record(i: int, latency_ms: float, *, sent_late_ms: float = 0.0, error: str = "", container: str = "c1",
           queue: float = 1.0, inference: float = 5.0, server: float = 8.0) -> RequestRecord:
    scheduled = i * 0.1
    sent = scheduled + sent_late_ms / 1000
    return RequestRecord(index=i, step=0, scheduled_s=scheduled, sent_s=sent, done_s=scheduled + latency_ms / 1000,
                         status=None if error == "connection" else (200 if not error else int(error[5:])),
                         error=error, container="" if error else container,
                         queue_ms=None if error else queue, inference_ms=None if error else inference,
                         server_ms=None if error else server)


def test_summary_counts_errors_containers_and_rates():
    records = [record(i, 10.0 + i, container=f"c{i % 3}") for i in range(10)]
    records += [record(10, 1, error="http_503"), record(11, 1, error="http_503"), record(12, 1, error="connection")]
    s = summarise(records, start_s=0.0, end_s=2.0, offered_rps=6.5)
    assert s.requests == 13 and s.ok == 10 and s.errors == 3
    assert s.errors_by_kind == {"connection": 1, "http_503": 2}
    assert s.per_container == {"c0": 4, "c1": 3, "c2": 3}
    assert s.throughput_rps == 5.0 and s.duration_s == 2.0 and s.offered_rps == 6.5
    assert s.sent_rps == pytest.approx(10.0)  # 13 sends, 0.1 s apart
    assert s.latency_ms.p50 == pytest.approx(14.0) and s.latency_ms.max == pytest.approx(19.0)


def test_breakdown_splits_client_latency_into_its_parts():
    # 20 ms at the client, sent 2 ms late: 8 ms server (1 queue + 5 inference + 2 forwarding), 10 ms network.
    s = summarise([record(0, 20.0, sent_late_ms=2.0)], 0.0, 1.0)
    b = s.breakdown_ms
    assert b["client"].p50 == pytest.approx(20.0)
    assert b["send_delay"].p50 == pytest.approx(2.0)
    assert b["server_total"].p50 == 8.0 and b["queue"].p50 == 1.0 and b["inference"].p50 == 5.0
    assert b["forwarding"].p50 == pytest.approx(2.0)
    assert b["network"].p50 == pytest.approx(10.0)  # 18 ms from send to answer, minus 8 in the server


def test_latency_counts_from_when_the_request_was_due():
    r = record(0, 500.0, sent_late_ms=450.0)  # the client was late: the user still waited 500 ms
    assert r.latency_ms == pytest.approx(500.0)


def test_window_rates_and_stability():
    steady = [i * 0.01 for i in range(400)]  # 100 per second for 4 s
    assert window_rates(steady, 0.0, 4.0, 1.0) == [100.0] * 4
    assert is_stable([50.0, 100.0, 100.0, 104.0])
    assert not is_stable([100.0, 100.0])                     # too few windows
    assert not is_stable([40.0, 60.0, 80.0])                 # still ramping
    assert not is_stable([0.0, 0.0, 0.0])
    policy = StepPolicy(window_s=1.0, windows=3, tolerance=0.1, min_requests=100)
    assert policy.settled(steady, 0.0, 4.0)
    assert not policy.settled(steady[:90], 0.0, 4.0)       # under min_requests


def summary(requests: int = 100, errors: int = 0, throughput: float = 50.0, p50: Optional[float] = None,
            p99: Optional[float] = None) -> Summary:
    return Summary(requests=requests, ok=requests - errors, errors=errors, errors_by_kind={}, duration_s=1.0,
                   throughput_rps=throughput, sent_rps=None, offered_rps=None,
                   latency_ms=Distribution(p50=p50, p99=p99), per_container={}, breakdown_ms={})


def step(p99: float, requests: int = 100, errors: int = 0, concurrency: int = 1) -> StepSummary:
    return StepSummary(0, concurrency, None, "stable", summary(requests, errors, p99=p99))


def test_knee_is_the_last_step_within_the_factor_of_the_first():
    assert find_knee([step(55), step(57), step(60), step(110), step(215)], factor=1.5) == 2
    assert find_knee([step(55), step(57), step(60), step(80)], factor=1.5) == 3
    assert find_knee([step(55), step(200), step(60)], factor=1.5) == 0  # the first step past it ends the run
    assert find_knee([step(55), step(56, errors=5)], factor=1.5) == 0    # errors above 1% are past the knee
    assert find_knee([step(55, errors=50)]) is None
    assert find_knee([]) is None


def test_step_lists_and_config_checks():
    assert parse_steps("1,2,4,8", int, "--sweep") == [1, 2, 4, 8]
    assert parse_steps("10, 20.5", float, "--rate-sweep") == [10.0, 20.5]
    for bad in ("1,x", "", "0,1", "-2"):
        with pytest.raises(ValueError, match="--sweep"):
            parse_steps(bad, int, "--sweep")
    for config in (BenchConfig(requests=5, duration_s=2), BenchConfig(sweep=[1], rate=5.0),
                   BenchConfig(sweep=[1], rate_sweep=[2.0]), BenchConfig(rate=0), BenchConfig(arrivals="bursty"),
                   BenchConfig(concurrency=0), BenchConfig(warmup=-1)):
        with pytest.raises(MlclusterError):
            config.validate()
    plans = BenchConfig(rate_sweep=[10.0, 1000.0], requests=7).validate().plans()
    assert [p.rate for p in plans] == [10.0, 1000.0] and all(p.requests == 7 for p in plans)
    assert plans[1].concurrency >= 1000  # enough threads to keep sending while the cluster falls behind
    assert BenchConfig().plans()[0].duration_s == 10.0


def test_text_bodies(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("the first text\n\n  a second one  \nünïcode too\n")
    assert [json.loads(b)["text"] for b in text_bodies(texts)] == ["the first text", "a second one", "ünïcode too"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(MlclusterError, match="holds no text"):
        text_bodies(tmp_path / "empty.txt")
    with pytest.raises(MlclusterError, match="does not exist"):
        text_bodies(tmp_path / "missing.txt")


def test_compare_ratios_with_known_runs(tmp_path):
    def run(errors, throughput, p50, p99, step_throughput, step_p99) -> Report:
        sweep = StepSummary(0, 4, None, "stable", summary(throughput=step_throughput, p99=step_p99))
        return Report({}, "closed", summary(100, errors, throughput, p50, p99), [4], None, steps=[sweep])
    a, b = run(0, 50.0, 20.0, 40.0, 40.0, 30.0), run(10, 125.0, 10.0, 40.0, 60.0, 15.0)
    for which in (a, b):  # what compare reads is what --json wrote
        (tmp_path / "r.json").write_text(json.dumps(which.to_json()))
        assert load_result(tmp_path / "r.json") == which
    rows = {label: r for label, _, _, r in compare_rows(a, b)}
    assert rows["throughput (req/s)"] == 2.5 and rows["latency p50 (ms)"] == 0.5 and rows["latency p99 (ms)"] == 1.0
    assert rows["errors"] is None  # 0 in A: no ratio
    assert rows["concurrency 4: throughput"] == 1.5 and rows["concurrency 4: p99 (ms)"] == 0.5
    assert ratio(None, 3) is None
    (tmp_path / "x.json").write_text('{"not": "a result"}')
    with pytest.raises(MlclusterError, match="not a result"):
        load_result(tmp_path / "x.json")


def test_instance_types_come_from_the_provider_options():
    options = {"aws": {"instance_type": "m5.large", "region": "eu-west-1"}}
    assert _instance_types(options) == {"aws.instance_type": "m5.large"}
    assert _instance_types({"ssh": {"hosts": ["a"]}}) is None


def test_csv_reads_back_as_the_records_written(tmp_path):
    records = [record(i, 10.0 + i / 3, sent_late_ms=0.25 * i, container=f"c{i % 2}") for i in range(6)]
    records += [record(6, 1.5, error="http_503"), record(7, 2.0, error="connection")]
    records[0].attempts = 2
    result = BenchResult(config=BenchConfig(), summary=summarise(records, 0.0, 1.0), steps=[], knee=None,
                         records=records, interrupted=False, started_at=0.0, model=None, unanswered=0)
    write_csv(result, tmp_path / "r.csv")
    back = read_csv(tmp_path / "r.csv")
    assert back == records
    assert back[7].status is None and back[6].queue_ms is None and back[0].attempts == 2


def test_the_json_form_keeps_its_keys_and_reads_back():
    records = [record(i, 10.0 + i) for i in range(4)]
    steps = [StepSummary(0, 2, None, "stable", summarise(records, 0.0, 1.0))]
    result = BenchResult(config=BenchConfig(sweep=[2]), summary=summarise(records, 0.0, 1.0), steps=steps, knee=0,
                         records=records, interrupted=False, started_at=0.0, model=None, unanswered=0)
    data = report_of(result, {"model": "m"}).to_json()
    assert list(data) == ["setup", "mode", "requests", "ok", "errors", "errors_by_kind", "duration_s",
                          "throughput_rps", "sent_rps", "offered_rps", "latency_ms", "per_container", "breakdown_ms",
                          "concurrency", "rate", "interrupted", "unanswered", "steps", "knee", "slo", "capacity"]
    assert list(data["steps"][0])[:5] == ["step", "concurrency", "rate", "stopped_by", "requests"]
    assert list(data["latency_ms"]) == ["p50", "p90", "p99", "max", "min", "mean", "count"]
    assert data["knee"] == {"step": 0, "concurrency": 2, "rate": None, "throughput_rps": 4.0, "p99_ms": 13.0,
                            "factor": 1.5}
    assert Report.from_json(json.loads(json.dumps(data))).to_json() == data
