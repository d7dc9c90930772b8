"""`mlcluster bench` verdicts, capacity and load hosts against a real local
cluster: an orchestrator and four overhead-test workers of a fixed 50 ms
service time on loopback, so its capacity is known: 4 / 50 ms = 80 req/s.

Exit codes are read from the real `mlcluster` command in a subprocess."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import requests

from mlcluster.bench.agent import RECORD_FIELDS
from mlcluster.bench.load import random_bodies
from mlcluster.bench.loadhosts import LoadHost, LocalAgent, run_from_hosts
from mlcluster.bench.runner import BenchConfig
from support.services import overhead_cluster
from support.waiting import wait_for

CONTAINERS = 4
SERVICE_MS = 50
CAPACITY_RPS = CONTAINERS * 1000 / SERVICE_MS
TOKEN = "bench-capacity-token"
MLCLUSTER = str(Path(sys.executable).parent / "mlcluster")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> str:
    with overhead_cluster(tmp_path_factory.mktemp("bench-capacity"), CONTAINERS, SERVICE_MS, queue_limit=2000,
                          token=TOKEN) as url:
        yield url


def status(url: str) -> dict:
    return requests.get(url + "/status", timeout=5).json()


def mlcluster(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([MLCLUSTER, *args], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": str(Path(sys.executable).parent), "COLUMNS": "200", "HOME": "/tmp",
                               "HF_HUB_OFFLINE": "1"})


def test_slo_held_exits_0_and_missed_exits_3_with_goodput_in_the_json(cluster, tmp_path):
    held = mlcluster("bench", "--url", cluster, "--concurrency", "4", "--requests", "80",
                     "--slo", "p99<=2s", "--slo", "errors<=0%", "--json", str(tmp_path / "held.json"))
    assert held.returncode == 0, held.stderr
    data = json.loads((tmp_path / "held.json").read_text())
    assert data["slo"]["held"] is True and [v["held"] for v in data["slo"]["verdicts"]] == [True, True]
    assert data["slo"]["verdicts"][0]["measured"] == data["latency_ms"]["p99"]
    # every answer came within 2 s: the goodput is the throughput
    assert data["slo"]["goodput_rps"] == pytest.approx(data["throughput_rps"], rel=1e-3)
    assert "Service-level objectives" in held.stdout and "held" in held.stdout

    missed = mlcluster("bench", "--url", cluster, "--concurrency", "4", "--requests", "80",
                       "--slo", f"p50<={SERVICE_MS // 2}ms", "--json", str(tmp_path / "missed.json"))
    assert missed.returncode == 3, missed.stderr
    data = json.loads((tmp_path / "missed.json").read_text())
    assert data["slo"]["held"] is False and data["slo"]["verdicts"][0]["measured"] >= SERVICE_MS
    assert data["slo"]["goodput_rps"] == 0  # no answer can come within half the service time
    assert "missed" in missed.stdout


@pytest.mark.parametrize("slo", ["p99<=200", "p95<=1s", "errors<=5ms"])
def test_bad_slo_is_a_usage_error(cluster, slo):
    result = mlcluster("bench", "--url", cluster, "--slo", slo)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--slo" in result.stderr


def test_find_capacity_is_within_10_percent_of_the_known_capacity(cluster, tmp_path):
    result = mlcluster("bench", "--url", cluster, "--find-capacity", "--slo", f"p99<={3 * SERVICE_MS}ms",
                       "--slo", "errors<=0%", "--rate", "20", "--step-time", "8", "--json", str(tmp_path / "c.json"))
    assert result.returncode == 0, result.stderr
    capacity = json.loads((tmp_path / "c.json").read_text())["capacity"]
    assert abs(capacity["capacity_rps"] - CAPACITY_RPS) <= 0.1 * CAPACITY_RPS, capacity
    rates = [s["rate"] for s in capacity["steps"]]
    assert rates[:2] == [20, 40] and len(set(rates)) == len(rates)  # a coarse sweep, then bisection
    assert any(not s["held"] for s in capacity["steps"])  # it found where the objectives are missed
    assert capacity["usd_per_million"] is None and "--url" in capacity["cost_note"]  # no cost plan
    assert "capacity:" in result.stdout


class Tee:
    """A local agent whose messages are also kept, to check the merge against what each host sent."""
    def __init__(self, seen: list):
        self.agent, self.seen = LocalAgent(), seen
        self.stdin, self.stdout = self.agent.stdin, self

    def readline(self) -> bytes:
        line = self.agent.stdout.readline()
        if line.startswith(b'{"result"'):
            self.seen.append(orjson.loads(line)["result"])
        return line

    def error_text(self) -> str:
        return self.agent.error_text()

    def close(self) -> None:
        self.agent.close()


def exact(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[max(1, math.ceil(p / 100 * len(values))) - 1]


def test_two_load_hosts_merge_to_exactly_the_union(cluster):
    seen: list = []
    hosts = [LoadHost(f"agent{i}", cluster, lambda: Tee(seen)) for i in (1, 2)]
    before = status(cluster)["served"]
    result = run_from_hosts(BenchConfig(concurrency=6, duration_s=3, warmup=0), hosts, random_bodies(seed=1), 30)
    wait_for(lambda: status(cluster)["in_flight"] == 0, "the run's requests to end")
    served = status(cluster)["served"] - before

    assert len(seen) == 2 and all(part["records"] for part in seen)
    union = [row for part in seen for row in part["records"]]
    assert len(result.records) == len(union) == result.summary.requests == served
    assert {h.engine for h in hosts} <= {"c", "python"}

    # the same requests: each host's latencies (its own clock) and containers, as a multiset
    def key(status_, container, scheduled, done):
        return (status_, container, round((done - scheduled) * 1000, 6))
    fields = ["status", "container", "scheduled_s", "done_s"]
    at = [RECORD_FIELDS.index(f) for f in fields]
    assert sorted(key(*(row[i] for i in at)) for row in union) == \
        sorted(key(r.status, r.container, r.scheduled_s, r.done_s) for r in result.records)
    latencies = [r.latency_ms for r in result.records if r.ok]
    for p in (50, 90, 99):
        assert result.summary.latency_ms.__dict__[f"p{p}"] == pytest.approx(exact(latencies, p), abs=0.002)
    # both hosts' timelines overlap on this machine's clock: they ran together
    assert result.window_s[1] - result.window_s[0] < 6  # two 3-s runs side by side, not one after the other
    assert sorted(r.index for r in result.records) == list(range(len(result.records)))


@pytest.mark.parametrize("load, expected", [(("--concurrency", "4", "--requests", "40"), 40),
                                           (("--rate", "40", "--duration", "3"), 120)])
def test_cli_from_two_local_hosts_splits_the_load_and_says_where_it_came_from(cluster, tmp_path, load, expected):
    result = mlcluster("bench", "--url", cluster, "--from", "here,here", *load, "--warmup", "0",
                       "--json", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert [h["host"] for h in data["setup"]["load_from"]] == ["here1", "here2"]
    # an open loop's rate is split in two halves, each sending 20/s for 3 s (its last due time may round in)
    assert abs(data["requests"] - expected) <= 2 and data["ok"] == data["requests"]


def test_ctrl_c_stops_every_load_host_and_keeps_what_they_measured(cluster, tmp_path):
    out = tmp_path / "r.json"
    before = status(cluster)["served"]
    process = subprocess.Popen([MLCLUSTER, "bench", "--url", cluster, "--from", "here,here", "--concurrency", "4",
                                "--duration", "60", "--warmup", "0", "--json", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={"PATH": str(Path(sys.executable).parent), "COLUMNS": "200", "HOME": "/tmp"})
    try:
        wait_for(lambda: status(cluster)["served"] - before >= 40, "both hosts to be under way", timeout=60)
        process.send_signal(signal.SIGINT)  # the command only: its agents hear it from the command
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    wait_for(lambda: status(cluster)["in_flight"] == 0, "the hosts to stop sending", timeout=30)
    data = json.loads(out.read_text())
    assert data["interrupted"] and 40 <= data["requests"] <= status(cluster)["served"] - before
    assert data["duration_s"] < 30 and "interrupted" in stderr
