"""The bench's pure policies: SLO parsing and verdicts, goodput, the capacity
search, $ per million, and merging several load hosts' records onto one clock."""
from __future__ import annotations

import pytest

from mlcluster.bench.capacity import Probe, SearchPolicy, capacity, next_rate, per_million
from mlcluster.bench.merge import ClockSync, HostRecords, merge, split_concurrency, split_rate
from mlcluster.bench.slo import SLO, goodput, judge, latency_limit, parse_slo
from mlcluster.bench.stats import RequestRecord


def record(index: int, latency_ms: float, ok: bool = True, start: float = 0.0) -> RequestRecord:
    return RequestRecord(200 if ok else 503, "" if ok else "http_503", index=index, step=0, scheduled_s=start,
                         sent_s=start, done_s=start + latency_ms / 1000)


@pytest.mark.parametrize("text, metric, limit", [
    ("p99<=200ms", "p99", 200.0), ("p50<=0.5s", "p50", 500.0), ("P999 <= 1.5s", "p999", 1500.0),
    ("max<=30ms", "max", 30.0), ("p90<=12.5ms", "p90", 12.5), ("errors<=0.1%", "errors", 0.001),
    ("errors<=0%", "errors", 0.0)])
def test_parse_slo(text, metric, limit):
    slo = parse_slo(text)
    assert (slo.metric, slo.limit) == (metric, pytest.approx(limit))


@pytest.mark.parametrize("text", ["p99", "p99<200ms", "p98<=1ms", "p99<=200", "errors<=5ms", "errors<=101%",
                                  "p99<=0ms", "p99<=-1ms", "", "latency<=1s"])
def test_bad_slo_is_one_sentence(text):
    with pytest.raises(ValueError) as info:
        parse_slo(text)
    message = str(info.value)
    assert message.startswith("--slo") and "\n" not in message


def test_verdicts_are_exact_percentiles_over_every_record():
    records = [record(i, float(i)) for i in range(1, 101)] + [record(101, 5.0, ok=False)]
    slos = [parse_slo(t) for t in ("p50<=50ms", "p99<=98ms", "max<=100ms", "p999<=100ms", "errors<=1%")]
    verdicts = judge(slos, records)
    assert [v.measured for v in verdicts] == [50.0, 99.0, 100.0, 100.0, pytest.approx(1 / 101)]
    assert [v.held for v in verdicts] == [True, False, True, True, True]
    # an unanswered request counts as an error: 2 of 102 is above 1%
    assert not judge([parse_slo("errors<=1%")], records, unanswered=1)[0].held


def test_no_answer_misses_every_latency_objective():
    verdicts = judge([parse_slo("p99<=1s"), parse_slo("errors<=100%")], [record(0, 1.0, ok=False)])
    assert [v.held for v in verdicts] == [False, True] and verdicts[0].measured is None


def test_goodput_counts_ok_answers_within_the_highest_percentiles_limit():
    slos = [SLO("p50", 10.0, "p50<=10ms"), SLO("p99", 40.0, "p99<=40ms"), SLO("errors", 0.01, "errors<=1%")]
    assert latency_limit(slos) == 40.0
    records = [record(i, latency) for i, latency in enumerate([5, 20, 40, 41, 100])] + [record(9, 1, ok=False)]
    assert goodput(slos, records, duration_s=2.0) == 1.5   # 5, 20 and 40 ms: 3 in 2 s
    assert goodput([SLO("errors", 0.01, "errors<=1%")], records, 2.0) is None


def search(true_capacity: float, policy: SearchPolicy) -> list[Probe]:
    probes = []
    while (rate := next_rate(probes, policy)) is not None:
        probes.append(Probe(rate, rate <= true_capacity))
    return probes


@pytest.mark.parametrize("true_capacity", [3.0, 80.0, 81.0, 137.0, 1000.0, 4321.0])
def test_capacity_search_ends_within_its_precision(true_capacity):
    policy = SearchPolicy(start_rps=10, precision=0.05)
    probes = search(true_capacity, policy)
    found = capacity(probes)
    assert found <= true_capacity and found >= true_capacity / 1.05 * 0.99
    assert len(probes) <= policy.max_steps


