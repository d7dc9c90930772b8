"""Healing on the ssh test network with the Docker runtime (the default for ssh
and aws): the orchestrator's host, one worker host and the spare run their
containers under their own dockerd; the second worker host uses the process
runtime (mixed). The controller runs on the Docker orchestrator host as a
process (elastic/pool_setup.py); on the pool hosts it acts through
deploy/docker.py's runtime over SSH (elastic/poolruntime.py).

A worker container killed with `docker kill` (Docker's restart policy does not
start it again) is started again in place with no command; a Docker host's
link cut: its containers serve from the spare (a Docker host `up` prepared)
under closed-loop load, 0 failed, and come back when the link does (the
stand-ins drained, then removed); `down` leaves no container, no process and
no key line, and what the user runs by hand (a process and a container on the
spare) is left alone.

Needs what .ci/setup-docker.sh sets up besides .ci/setup-ssh.sh.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from support.console import cli
from support.load import ClosedLoop, failed, served_by
from support.sshcluster import (
    CLUSTER,
    docker_over_ssh_missing,
    host_network,
    our_processes,
    ssh_marks,
    status,
    toml_config,
)
from support.waiting import wait_for

NAME = "sshdheal"  # this file's own: other tests' clusters on the shared hosts are never ours
TAG = f"mlcluster-controller:{NAME}"
DOCKER_HOSTS = ("orch", "w1", "spare")

pytestmark = [*ssh_marks(docker_over_ssh_missing, "Docker over SSH"), pytest.mark.docker,
              pytest.mark.timeout(1800)]  # a first run builds the worker image on this machine (minutes)

net = host_network("orch", "w1", "w2", "spare", docker=DOCKER_HOSTS)


def dk(host, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The docker client against a test host's own engine (not over SSH)."""
    return subprocess.run(["docker", "-H", host.docker_host, *args], capture_output=True, text=True, timeout=timeout)


def ours(host, cluster: str = NAME) -> list[str]:
    """The names of a cluster's containers on a host, running or not."""
    return sorted(dk(host, "ps", "-a", "--filter", f"label=mlcluster.cluster={cluster}", "--format",
                     "{{.Names}}").stdout.split())


