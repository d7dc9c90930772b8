"""Autostop: durations, the watchdog's decision (exact, with the times passed
in), and the real watchdog script against a real local cluster: it stops the
cluster after a test-sized idle time, and not while requests flow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from mlcluster.deploy.agent import IdleClock
from mlcluster.deploy.localhost import find_marked, marker
from mlcluster.deploy.watchdog import WATCHDOG_SOURCE, watchdog_command
from mlcluster.durations import parse_duration
from mlcluster.errors import MlclusterError
from support.console import MLCLUSTER, Trickle, cli, home_fixture, kill_marked
from support.waiting import holds, wait_for


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("8h", 28800), ("1d", 86400),
                                           ("45", 45), ("1.5h", 5400), (" 2m ", 120)])
def test_durations(text, seconds):
    assert parse_duration(text, "autostop") == seconds


@pytest.mark.parametrize("text", ["", "0", "0m", "-5m", "5 minutes", "m", "8x", "1h30m"])
def test_bad_durations_are_refused_with_an_example(text):
    with pytest.raises(MlclusterError, match="not a duration") as caught:
        parse_duration(text, "autostop")
    assert '"30m"' in caught.value.hint


def snapshot(served=0, failed=0, in_flight=0, depth=0, ready=True) -> dict:
    containers = [{"id": "w1-1", "status": "free" if ready else "down"}, {"id": "w1-2", "status": "free"}]
    return {"served": served, "failed": failed, "in_flight": in_flight, "queue": {"depth": depth, "limit": 100},
            "containers": containers}


def test_idle_time_counts_from_when_every_container_is_ready():
    clock = IdleClock(idle_s=10)
    clock.observe({**snapshot(), "containers": []}, now=0)   # nothing registered yet: `up` is running
    clock.observe(snapshot(ready=False), now=15)            # loading the model
    assert clock.reason(now=24, wall=0) is None
    clock.observe(snapshot(), now=24)                        # all ready: the idle time starts here
    assert clock.reason(now=33.9, wall=0) is None
    clock.observe(snapshot(ready=False), now=34)             # one down later: still idle
    assert clock.reason(now=34, wall=0) == "autostop"


def test_idle_clock_counts_only_time_with_nothing_served():
    clock = IdleClock(idle_s=10)
    clock.observe(snapshot(served=5), now=0)
    assert clock.reason(now=9.9, wall=0) is None
    clock.observe(snapshot(served=6), now=9.9)      # something was served: idle again from here
    assert clock.reason(now=19.8, wall=0) is None
    clock.observe(snapshot(served=6, in_flight=1), now=19.8)  # a long request in flight is activity
    clock.observe(snapshot(served=6, depth=2), now=25)        # ... and so is a queue
    assert clock.reason(now=34.9, wall=0) is None
    clock.observe(snapshot(served=6), now=30)
    clock.observe(None, now=34)                     # no answer: not activity
    assert clock.reason(now=35, wall=0) == "autostop"


def test_an_orchestrator_never_reached_is_not_idle():
    clock = IdleClock(idle_s=10)
    clock.observe(None, now=0)
    clock.observe(None, now=20)
    assert clock.reason(now=29, wall=0) is None   # nothing known of its load
    clock.observe(snapshot(), now=29)
    clock.observe(None, now=35)                   # reached once, then gone: idle counts
    assert clock.reason(now=39, wall=0) == "autostop"


def test_idle_clock_lifetime_wins_even_while_busy():
    clock = IdleClock(idle_s=0, deadline=1000.0)
    clock.observe(snapshot(in_flight=3), now=5)
    assert clock.reason(now=5, wall=999.9) is None
    assert clock.reason(now=5, wall=1000.0) == "max_lifetime"


def test_up_refuses_a_bad_autostop_in_flags_and_config(tmp_path):
    result = cli("up", "--autostop", "soon", home=tmp_path, check=False)
    assert result.returncode != 0 and "'soon' is not a duration" in result.stderr and "Traceback" not in result.stderr
    config = tmp_path / "c.toml"
    config.write_text('max_lifetime = "8 hours"\n')
    result = cli("up", "--config", str(config), home=tmp_path, check=False)
    assert result.returncode != 0 and "max_lifetime '8 hours' is not a duration" in result.stderr


home = home_fixture("idle")


def start_watchdog(url: str, record, idle_s=None, deadline=None) -> subprocess.Popen:
    """The watchdog script as `up` runs it, with `mlcluster down` as its stop command."""
    stop = [MLCLUSTER, "down", "--name", "idle", "--yes"]
    argv = watchdog_command(sys.executable, str(WATCHDOG_SOURCE), f"{url}/status", str(record), idle_s, deadline,
                            stop, interval_s=0.2)
    env = dict(os.environ, MLCLUSTER_MARKER=marker("idle"))  # as a cluster's process carries it
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_watchdog_stops_an_idle_cluster_but_not_one_serving(home, tiny_model, tmp_path):
    cli("up", "--name", "idle", "--workers", "1", "--containers-per-worker", "1", "--model", tiny_model)
    url = json.loads(cli("status", "--name", "idle", "--json").stdout)["orchestrator_url"]
    record = tmp_path / "autostop.json"
    idle_s = 3.0
    watchdog = start_watchdog(url, record, idle_s=idle_s)
    try:
        # Requests for three idle times: the watchdog must not fire.
        trickle = Trickle(url, "still here")
        holds(lambda: watchdog.poll() is None and not record.exists(), "the watchdog not firing while requests flow",
              3 * idle_s)
        answered = trickle.stop()
        load_ended = time.time()
        assert watchdog.poll() is None and not record.exists(), watchdog.stdout.read() if watchdog.poll() else ""
        assert len(answered) >= 10 and all(answered)

        output, _ = watchdog.communicate(timeout=120)  # idle now: it fires, becomes `mlcluster down`
    finally:
        if watchdog.poll() is None:
            watchdog.kill()
    assert watchdog.returncode == 0, output
    fired = json.loads(record.read_text())
    assert fired["reason"] == "autostop" and fired["stopped_at"] >= load_ended + idle_s - 1.0
    assert "autostop" in output and find_marked(marker("idle")) == []
    assert cli("status", "--name", "idle", check=False).returncode != 0  # the cluster is gone


def test_watchdog_ends_the_lifetime_even_under_load(home, tiny_model, tmp_path):
    cli("up", "--name", "idle", "--workers", "1", "--containers-per-worker", "1", "--model", tiny_model)
    url = json.loads(cli("status", "--name", "idle", "--json").stdout)["orchestrator_url"]
    record = tmp_path / "autostop.json"
    deadline = time.time() + 4
    watchdog = start_watchdog(url, record, idle_s=3600, deadline=deadline)
    try:
        while watchdog.poll() is None and time.time() < deadline + 60:
            try:
                requests.post(f"{url}/new_request", json={"text": "busy"}, timeout=30)
            except requests.RequestException:
                time.sleep(0.1)  # the watchdog has begun stopping the cluster
        output, _ = watchdog.communicate(timeout=120)
    finally:
        if watchdog.poll() is None:
            watchdog.kill()
    fired = json.loads(record.read_text())
    assert fired["reason"] == "max_lifetime" and fired["stopped_at"] >= deadline
    assert watchdog.returncode == 0, output
    assert find_marked(marker("idle")) == []


@pytest.fixture
def lhome(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCLUSTER_HOME", str(tmp_path / "home"))
    yield tmp_path / "home"
    kill_marked("localidle")


def test_local_cluster_stops_itself_once_idle_but_not_while_serving(lhome, tiny_model):
    """`up --autostop` on the local provider: the cluster's controller (mlcluster/elastic, which
    absorbs the watchdog on a process cluster) does not fire while requests flow, fires after the
    idle time, stops every process of the cluster and leaves the state, so `status` says it stopped
    itself and `down` removes it. A second `up` keeps the controller that runs."""
    idle_s = 6.0
    args = ("up", "--name", "localidle", "--workers", "1", "--containers-per-worker", "1", "--model", tiny_model,
            "--autostop", f"{idle_s:g}s")
    cli(*args)
    state = json.loads((lhome / "localidle" / "state.json").read_text())
    url = state["orchestrator_url"]
    assert "watchdog" not in state["resources"]["services"]  # one agent per cluster
    watchdog = state["resources"]["services"]["controller"]
    assert watchdog["pid"] in find_marked(marker("localidle"))

    trickle = Trickle(url, "still here")
    started = time.monotonic()
    cli(*args)  # the same settings, while busy: the same watchdog
    again = json.loads((lhome / "localidle" / "state.json").read_text())
    assert again["resources"]["services"]["controller"]["pid"] == watchdog["pid"]
    record = lhome / "localidle" / "autostop.json"
    holds(lambda: not record.exists() and Path(f"/proc/{watchdog['pid']}").exists(),
          "the controller running, autostop not fired while requests flow", started + 2 * idle_s - time.monotonic())
    answered = trickle.stop()
    load_ended = time.time()
    assert len(answered) >= 10 and all(answered) and not record.exists()
    assert Path(f"/proc/{watchdog['pid']}").exists()

    wait_for(lambda: find_marked(marker("localidle")) == [], "every process stopped, the watchdog too", timeout=60,
             interval=0.5)
    fired = json.loads(record.read_text())
    assert fired["reason"] == "autostop" and fired["stopped_at"] >= load_ended + idle_s - 1.0
    said = json.loads(cli("events", "--name", "localidle", "--json").stdout)["events"]
    assert said[-1]["kind"] == "autostop" and "autostop: the cluster stops itself" == said[-1]["reason"]
    status = cli("status", "--name", "localidle", check=False)
    assert status.returncode == 1 and "stopped itself (autostop at " in status.stderr, status.stderr
    down = cli("down", "--name", "localidle", "--yes")
    assert "localidle" not in cli("list").stdout and not (lhome / "localidle").exists(), down.stdout
