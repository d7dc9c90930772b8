"""Autoscaling below `up`'s count on the ssh test network with the Docker
runtime: w1, w2 and the spare run their worker containers under their own
dockerd (tests/support/scaledown.py has the scenario: down to one container
when idle, `up`'s containers back first under a step load, then one on the
spare, never past 5, 0 failed); `down` leaves no container.

Needs what .ci/setup-docker.sh sets up besides .ci/setup-ssh.sh."""
from __future__ import annotations

import pytest

from support.console import cli
from support.scaledown import AUTOSCALE, scale_below_up_and_back
from support.sshcluster import cluster_fixture, docker_containers, docker_over_ssh_missing, host_network, ssh_marks
from support.waiting import wait_for

NAME = "sshdmin"  # this file's own: other tests' clusters on the shared hosts are never ours
DOCKER_HOSTS = ("w1", "w2", "spare")  # the orchestrator on the process runtime: one engine fewer

pytestmark = [*ssh_marks(docker_over_ssh_missing, "Docker over SSH"), pytest.mark.docker,
              pytest.mark.timeout(1800)]  # a first run builds the worker image on this machine (minutes)

net = host_network("orch", "w1", "w2", "spare", docker=DOCKER_HOSTS)
cluster = cluster_fixture(["w1", "w2"], name=NAME, docker=DOCKER_HOSTS, images="ship", spares=("spare",),
                          autoscale=AUTOSCALE, host_grace=2, up_timeout=1800)


def test_docker_idle_goes_down_to_the_minimum_and_a_step_brings_ups_containers_back_first(net, cluster):
    scale_below_up_and_back(cluster, lambda host: len(docker_containers(net.hosts[host], NAME, "running")))


def test_down_leaves_no_container(net, cluster):
    result = cli("down", "--name", NAME, "--yes", home=cluster.home, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in DOCKER_HOSTS:
        wait_for(lambda: docker_containers(net.hosts[name], NAME) == [], f"no container of {NAME} left on {name}",
                 timeout=60)
