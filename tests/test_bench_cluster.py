"""`mlcluster bench` against a real local cluster: an orchestrator and eight
overhead-test workers (a fixed 100 ms service time, no model) on loopback.

Capacity is therefore about 8 / 100 ms = 80 requests per second. The figures
asserted are those the scenarios themselves produce (queueing grows without
bound above capacity; a closed loop cannot show it), with wide margins. The
service time is long beside the scheduling hiccups of a busy 2-core machine
(tens of ms), so a p99 is the cluster's, not the machine's.
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from mlcluster.bench.cli import bench_app
from mlcluster.bench.plot import PANELS
from mlcluster.errors import MlclusterError
from mlcluster.state import ClusterSpec, ClusterState
from support.services import free_port, overhead_cluster
from support.waiting import wait_for

CONTAINERS = 8
SERVICE_MS = 100
TOKEN = "bench-test-token"
MLCLUSTER = str(Path(sys.executable).parent / "mlcluster")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> str:
    """The orchestrator's URL, once every container is registered and free. A queue long
    enough that the overload scenarios queue rather than reject."""
    with overhead_cluster(tmp_path_factory.mktemp("bench-cluster"), CONTAINERS, SERVICE_MS, queue_limit=300,
                          token=TOKEN) as url:
        yield url


def bench(*args: str) -> str:
    """Run `mlcluster bench ARGS` in-process; returns its stdout."""
    result = CliRunner().invoke(bench_app, list(args), env={"COLUMNS": "200"})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.stdout


def bench_error(*args: str) -> MlclusterError:
    result = CliRunner().invoke(bench_app, list(args))
    assert isinstance(result.exception, MlclusterError), (result.exit_code, result.output, result.exception)
    return result.exception


def exact(sorted_values: list[float], p: float) -> float:
    return sorted_values[max(1, math.ceil(p / 100 * len(sorted_values))) - 1]


def test_closed_loop_summary_json_csv_and_exact_percentiles(cluster, tmp_path):
    out = bench("--url", cluster, "--concurrency", "8", "--requests", "120",
                "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"))
    data = json.loads((tmp_path / "r.json").read_text())
    for key in ("requests", "ok", "errors", "throughput_rps", "latency_ms", "concurrency", "per_container",
                "duration_s", "errors_by_kind", "breakdown_ms", "setup"):
        assert key in data
    assert data["requests"] == data["ok"] == 120 and data["errors"] == 0 and data["errors_by_kind"] == {}
    assert data["concurrency"] == 8 and data["mode"] == "closed"
    assert len(data["per_container"]) == CONTAINERS and sum(data["per_container"].values()) == 120
    assert all(n > 0 for n in data["per_container"].values())
    setup = data["setup"]
    assert setup["model"].startswith("overhead-test") and len(setup["containers"]) == CONTAINERS
    assert setup["mlcluster_version"] and setup["time"] and setup["orchestrator_url"] == cluster

    with open(tmp_path / "r.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 120 and {r["container"] for r in rows} == set(data["per_container"])
    latencies = sorted(float(r["latency_ms"]) for r in rows)
    for p in (50, 90, 99):
        assert data["latency_ms"][f"p{p}"] == pytest.approx(exact(latencies, p), abs=0.002)
    assert data["latency_ms"]["max"] == pytest.approx(latencies[-1], abs=0.002)
    # The worker sleeps its service time: the breakdown finds it as inference.
    assert data["breakdown_ms"]["inference"]["p50"] >= SERVICE_MS
    assert "p99" in out and "Requests per container" in out and "waiting for a container" in out


def decile_medians(path: Path) -> tuple[float, float, list[dict]]:
    """Median latency of the first and of the last tenth of the requests, in send order."""
    with open(path) as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["index"]))
    tenth = max(1, len(rows) // 10)
    first = statistics.median(float(r["latency_ms"]) for r in rows[:tenth])
    last = statistics.median(float(r["latency_ms"]) for r in rows[-tenth:])
    return first, last, rows[-tenth:]


def test_open_loop_shows_the_queueing_a_closed_loop_hides(cluster, tmp_path):
    # 120 requests per second offered to about 80 of capacity, for 2 s.
    assert CONTAINERS * 1000 / SERVICE_MS == 80
    bench("--url", cluster, "--rate", "120", "--duration", "2", "--warmup", "0",
          "--json", str(tmp_path / "open.json"), "--csv", str(tmp_path / "open.csv"))
    bench("--url", cluster, "--concurrency", str(2 * CONTAINERS), "--requests", "240", "--warmup", "0",
          "--json", str(tmp_path / "closed.json"), "--csv", str(tmp_path / "closed.csv"))
    open_run = json.loads((tmp_path / "open.json").read_text())
    closed_run = json.loads((tmp_path / "closed.json").read_text())
    assert open_run["errors"] == 0 and closed_run["errors"] == 0
    assert open_run["offered_rps"] == 120
    assert open_run["sent_rps"] > 100            # the client kept to the schedule...
    assert open_run["throughput_rps"] < 100      # ...while the cluster could not

    first, last, tail = decile_medians(tmp_path / "open.csv")
    assert last > 3 * first                      # latency grows with the queue
    assert statistics.median(float(r["queue_ms"]) for r in tail) > last / 2  # and the queue is where it goes
    c_first, c_last, _ = decile_medians(tmp_path / "closed.csv")
    assert c_last < 1.5 * c_first                # the closed loop waits its turn and sees none of it
    assert open_run["latency_ms"]["p99"] > 3 * closed_run["latency_ms"]["p99"]


def test_concurrency_sweep_finds_the_knee_at_the_container_count(cluster, tmp_path):
    # Up to 8 requests in flight each container serves one at a time (p99 near the service time); at 32,
    # each waits for three others (about 4x). A factor of 2 leaves a busy machine's hiccups room both ways.
    out = bench("--url", cluster, "--sweep", "2,4,8,32", "--knee-factor", "2", "--step-time", "8", "--warmup", "8",
                "--json", str(tmp_path / "sweep.json"), "--plot", str(tmp_path / "sweep.png"))
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert [s["concurrency"] for s in data["steps"]] == [2, 4, 8, 32]
    assert all(s["stopped_by"] in ("stable", "time limit") and s["errors"] == 0 for s in data["steps"])
    assert data["knee"]["concurrency"] == CONTAINERS, [s["latency_ms"]["p99"] for s in data["steps"]]
    assert "knee" in out and "Sweep" in out

    png = (tmp_path / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    from PIL import Image
    with Image.open(tmp_path / "sweep.png") as image:
        description = image.text["Description"]  # decodes the whole image: a broken PNG raises
        assert image.size[0] > 600 and image.size[1] > 400
    for panel in ("Latency over time", "Latency distribution", "Throughput per sweep step", "Requests per container"):
        assert panel in PANELS and panel in description


def test_rate_sweep_marks_the_knee_below_capacity(cluster, tmp_path):
    # Above capacity the queue, and so p99, grows without bound: a factor of 2 is plenty.
    out = bench("--url", cluster, "--rate-sweep", "20,40,120", "--step-time", "4", "--warmup", "0",
                "--knee-factor", "2", "--json", str(tmp_path / "rates.json"))
    data = json.loads((tmp_path / "rates.json").read_text())
    assert [s["rate"] for s in data["steps"]] == [20, 40, 120] and data["mode"] == "open"
    assert data["knee"]["rate"] == 40 and data["knee"]["factor"] == 2, [s["latency_ms"]["p99"] for s in data["steps"]]
    assert "knee" in out


def test_poisson_arrivals_are_exponentially_spaced(cluster, tmp_path):
    bench("--url", cluster, "--rate", "40", "--arrivals", "poisson", "--duration", "2", "--warmup", "0",
          "--seed", "3", "--json", str(tmp_path / "p.json"), "--csv", str(tmp_path / "p.csv"))
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["setup"]["arrivals"] == "poisson" and data["errors"] == 0
    with open(tmp_path / "p.csv") as f:
        due = sorted(float(r["scheduled_s"]) for r in csv.DictReader(f))
    gaps = [b - a for a, b in zip(due, due[1:])]
    assert statistics.mean(gaps) == pytest.approx(1 / 40, rel=0.3)
    assert 0.7 < statistics.pstdev(gaps) / statistics.mean(gaps) < 1.3  # exponential: as spread as its mean


def test_compare_prints_the_ratios_of_two_saved_runs(cluster, tmp_path):
    for name, concurrency in (("a", "2"), ("b", "8")):
        bench("--url", cluster, "--concurrency", concurrency, "--requests", "60",
              "--json", str(tmp_path / f"{name}.json"))
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    out = bench("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 4}
    assert f"{b['throughput_rps'] / a['throughput_rps']:.2f}×" in lines["throughput (req/s)"]
    assert f"{b['latency_ms']['p99'] / a['latency_ms']['p99']:.2f}×" in lines["latency p99 (ms)"]
    assert "1.00×" in lines["requests"]


def test_name_resolves_the_cluster_and_texts_come_from_a_file(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("MLCLUSTER_HOME", str(tmp_path / "home"))
    ClusterState(name="benchc", provider="local", token=TOKEN, orchestrator_url=cluster,
                 spec=ClusterSpec(name="benchc", model="overhead-test", workers=2, containers_per_worker=2)).save()
    texts = tmp_path / "texts.txt"
    texts.write_text("a sentence about the weather\nanother about the sea\nthird\n")
    bench("--name", "benchc", "--requests", "30", "--texts", str(texts), "--json", str(tmp_path / "n.json"))
    data = json.loads((tmp_path / "n.json").read_text())
    assert data["ok"] == 30
    setup = data["setup"]
    assert (setup["cluster"], setup["provider"], setup["workers"]) == ("benchc", "local", 2)
    assert "3 texts" in setup["texts"]

    dead = ClusterState(name="stopped", provider="local", token=TOKEN, orchestrator_url=f"http://127.0.0.1:{free_port()}")
    dead.save()
    assert "not answering" in bench_error("--name", "stopped", "--requests", "5").message
    assert "no cluster named 'nosuch'" in bench_error("--name", "nosuch").message


def test_person_made_errors_are_one_sentence(tmp_path):
    url = "http://127.0.0.1:1"
    assert "not both" in bench_error("--url", url, "--requests", "5", "--duration", "2").message
    assert "not both" in bench_error("--url", url, "--name", "x").message
    assert "--sweep" in bench_error("--url", url, "--sweep", "1,x").message
    assert "--rate-sweep" in bench_error("--url", url, "--sweep", "1,2", "--rate", "5").message
    assert "does not exist" in bench_error("--url", url, "--texts", str(tmp_path / "none.txt")).message
    assert "is not an http" in bench_error("--url", "ftp://host/x").message
    assert "nothing is answering" in bench_error("--url", url, "--requests", "5").message
    assert "does not exist" in bench_error("--url", url, "--json", str(tmp_path / "no" / "dir.json")).message
    assert "does not exist" in bench_error("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")).message
    # Through the real console script: one sentence on stderr, exit 1, no traceback.
    result = subprocess.run([MLCLUSTER, "bench", "--url", url, "--sweep", "0"], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--sweep" in result.stderr


def test_ctrl_c_stops_cleanly_and_still_prints_what_was_measured(cluster, tmp_path):
    result_file = tmp_path / "interrupted.json"
    served_before = requests.get(cluster + "/status", timeout=5).json()["served"]
    proc = subprocess.Popen([MLCLUSTER, "bench", "--url", cluster, "--concurrency", "4", "--duration", "120",
                             "--warmup", "0", "--json", str(result_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        wait_for(lambda: requests.get(cluster + "/status", timeout=5).json()["served"] >= served_before + 40,
                 "the cluster to serve some of the bench's requests", timeout=60, interval=0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Benchmark summary" in out and "interrupted" in out and "Traceback" not in err
    data = json.loads(result_file.read_text())
    assert data["interrupted"] and data["requests"] > 0 and data["ok"] == data["requests"]
    assert data["unanswered"] == 0  # what was in flight was waited for


def test_json_dash_writes_only_the_json_to_stdout(cluster, tmp_path):
    data = json.loads(bench("--url", cluster, "--concurrency", "2", "--requests", "20", "--json", "-"))
    assert data["requests"] == 20 and data["ok"] == 20 and not (Path.cwd() / "-").exists()