def test_capacity_search_sweeps_down_and_gives_up():
    assert capacity(search(0.1, SearchPolicy(start_rps=10, min_rps=0.5))) is None
    assert next_rate([Probe(10, False)], SearchPolicy(start_rps=10)) == 5


def test_a_rate_that_held_above_a_failure_is_not_capacity():
    probes = [Probe(10, True), Probe(20, True), Probe(40, False), Probe(30, True), Probe(35, False), Probe(50, True)]
    assert capacity(probes) == 30


def test_cost_per_million():
    assert per_million(3.6, 100.0) == pytest.approx(10.0)   # $3.6/h at 360,000 req/h
    assert per_million(None, 100.0) is None and per_million(1.0, None) is None


def test_split_between_hosts():
    assert split_concurrency(15, 2) == [8, 7] and sum(split_concurrency(64, 3)) == 64
    assert split_rate(90.0, 2) == [45.0, 45.0]
    with pytest.raises(ValueError):
        split_concurrency(1, 2)


def test_merge_puts_each_host_on_the_controllers_clock():
    # Host a's clock is 1,000 s ahead of the controller's, host b's 500 s behind; each saw `go`
    # at the midpoint of the controller's exchange with it.
    controller_origin = 10_000_000_000
    a = HostRecords("a", origin_ns=1_010_000_000_000 + 2_000_000_000, records=[record(0, 10, start=0.5)],
                    start_s=0.0, end_s=1.0, unanswered=1,
                    sync=ClockSync(11_000_000_000, 11_002_000_000, 1_011_001_000_000))
    b = HostRecords("b", origin_ns=9_000_000_000, records=[record(0, 20, start=0.25), record(1, 5, ok=False)],
                    start_s=0.0, end_s=2.0, unanswered=0,
                    sync=ClockSync(11_000_000_000, 11_000_000_000, 8_500_000_000), model="m")
    merged = merge([a, b], controller_origin)
    # a: go at host 1,011.001 s = controller 11.001 s (offset -1,000 s), so its origin (host 1,012 s) is
    # 2 s after the controller's; b: offset +2.5 s, origin 9 + 2.5 - 10 = 1.5 s after it.
    assert merged.shifts_s == {"a": pytest.approx(2.0), "b": pytest.approx(1.5)}
    assert [r.index for r in merged.records] == [0, 1, 2] and len(merged.records) == 3
    assert [round(r.scheduled_s, 3) for r in merged.records] == [1.5, 1.75, 2.5]
    assert merged.records[1].latency_ms == pytest.approx(20.0)   # latencies are never shifted
    assert (merged.start_s, merged.end_s) == (pytest.approx(1.5), pytest.approx(3.5))
    assert merged.unanswered == 1 and merged.model == "m"
    assert a.sync.uncertainty_s == pytest.approx(0.001)


def test_load_hosts_named_by_from():
    from mlcluster.bench.remote import default_from, load_hosts
    from mlcluster.errors import UsageError
    from mlcluster.state import ClusterState
    url = "http://127.0.0.1:1"
    assert load_hosts("here", None, url) == [] and default_from(None) == "here"
    assert [h.name for h in load_hosts("here,here", None, url)] == ["here1", "here2"]
    local = ClusterState(name="x", provider="local", token="t")
    assert default_from(local) == "here"
    assert [h.name for h in load_hosts("orchestrator", local, url)] == ["orchestrator"]
    assert default_from(ClusterState(name="y", provider="aws", token="t")) == "orchestrator"
    for spec, state in (("orchestrator", None), ("w1", local), (",", None)):
        with pytest.raises(UsageError):
            load_hosts(spec, state, url)


def test_the_load_agent_imports_neither_rich_nor_state():
    """An orchestrator's image has no rich: the agent must not need it (nor providers, nor state)."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['rich'] = None; import mlcluster.bench.agent; "
            "print(sorted(m for m in sys.modules if m.startswith('mlcluster')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = set(eval(result.stdout)) - {"mlcluster.bench._engine"}
    from mlcluster.bench.sshagent import AGENT_FILES
    uploaded = {("mlcluster/" + f).removesuffix(".py").removesuffix("/__init__").replace("/", ".") for f in AGENT_FILES}
    assert loaded <= uploaded, loaded - uploaded