@pytest.fixture(scope="module")
def cluster(net, tiny_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    spare = net.hosts["spare"]
    config = home / "cluster.toml"
    text = toml_config(net, tiny_model, ["w1", "w2"], docker=DOCKER_HOSTS, images="ship", host_grace=2)
    config.write_text(text.replace(f'name = "{CLUSTER}"', f'name = "{NAME}"')
                      + f'spares = [ {{ address = "{spare.address}", name = "spare", workdir = "{spare.workdir}", '
                        'runtime = "docker" } ]\n'
                      + "[autoscale]\nheal_grace = 1\n")
    started = time.monotonic()
    result = cli("up", "--provider", "ssh", "--config", str(config), timeout=1800, home=home, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"\n`mlcluster up` (3 Docker hosts, images shipped): {time.monotonic() - started:.1f} s")
    state = json.loads((home / NAME / "state.json").read_text())
    yield {"home": home, "state": state, "url": state["orchestrator_url"]}
    cli("down", "--name", NAME, "--yes", home=home, check=False)


def serving(url: str) -> dict[str, str]:
    return {c["id"]: c["status"] for c in status(url)["containers"]}


def events(cluster) -> list[dict]:
    return json.loads(cli("events", "-n", NAME, "--json", home=cluster["home"]).stdout)["events"]


def test_the_controller_runs_beside_a_docker_orchestrator(net, cluster):
    services = cluster["state"]["resources"]["services"]
    assert services["orchestrator"]["runtime"] == "docker" and services["w1-1"]["runtime"] == "docker"
    assert services["w2-1"]["runtime"] == "process"
    record = services["controller"]
    assert record["host"] == "orch" and record["runtime"] == "process"
    assert str(record["pid"]) in our_processes(net, "orch")  # a process on the host, no container with the socket
    assert ours(net.hosts["orch"]) == [f"mlc-{NAME}-orchestrator"]
    pool = json.loads((net.hosts["orch"].workdir / "controller.json").read_text())
    assert {h["host"]["name"]: h["runtime"] for h in pool["hosts"]} == {"w1": "docker", "w2": "process",
                                                                       "spare": "docker"}
    assert pool["hosts"][2]["images"]["worker"].startswith("mlcluster-worker")  # `up` prepared the spare
    assert [line for line in net.authorized_keys.read_text().splitlines() if line.endswith(TAG)]
    assert ours(net.hosts["spare"]) == []  # up starts nothing on a spare
    shown = wait_for(lambda: json.loads(cli("status", "--name", NAME, "--json", home=cluster["home"]).stdout)
                     .get("autoscale"), "the controller's published state")
    assert shown["running"] and shown["reason"] == "healing: every container at home"


def test_a_killed_worker_container_is_started_again_in_place(net, cluster):
    url, w1 = cluster["url"], net.hosts["w1"]
    name = f"mlc-{NAME}-w1-2"
    before = dk(w1, "inspect", "--format", "{{.Id}}", name).stdout.strip()
    assert dk(w1, "kill", name).returncode == 0  # Docker's restart policy leaves a killed container stopped
    wait_for(lambda: serving(url).get("w1-2") == "down", "w1-2 seen down", timeout=30, interval=0.1)
    killed_at = time.monotonic()
    wait_for(lambda: any(e["kind"] == "heal" and e["container"] == "w1-2" and f"(container {name})" in e["reason"]
                         for e in events(cluster))
             and serving(url).get("w1-2") in ("free", "busy"), "w1-2 started again and serving", timeout=60,
             interval=0.5)
    print(f"\nw1-2 seen down -> serving again: {time.monotonic() - killed_at:.1f} s (heal_grace 1 s)")
    # The same container (kept: identical settings), on its own host.
    assert dk(w1, "inspect", "--format", "{{.Id}} {{.State.Running}}", name).stdout.split() == [before, "true"]
    assert [c["host"] for c in status(url)["containers"] if c["id"] == "w1-2"] == [w1.address]


def test_a_cut_off_docker_host_serves_from_the_spare_and_comes_back(net, cluster):
    url, w1, spare = cluster["url"], net.hosts["w1"], net.hosts["spare"]
    image = json.loads((net.hosts["orch"].workdir / "controller.json").read_text())["hosts"][2]["images"]["worker"]
    # What the user runs by hand on the spare: a server on the first worker port, and a container of their own.
    theirs = subprocess.Popen(["ip", "netns", "exec", spare.namespace, sys.executable, "-m", "http.server", "5000",
                               "--bind", spare.address], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert dk(spare, "create", "--name", "users-own", image).returncode == 0
    wait_for(lambda: spare.exec("python3", "-c", f"import socket; socket.create_connection(('{spare.address}', 5000), 1)")
             .returncode == 0, "the user's server on the spare")
    loop = ClosedLoop(url, 6)
    try:
        wait_for(lambda: served_by(loop.answers, "w1") and served_by(loop.answers, "w2"), "load on both hosts", timeout=60)
        net.cut(w1)
        cut_at = time.monotonic()
        stand_ins = {"w1-1-on-spare", "w1-2-on-spare"}
        wait_for(lambda: {k for k, v in serving(url).items() if v in ("free", "busy")} >= stand_ins,
                 "w1's containers serving from the spare", timeout=90, interval=0.2)
        print(f"\nw1 cut -> both stand-in containers serving on the spare: {time.monotonic() - cut_at:.1f} s "
              "(host_grace 2 s)")
        assert ours(spare) == [f"mlc-{NAME}-w1-1-on-spare", f"mlc-{NAME}-w1-2-on-spare"]
        wait_for(lambda: served_by(loop.answers, "w1-1-on-spare") + served_by(loop.answers, "w1-2-on-spare") >= 20,
                 "requests answered by the stand-ins", timeout=30)
        # A stand-in container killed is started again in place too.
        assert dk(spare, "kill", f"mlc-{NAME}-w1-1-on-spare").returncode == 0
        wait_for(lambda: any(e["kind"] == "heal" and "stand-in w1-1-on-spare" in e["reason"] for e in events(cluster))
                 and serving(url).get("w1-1-on-spare") in ("free", "busy"), "the killed stand-in serving again",
                 timeout=60, interval=0.5)
        net.restore(w1)
        wait_for(lambda: set(serving(url)) == {"w1-1", "w1-2", "w2-1", "w2-2"}
                 and set(serving(url).values()) <= {"free", "busy"}, "the stand-ins drained and gone", timeout=60,
                 interval=0.2)
        wait_for(lambda: ours(spare) == [], "the stand-in containers removed", timeout=30)
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
    found = events(cluster)
    moves = [e for e in found if e["kind"] == "move"]
    assert sorted(e["container"] for e in moves) == ["w1-1", "w1-2"]
    assert sorted(e["reason"].rsplit("(port ", 1)[1] for e in moves) == ["5001)", "5002)"]  # 5000 was the user's
    assert sorted(e["container"] for e in found if e["kind"] == "return") == ["w1-1", "w1-2"]


def test_down_leaves_no_container_no_process_and_no_key(net, cluster):
    result = cli("down", "--name", NAME, "--yes", home=cluster["home"], check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in DOCKER_HOSTS:
        assert ours(net.hosts[name]) == [], name
    for name in ("orch", "w1", "w2", "spare"):  # sshd's sessions of the stopped controller end soon after
        wait_for(lambda: our_processes(net, name) == [], f"nothing of ours left on {name}", timeout=20)
    assert TAG not in net.authorized_keys.read_text()
    left = {p.name for p in net.hosts["orch"].workdir.iterdir()}
    assert not left & {"controller_key", "controller.json", "controller-state.json"}
    spare = net.hosts["spare"]
    assert dk(spare, "inspect", "--format", "{{.Name}}", "users-own").stdout.strip() == "/users-own"  # the user's
    dk(spare, "rm", "-f", "users-own")


def test_autostop_on_a_docker_orchestrator_host_removes_its_container(net, tiny_model, tmp_path):
    """The controller is that host's autostop agent: once idle, it removes the orchestrator's container
    there (and ends itself); the process host's own agent stops its workers."""
    name, home = "sshdstop", tmp_path / "home"
    home.mkdir()
    config = home / "cluster.toml"
    config.write_text(toml_config(net, tiny_model, ["w2"], docker=DOCKER_HOSTS, images="ship")
                      .replace(f'name = "{CLUSTER}"', f'name = "{name}"'))
    up = cli("up", "--provider", "ssh", "--config", str(config), "--autostop", "4s", timeout=900, home=home,
             check=False)
    assert up.returncode == 0, up.stderr[-3000:]
    orch = net.hosts["orch"]
    try:
        services = json.loads((home / name / "state.json").read_text())["resources"]["services"]
        assert {"controller", "watchdog-w2"} <= set(services) and "watchdog-orch" not in services
        assert ours(orch, name) == [f"mlc-{name}-orchestrator"]
        wait_for(lambda: (orch.workdir / "autostop.json").exists() and ours(orch, name) == []
                 and our_processes(net, "orch") == [], "the idle cluster's container and controller gone on orch",
                 timeout=120, interval=0.5)
        assert json.loads((orch.workdir / "autostop.json").read_text())["reason"] == "autostop"
    finally:
        down = cli("down", "--name", name, "--yes", home=home, check=False)
    assert down.returncode == 0, down.stderr[-2000:]
    assert ours(orch, name) == [] and our_processes(net, "orch") == [] and our_processes(net, "w2") == []
