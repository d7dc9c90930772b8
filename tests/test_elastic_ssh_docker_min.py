"""Autoscaling below `up`'s count on the ssh test network with the Docker
runtime: w1, w2 and the spare run their worker containers under their own
dockerd (tests/support/scaledown.py has the scenario: down to one container
when idle, `up`'s containers back first under a step load, then one on the
spare, never past 5, 0 failed); `down` leaves no container.

Needs what .ci/setup-docker.sh sets up besides .ci/setup-ssh.sh."""
from __future__ import annotations

import json
import subprocess

import pytest

from support.console import cli
from support.scaledown import CONFIG, scale_below_up_and_back
from support.sshcluster import CLUSTER, docker_over_ssh_missing, host_network, ssh_marks, toml_config
from support.waiting import wait_for

NAME = "sshdmin"  # this file's own: other tests' clusters on the shared hosts are never ours
DOCKER_HOSTS = ("w1", "w2", "spare")  # the orchestrator on the process runtime: one engine fewer

pytestmark = [*ssh_marks(docker_over_ssh_missing, "Docker over SSH"), pytest.mark.docker,
              pytest.mark.timeout(1800)]  # a first run builds the worker image on this machine (minutes)

net = host_network("orch", "w1", "w2", "spare", docker=DOCKER_HOSTS)


def running(host, state: str = "running") -> list[str]:
    """The names of the cluster's containers on a test host's own engine (running ones by default)."""
    filters = ["--filter", f"label=mlcluster.cluster={NAME}"] + (["--filter", f"status={state}"] if state else [])
    return sorted(subprocess.run(["docker", "-H", host.docker_host, "ps", "-a", *filters, "--format", "{{.Names}}"],
                                 capture_output=True, text=True, timeout=60).stdout.split())


@pytest.fixture(scope="module")
def cluster(net, tiny_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("dmin")
    spare = net.hosts["spare"]
    config = home / "cluster.toml"
    text = toml_config(net, tiny_model, ["w1", "w2"], docker=DOCKER_HOSTS, images="ship", host_grace=2)
    config.write_text(text.replace(f'name = "{CLUSTER}"', f'name = "{NAME}"')
                      + f'spares = [ {{ address = "{spare.address}", name = "spare", workdir = "{spare.workdir}", '
                        'runtime = "docker" } ]\n' + CONFIG)
    result = cli("up", "--provider", "ssh", "--config", str(config), timeout=1800, home=home, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((home / NAME / "state.json").read_text())
    yield {"home": home, "url": state["orchestrator_url"]}
    cli("down", "--name", NAME, "--yes", home=home, check=False)


def test_docker_idle_goes_down_to_the_minimum_and_a_step_brings_ups_containers_back_first(net, cluster):
    scale_below_up_and_back(cluster["home"], cluster["url"], NAME,
                            lambda host: len(running(net.hosts[host])))  # only workers on these


def test_down_leaves_no_container(net, cluster):
    result = cli("down", "--name", NAME, "--yes", home=cluster["home"], check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in DOCKER_HOSTS:
        wait_for(lambda: running(net.hosts[name], state="") == [], f"no container of {NAME} left on {name}",
                 timeout=60)
