"""Healing on the ssh test network: an ssh cluster (orchestrator host, two
worker hosts, one spare, the process runtime, a tiny model) under a
closed-loop load; a worker host's link is cut: the controller on the
orchestrator's host restarts its containers on the spare and the cluster serves
throughout; the link restored, they return and the stand-ins are drained and
stopped; a worker killed on a host that answers is restarted in place.
`mlcluster events` lists the decisions with their reasons; `down` leaves no
process and no authorized_keys line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from support.console import cli
from support.load import ClosedLoop, failed, served_by
from support.sshcluster import CLUSTER, host_network, our_processes, ssh_marks, status, toml_config
from support.waiting import wait_for

pytestmark = ssh_marks()

net = host_network("orch", "w1", "w2", "spare")
TAG = f"mlcluster-controller:{CLUSTER}"


@pytest.fixture(scope="module")
def cluster(net, tiny_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    spare = net.hosts["spare"]
    config = home / "cluster.toml"
    config.write_text(toml_config(net, tiny_model, ["w1", "w2"], host_grace=2)
                      + f'spares = [ {{ address = "{spare.address}", name = "spare", workdir = "{spare.workdir}", runtime = "process" }} ]\n'
                      + "[autoscale]\nheal_grace = 1\n")
    result = cli("up", "--provider", "ssh", "--config", str(config), home=home, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((home / CLUSTER / "state.json").read_text())
    yield {"home": home, "state": state, "url": state["orchestrator_url"]}
    cli("down", "--name", CLUSTER, "--yes", home=home, check=False)


def marked(net, name: str) -> list[str]:
    """The cluster's processes on a host (its marker in their environment; not sshd's sessions)."""
    needle = f"MLCLUSTER_MARKER=ssh:{CLUSTER}:{name}".encode()

    def environ(pid: str) -> bytes:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                return f.read()
        except OSError:
            return b""
    return [p for p in our_processes(net, name) if needle in environ(p).split(b"\0")]


def cluster_status(cluster) -> dict:
    return json.loads(cli("status", "--name", CLUSTER, "--json", home=cluster["home"]).stdout)


def serving(url: str) -> dict[str, str]:
    return {c["id"]: c["status"] for c in status(url)["containers"]}


def test_up_starts_the_controller_with_its_own_key(net, cluster):
    home, state = cluster["home"], cluster["state"]
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
    assert marked(net, "spare") == []  # up starts nothing on a spare
    shown = wait_for(lambda: cluster_status(cluster).get("autoscale"), "the controller's published state")
    assert shown["max"] is None and shown["running"] and shown["reason"] == "healing: every container at home"


def test_a_cut_off_host_has_its_containers_restarted_on_the_spare_and_back(net, cluster):
    url, w1, spare = cluster["url"], net.hosts["w1"], net.hosts["spare"]
    # Something the user runs by hand on the spare, on the first worker port: left alone, its port skipped.
    theirs = subprocess.Popen(["ip", "netns", "exec", spare.namespace, sys.executable, "-m", "http.server", "5000",
                               "--bind", spare.address], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: spare.exec("python3", "-c", f"import socket; socket.create_connection(('{spare.address}', 5000), 1)")
             .returncode == 0, "the user's server on the spare")
    loop = ClosedLoop(url, 6)
    try:
        wait_for(lambda: served_by(loop.answers, "w1") and served_by(loop.answers, "w2"), "load on both hosts", timeout=60)
        net.cut(w1)
        cut_at = time.monotonic()
        stand_ins = {"w1-1-on-spare", "w1-2-on-spare"}
        wait_for(lambda: {k for k, v in serving(url).items() if v in ("free", "busy")} >= stand_ins,
                 "w1's containers serving from the spare", timeout=60, interval=0.2)
        print(f"\nw1 cut -> both stand-ins serving on the spare: {time.monotonic() - cut_at:.1f} s (host_grace 2 s)")
        wait_for(lambda: served_by(loop.answers, "w1-1-on-spare") + served_by(loop.answers, "w1-2-on-spare") >= 20,
                 "requests answered by the stand-ins", timeout=30)
        # A stand-in that dies is restarted in place too.
        state = json.loads((net.hosts["orch"].workdir / "controller-state.json").read_text())
        killed = next(x for x in state["stand_ins"] if x["id"] == "w1-1-on-spare")
        os.killpg(killed["pid"], signal.SIGKILL)
        wait_for(lambda: any(e["kind"] == "heal" and "stand-in w1-1-on-spare" in e["reason"]
                             for e in json.loads(cli("events", "-n", CLUSTER, "--json", home=cluster["home"]).stdout)
                             ["events"]) and serving(url).get("w1-1-on-spare") in ("free", "busy"),
                 "the dead stand-in restarted and serving", timeout=60, interval=0.5)
        def shown() -> dict:
            return cluster_status(cluster).get("autoscale") or {}
        # The controller publishes what it sees at its looks: wait until a look saw the healed stand-in serve.
        wait_for(lambda: "w1-1 on spare, w1-2 on spare" in shown().get("reason", "")
                 and (shown()["max"], shown()["desired"], shown()["current"], shown()["running"]) == (None, 4, 4, True),
                 "status to show the stand-ins, all four serving", timeout=30)
        net.restore(w1)
        wait_for(lambda: set(serving(url)) == {"w1-1", "w1-2", "w2-1", "w2-2"}
                 and set(serving(url).values()) <= {"free", "busy"}, "the stand-ins drained and gone", timeout=60,
                 interval=0.2)
        wait_for(lambda: marked(net, "spare") == [], "the stand-ins' processes stopped", timeout=30)
        back = loop.count()
        wait_for(lambda: served_by(loop.answers[back:], "w1") >= 10, "w1 serving again", timeout=30)
        assert theirs.poll() is None  # the user's server still runs
    finally:
        answers = loop.finish()
        net.restore(w1)
        theirs.kill()
        theirs.wait()
    assert len(answers) > 50
    assert not failed(answers), Counter(a.status for a in failed(answers))

    found = json.loads(cli("events", "--name", CLUSTER, "--json", home=cluster["home"]).stdout)["events"]
    moves = [e for e in found if e["kind"] == "move"]
    returns = [e for e in found if e["kind"] == "return"]
    assert sorted(e["container"] for e in moves) == ["w1-1", "w1-2"]
    assert all("w1 unreachable for" in e["reason"] and "restarted on spare" in e["reason"] for e in moves)
    assert sorted(e["reason"].rsplit("(port ", 1)[1] for e in moves) == ["5001)", "5002)"]  # 5000 was the user's
    assert sorted(e["container"] for e in returns) == ["w1-1", "w1-2"]
    assert all("w1 answers again" in e["reason"] for e in returns)
    assert found[0]["kind"] == "started"


def test_a_killed_worker_on_a_host_that_answers_is_restarted_in_place(net, cluster):
    url, home = cluster["url"], cluster["home"]
    pool = json.loads((net.hosts["orch"].workdir / "controller.json").read_text())
    victim = next(w for w in pool["workers"] if w["id"] == "w2-2")
    os.killpg(victim["pid"], signal.SIGKILL)  # the hosts share this machine's pid space
    wait_for(lambda: serving(url).get("w2-2") == "down", "w2-2 seen down", timeout=30, interval=0.1)

    def healed() -> bool:
        events = json.loads(cli("events", "-n", CLUSTER, "--json", home=home).stdout)["events"]
        return any(e["kind"] == "heal" and e["container"] == "w2-2" for e in events) \
            and serving(url).get("w2-2") in ("free", "busy")
    wait_for(healed, "w2-2 restarted in place and serving", timeout=60, interval=0.5)
    assert [c["host"] for c in status(url)["containers"] if c["id"] == "w2-2"] == [net.hosts["w2"].address]

    # A second `up` takes the healed pid from the controller and changes nothing (no second w2-2, same controller).
    before = json.loads((home / CLUSTER / "state.json").read_text())["resources"]["services"]
    again = cli("up", "--config", str(home / "cluster.toml"), home=home, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    after = json.loads((home / CLUSTER / "state.json").read_text())["resources"]["services"]
    healed_pid = json.loads((net.hosts["orch"].workdir / "controller-state.json").read_text())["pids"]["w2-2"]
    assert healed_pid != victim["pid"] and after["w2-2"]["pid"] == healed_pid
    assert after["controller"]["pid"] == before["controller"]["pid"]
    assert {k: v["pid"] for k, v in after.items() if k != "w2-2"} == {k: v["pid"] for k, v in before.items() if k != "w2-2"}
    print("\n" + cli("events", "-n", CLUSTER, home=home).stdout)


def test_down_leaves_no_controller_no_process_and_no_key(net, cluster):
    home = cluster["home"]
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
