"""Autoscaling below `up`'s count on the ssh test network, the process runtime:
a 2 x 2 cluster (w1, w2) with a spare, --min-containers 1 --max-containers 5
(tests/support/scaledown.py has the scenario); `down` leaves nothing."""
from __future__ import annotations

import json

import pytest

from support.console import cli
from support.scaledown import CONFIG, scale_below_up_and_back
from support.sshcluster import cluster_config, host_network, our_processes, ssh_marks
from support.waiting import wait_for

pytestmark = ssh_marks()

NAME = "sshmin"  # unique to this file: other tests run ssh clusters beside it
net = host_network("orch", "w1", "w2", "spare")


@pytest.fixture(scope="module")
def cluster(net, tiny_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("min") / "home"
    spare = net.hosts["spare"]
    config = cluster_config(home, net, tiny_model, ["w1", "w2"], name=NAME, host_grace=2)
    config.write_text(config.read_text()
                      + f'spares = [ {{ address = "{spare.address}", name = "spare", workdir = "{spare.workdir}", '
                        'runtime = "process" } ]\n' + CONFIG)
    result = cli("up", "--provider", "ssh", "--config", str(config), home=home, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((home / NAME / "state.json").read_text())
    yield {"home": home, "url": state["orchestrator_url"]}
    cli("down", "--name", NAME, "--yes", home=home, check=False)


def environ(pid: str) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def marked(net, name: str) -> list[str]:
    """The cluster's processes on a host (its marker in their environment)."""
    needle = f"MLCLUSTER_MARKER=ssh:{NAME}:{name}".encode()
    return [p for p in our_processes(net, name) if needle in environ(p)]


def workers(net, name: str) -> set[bytes]:
    """The worker containers of the cluster running on a host (a worker is more than one process)."""
    return {v for p in marked(net, name) for v in environ(p) if v.startswith(b"WORKER_ID=")}


def test_idle_goes_down_to_the_minimum_and_a_step_brings_ups_containers_back_first(net, cluster):
    scale_below_up_and_back(cluster["home"], cluster["url"], NAME, lambda host: len(workers(net, host)))


def test_down_leaves_nothing(net, cluster):
    result = cli("down", "--name", NAME, "--yes", home=cluster["home"], check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("orch", "w1", "w2", "spare"):
        wait_for(lambda: marked(net, name) == [], f"nothing of {NAME} left on {name}", timeout=20)
