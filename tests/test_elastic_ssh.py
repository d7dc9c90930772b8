"""Healing on the ssh test network: an ssh cluster (orchestrator host, two
worker hosts, one spare, the process runtime, a tiny model) under a
closed-loop load; a worker host's link is cut: the controller on the
orchestrator's host restarts its containers on the spare and the cluster serves
throughout; the link restored, they return and the stand-ins are drained and
stopped; a worker killed on a host that answers is restarted in place.
`mlcluster events` lists the decisions with their reasons; `down` leaves no
process and no authorized_keys line. (tests/support/healing.py has the cut-off
scenario, shared with the Docker runtime's test.)"""
from __future__ import annotations

import json
import os
import signal

from support.console import cli
from support.healing import cut_off_and_back
from support.sshcluster import (
    CLUSTER,
    autoscale,
    cluster_fixture,
    containers,
    events,
    host_network,
    marked,
    our_processes,
    ssh_marks,
    status,
)
from support.waiting import wait_for

pytestmark = ssh_marks()

net = host_network("orch", "w1", "w2", "spare")
cluster = cluster_fixture(["w1", "w2"], spares=("spare",), autoscale={"heal_grace": 1}, host_grace=2)
TAG = f"mlcluster-controller:{CLUSTER}"


def test_up_starts_the_controller_with_its_own_key(net, cluster):
    home, state = cluster.home, cluster.state
    record = state["resources"]["services"]["controller"]
    assert record["host"] == "orch" and record["kind"] == "controller"
    assert str(record["pid"]) in our_processes(net, "orch")
    lines = [line for line in net.authorized_keys.read_text().splitlines() if line.endswith(TAG)]
    assert len(lines) == 1 and lines[0].startswith(f'from="{net.hosts["orch"].address}",no-agent-forwarding')
    public = (home / CLUSTER / "controller_key.pub").read_text().split()
    assert public[1] in lines[0]  # its own key, not the user's
    assert net.client_key.with_suffix(".pub").read_text().split()[1] not in lines[0]
    for key in (home / CLUSTER / "controller_key", net.hosts["orch"].workdir / "controller_key"):
        assert oct(key.stat().st_mode & 0o777) == "0o600"
    config = (net.hosts["orch"].workdir / "controller.json").read_text()
    assert oct((net.hosts["orch"].workdir / "controller.json").stat().st_mode & 0o777) == "0o600"
    assert str(net.client_key) not in config and "BEGIN" not in config
    pool = json.loads(config)
    assert [h["host"]["name"] for h in pool["hosts"]] == ["w1", "w2", "spare"]
    assert all(h["host_key"] == state["resources"]["host_keys"][f"{net.hosts[h['host']['name']].address}:22"]
               for h in pool["hosts"])  # pinned as `up` recorded them
    assert marked(net, "spare", CLUSTER) == []  # up starts nothing on a spare
    shown = wait_for(lambda: autoscale(CLUSTER, home), "the controller's published state")
    assert shown["max"] is None and shown["running"] and shown["reason"] == "healing: every container at home"


def test_a_cut_off_host_has_its_containers_restarted_on_the_spare_and_back(net, cluster):
    def kill_stand_in() -> None:
        state = json.loads((net.hosts["orch"].workdir / "controller-state.json").read_text())
        killed = next(x for x in state["stand_ins"] if x["id"] == "w1-1-on-spare")
        os.killpg(killed["pid"], signal.SIGKILL)
    cut_off_and_back(cluster, net, kill_stand_in, lambda: marked(net, "spare", CLUSTER) == [])


def test_a_killed_worker_on_a_host_that_answers_is_restarted_in_place(net, cluster):
    url, home = cluster.url, cluster.home
    pool = json.loads((net.hosts["orch"].workdir / "controller.json").read_text())
    victim = next(w for w in pool["workers"] if w["id"] == "w2-2")
    os.killpg(victim["pid"], signal.SIGKILL)  # the hosts share this machine's pid space
    wait_for(lambda: containers(url).get("w2-2") == "down", "w2-2 seen down", timeout=30, interval=0.1)

    def healed() -> bool:
        return any(e["kind"] == "heal" and e["container"] == "w2-2" for e in events(CLUSTER, home)) \
            and containers(url).get("w2-2") in ("free", "busy")
    wait_for(healed, "w2-2 restarted in place and serving", timeout=60, interval=0.5)
    assert [c["host"] for c in status(url)["containers"] if c["id"] == "w2-2"] == [net.hosts["w2"].address]

    # A second `up` takes the healed pid from the controller and changes nothing (no second w2-2, same controller).
    before = json.loads((home / CLUSTER / "state.json").read_text())["resources"]["services"]
    again = cli("up", "--config", str(cluster.config), home=home, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    after = json.loads((home / CLUSTER / "state.json").read_text())["resources"]["services"]
    healed_pid = json.loads((net.hosts["orch"].workdir / "controller-state.json").read_text())["pids"]["w2-2"]
    assert healed_pid != victim["pid"] and after["w2-2"]["pid"] == healed_pid
    assert after["controller"]["pid"] == before["controller"]["pid"]
    assert ({k: v["pid"] for k, v in after.items() if k != "w2-2"}
            == {k: v["pid"] for k, v in before.items() if k != "w2-2"})
    print("\n" + cli("events", "-n", CLUSTER, home=home).stdout)


def test_down_leaves_no_controller_no_process_and_no_key(net, cluster):
    home = cluster.home
    result = cli("down", "--name", CLUSTER, "--yes", home=home, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("orch", "w1", "w2", "spare"):  # sshd's sessions of the stopped controller end soon after
        wait_for(lambda: our_processes(net, name) == [], f"nothing of ours left on {name}", timeout=20)
    assert TAG not in net.authorized_keys.read_text()
    left = {p.name for p in net.hosts["orch"].workdir.iterdir()}
    assert not left & {"controller_key", "controller.json", "controller-state.json"}  # the key, the token
    assert {"controller.log", "events.jsonl"} <= left  # logs stay, as every service's
    assert net.client_key.with_suffix(".pub").read_text().split()[1] in net.authorized_keys.read_text()
    assert not (home / CLUSTER).exists()
