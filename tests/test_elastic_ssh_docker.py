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
spare) is left alone. (tests/support/healing.py has the cut-off scenario.)

Needs what .ci/setup-docker.sh sets up besides .ci/setup-ssh.sh.
"""
from __future__ import annotations

import json
import time

import pytest

from support.console import cli
from support.healing import cut_off_and_back
from support.sshcluster import (
    autoscale,
    cluster_config,
    cluster_fixture,
    containers,
    docker_containers,
    docker_on,
    docker_over_ssh_missing,
    events,
    host_network,
    our_processes,
    ssh_marks,
    status,
)
from support.waiting import wait_for

NAME = "sshdheal"  # this file's own: other tests' clusters on the shared hosts are never ours
TAG = f"mlcluster-controller:{NAME}"
DOCKER_HOSTS = ("orch", "w1", "spare")

pytestmark = [*ssh_marks(docker_over_ssh_missing, "Docker over SSH"), pytest.mark.docker,
              pytest.mark.timeout(1800)]  # a first run builds the worker image on this machine (minutes)

net = host_network("orch", "w1", "w2", "spare", docker=DOCKER_HOSTS)
cluster = cluster_fixture(["w1", "w2"], name=NAME, docker=DOCKER_HOSTS, images="ship", spares=("spare",),
                          autoscale={"heal_grace": 1}, host_grace=2, up_timeout=1800)


def test_the_controller_runs_beside_a_docker_orchestrator(net, cluster):
    services = cluster.state["resources"]["services"]
    assert services["orchestrator"]["runtime"] == "docker" and services["w1-1"]["runtime"] == "docker"
    assert services["w2-1"]["runtime"] == "process"
    record = services["controller"]
    assert record["host"] == "orch" and record["runtime"] == "process"
    assert str(record["pid"]) in our_processes(net, "orch")  # a process on the host, no container with the socket
    assert docker_containers(net.hosts["orch"], NAME) == [f"mlc-{NAME}-orchestrator"]
    pool = json.loads((net.hosts["orch"].workdir / "controller.json").read_text())
    assert {h["host"]["name"]: h["runtime"] for h in pool["hosts"]} == {"w1": "docker", "w2": "process",
                                                                       "spare": "docker"}
    assert pool["hosts"][2]["images"]["worker"].startswith("mlcluster-worker")  # `up` prepared the spare
    assert [line for line in net.authorized_keys.read_text().splitlines() if line.endswith(TAG)]
    assert docker_containers(net.hosts["spare"], NAME) == []  # up starts nothing on a spare
    shown = wait_for(lambda: autoscale(NAME, cluster.home), "the controller's published state")
    assert shown["running"] and shown["reason"] == "healing: every container at home"


def test_a_killed_worker_container_is_started_again_in_place(net, cluster):
    url, w1 = cluster.url, net.hosts["w1"]
    name = f"mlc-{NAME}-w1-2"
    before = docker_on(w1, "inspect", "--format", "{{.Id}}", name).stdout.strip()
    assert docker_on(w1, "kill", name).returncode == 0  # Docker's restart policy leaves a killed container stopped
    wait_for(lambda: containers(url).get("w1-2") == "down", "w1-2 seen down", timeout=30, interval=0.1)
    killed_at = time.monotonic()
    wait_for(lambda: any(e["kind"] == "heal" and e["container"] == "w1-2" and f"(container {name})" in e["reason"]
                         for e in events(NAME, cluster.home))
             and containers(url).get("w1-2") in ("free", "busy"), "w1-2 started again and serving", timeout=60,
             interval=0.5)
    print(f"\nw1-2 seen down -> serving again: {time.monotonic() - killed_at:.1f} s (heal_grace 1 s)")
    # The same container (kept: identical settings), on its own host.
    assert docker_on(w1, "inspect", "--format", "{{.Id}} {{.State.Running}}", name).stdout.split() == [before, "true"]
    assert [c["host"] for c in status(url)["containers"] if c["id"] == "w1-2"] == [w1.address]


def test_a_cut_off_docker_host_serves_from_the_spare_and_comes_back(net, cluster):
    spare = net.hosts["spare"]
    image = json.loads((net.hosts["orch"].workdir / "controller.json").read_text())["hosts"][2]["images"]["worker"]
    # A container of the user's own on the spare (and the scenario's server of theirs on the first worker port).
    assert docker_on(spare, "create", "--name", "users-own", image).returncode == 0

    def stand_in_containers() -> None:
        assert docker_containers(spare, NAME) == [f"mlc-{NAME}-w1-1-on-spare", f"mlc-{NAME}-w1-2-on-spare"]

    def kill_stand_in() -> None:
        assert docker_on(spare, "kill", f"mlc-{NAME}-w1-1-on-spare").returncode == 0
    cut_off_and_back(cluster, net, kill_stand_in, lambda: docker_containers(spare, NAME) == [], timeout=90,
                     on_spare=stand_in_containers)


def test_down_leaves_no_container_no_process_and_no_key(net, cluster):
    result = cli("down", "--name", NAME, "--yes", home=cluster.home, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in DOCKER_HOSTS:
        assert docker_containers(net.hosts[name], NAME) == [], name
    for name in ("orch", "w1", "w2", "spare"):  # sshd's sessions of the stopped controller end soon after
        wait_for(lambda: our_processes(net, name) == [], f"nothing of ours left on {name}", timeout=20)
    assert TAG not in net.authorized_keys.read_text()
    left = {p.name for p in net.hosts["orch"].workdir.iterdir()}
    assert not left & {"controller_key", "controller.json", "controller-state.json"}
    spare = net.hosts["spare"]
    # the user's container, still there
    assert docker_on(spare, "inspect", "--format", "{{.Name}}", "users-own").stdout.strip() == "/users-own"
    docker_on(spare, "rm", "-f", "users-own")


def test_autostop_on_a_docker_orchestrator_host_removes_its_container(net, tiny_model, tmp_path):
    """The controller is that host's autostop agent: once idle, it removes the orchestrator's container
    there (and ends itself); the process host's own agent stops its workers."""
    name, home = "sshdstop", tmp_path / "home"
    config = cluster_config(home, net, tiny_model, ["w2"], name=name, docker=DOCKER_HOSTS, images="ship")
    up = cli("up", "--provider", "ssh", "--config", str(config), "--autostop", "4s", timeout=900, home=home,
             check=False)
    assert up.returncode == 0, up.stderr[-3000:]
    orch = net.hosts["orch"]
    try:
        services = json.loads((home / name / "state.json").read_text())["resources"]["services"]
        assert {"controller", "watchdog-w2"} <= set(services) and "watchdog-orch" not in services
        assert docker_containers(orch, name) == [f"mlc-{name}-orchestrator"]
        wait_for(lambda: (orch.workdir / "autostop.json").exists() and docker_containers(orch, name) == []
                 and our_processes(net, "orch") == [], "the idle cluster's container and controller gone on orch",
                 timeout=120, interval=0.5)
        assert json.loads((orch.workdir / "autostop.json").read_text())["reason"] == "autostop"
    finally:
        down = cli("down", "--name", name, "--yes", home=home, check=False)
    assert down.returncode == 0, down.stderr[-2000:]
    assert docker_containers(orch, name) == [] and our_processes(net, "orch") == [] and our_processes(net, "w2") == []
