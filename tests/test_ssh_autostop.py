"""Autostop on ssh test hosts: `up --autostop 4s` starts a watchdog on each
host; while requests flow nothing stops; once idle, every host's watchdog
stops that host's services (the hosts stay), records why, and `down` then
removes the rest."""
from __future__ import annotations

import json
import time

import pytest
import requests

from support.console import Trickle, cli
from support.sshcluster import cluster_config, host_network, our_processes, ssh_marks
from support.waiting import holds, wait_for

CLUSTER = "autostop"  # not the other ssh tests' name: markers are made of cluster and host names
IDLE_S = 4.0
pytestmark = ssh_marks()


net = host_network("orch", "w1")


def test_watchdogs_stop_an_idle_cluster_but_not_a_busy_one(net, tiny_model, tmp_path):
    home = tmp_path / "home"
    config = cluster_config(home, net, tiny_model, ["w1"], name=CLUSTER)
    up = cli("up", "--provider", "ssh", "--config", str(config), "--autostop", f"{IDLE_S:g}s", home=home, check=False)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        state = json.loads((home / CLUSTER / "state.json").read_text())
        url, services = state["orchestrator_url"], state["resources"]["services"]
        # On the orchestrator's host the healing controller is the agent (one agent per cluster there).
        assert {"controller", "watchdog-w1"} <= set(services) and "watchdog-orch" not in services

        trickle = Trickle(url, "busy")
        started = time.monotonic()
        # While requests flow, status shows the autostop settings.
        shown = cli("status", "--name", CLUSTER, "--json", home=home, check=False)
        assert shown.returncode == 0, shown.stderr
        watch = json.loads(shown.stdout)["autostop"]
        assert watch["autostop"] == f"{IDLE_S:g}s" and watch["deadline"] is None and watch["cost_so_far_usd"] == 0
        assert "autostop 4s idle" in cli("status", "--name", CLUSTER, home=home, check=False).stdout
        holds(lambda: not any((net.hosts[n].workdir / "autostop.json").exists() for n in ("orch", "w1")),
              "no host stopped while requests flow", started + 3 * IDLE_S - time.monotonic())
        answered = trickle.stop()
        assert len(answered) >= 10 and all(answered)
        for name in ("orch", "w1"):
            work = net.hosts[name].workdir
            log = work / ("controller.log" if name == "orch" else "watchdog.log")
            assert not (work / "autostop.json").exists(), (
                f"{name} stopped while busy: {(work / 'autostop.json').read_text()}\n{log.read_text()}")

        wait_for(lambda: all((net.hosts[n].workdir / "autostop.json").exists() and not our_processes(net, n)
                             for n in ("orch", "w1")), "both hosts' services stopped once idle", timeout=120,
                 interval=0.5)
        for name in ("orch", "w1"):
            fired = json.loads((net.hosts[name].workdir / "autostop.json").read_text())
            assert fired["reason"] == "autostop" and fired["idle_s"] == IDLE_S
            assert our_processes(net, name) == [], f"{name} still runs services"
        with pytest.raises(requests.RequestException):
            requests.get(f"{url}/health_check", timeout=3)
        after = cli("status", "--name", CLUSTER, home=home, check=False)
        assert after.returncode == 1 and "stopped itself (autostop at " in after.stderr, after.stderr
        assert "mlcluster down --name autostop" in after.stderr
    finally:
        down = cli("down", "--name", CLUSTER, "--yes", home=home, check=False)
    assert down.returncode == 0, down.stderr[-2000:]
    assert not (home / CLUSTER).exists()
