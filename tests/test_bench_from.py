"""`bench --from` on the SSH test network: an ssh cluster (orchestrator on
`orch`, overhead-test workers of a fixed service time on `w1` and `w2`), a
delaying relay standing for the distance between a laptop and the cluster.

- `--from here` through the relay shows the relay's two one-way delays in its
  p50; `--from orchestrator` runs the agent on the orchestrator's host over the
  pinned SSH connection and does not.
- Two load hosts (`--from orch,w1`): the merged records are every request the
  orchestrator served in the run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.console import cli
from support.relay import Relay
from support.sshcluster import CLUSTER, cluster_fixture, host_network, our_processes, ssh_marks, status
from support.waiting import wait_for

pytestmark = ssh_marks()

MLCLUSTER = str(Path(sys.executable).parent / "mlcluster")
SERVICE_MS = 20
DELAY_MS = 40


net = host_network("orch", "w1", "w2")
cluster = cluster_fixture(["w1", "w2"], model="overhead-test", top={"service_ms": SERVICE_MS})


def bench_json(home, tmp_path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    result = cli("bench", *args, "--json", str(out), timeout=300, check=False, home=home)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def test_from_here_through_the_relay_shows_its_delay_and_from_orchestrator_does_not(net, cluster, tmp_path):
    orchestrator = net.hosts["orch"]
    with Relay((orchestrator.address, 8000), delay_ms=DELAY_MS, jitter_ms=5, seed=1) as relay:
        here = bench_json(cluster.home, tmp_path, "here", "--url", relay.url, "--from", "here",
                          "--concurrency", "4", "--requests", "100")
    inside = bench_json(cluster.home, tmp_path, "inside", "--name", CLUSTER, "--from", "orchestrator",
                        "--concurrency", "4", "--requests", "100")
    assert here["ok"] == inside["ok"] == 100
    # through the relay: the service time plus about two one-way delays (±5 ms each), plus HTTP
    assert 2 * DELAY_MS - 10 <= here["latency_ms"]["p50"] - SERVICE_MS <= 2 * DELAY_MS + 30, here["latency_ms"]
    assert here["breakdown_ms"]["network"]["p50"] >= 2 * DELAY_MS - 10
    # from the orchestrator's own host: no relay, only the service time and a little HTTP
    assert inside["latency_ms"]["p50"] < SERVICE_MS + 20, inside["latency_ms"]
    assert inside["breakdown_ms"]["network"]["p50"] < 10
    [origin] = inside["setup"]["load_from"]
    assert origin["host"] == "orch" and origin["url"].startswith("http://") and origin["engine"] in ("c", "python")
    assert inside["setup"]["orchestrator_url"] == cluster.url


def test_two_load_hosts_merge_every_request_the_orchestrator_served(net, cluster, tmp_path):
    wait_for(lambda: status(cluster.url)["in_flight"] == 0, "an idle orchestrator")
    before = status(cluster.url)["served"]
    data = bench_json(cluster.home, tmp_path, "two", "--name", CLUSTER, "--from", "orch,w1",
                      "--concurrency", "6", "--duration", "3", "--warmup", "0")
    wait_for(lambda: status(cluster.url)["in_flight"] == 0, "the run's requests to end")
    served = status(cluster.url)["served"] - before
    assert [h["host"] for h in data["setup"]["load_from"]] == ["orch", "w1"]
    assert data["requests"] == data["ok"] == served > 0
    assert sum(data["per_container"].values()) == served


def test_unknown_load_host_is_a_usage_error(cluster):
    result = cli("bench", "--name", CLUSTER, "--from", "nosuchhost", "--requests", "5", check=False, home=cluster.home)
    assert result.returncode == 2 and "nosuchhost" in result.stderr and "Traceback" not in result.stderr


def test_a_load_host_whose_controller_vanished_stops_sending(net, cluster):
    env = dict(os.environ, MLCLUSTER_HOME=str(cluster.home), COLUMNS="200")
    before = status(cluster.url)["served"]
    process = subprocess.Popen([MLCLUSTER, "bench", "--name", CLUSTER, "--from", "orchestrator", "--concurrency", "4",
                                "--duration", "120", "--warmup", "0"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: status(cluster.url)["served"] - before >= 50, "the remote load to be under way", timeout=60)
    finally:
        process.kill()  # no goodbye: the SSH connection just drops
        process.wait()
    # the agent reads the end of its input and stops (its run's grace for what is in flight is 10 s)
    wait_for(lambda: status(cluster.url)["in_flight"] == 0, "the remote load to stop", timeout=30)
    wait_for(lambda: not [p for p in our_processes(net, "orch") if "mlcluster.bench.agent" in _cmdline(p)],
             "the agent on the orchestrator's host to end", timeout=30)
    settled = status(cluster.url)["served"]
    assert settled - before < 120 * 1000 / SERVICE_MS  # far from the 120 s it was asked to run


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
