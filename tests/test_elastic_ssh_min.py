"""Autoscaling below `up`'s count on the ssh test network, the process runtime:
a 2 x 2 cluster (w1, w2) with a spare, --min-containers 1 --max-containers 5
(tests/support/scaledown.py has the scenario); `down` leaves nothing."""
from __future__ import annotations

from support.console import cli
from support.scaledown import AUTOSCALE, scale_below_up_and_back
from support.sshcluster import cluster_fixture, host_network, marked, ssh_marks, worker_ids
from support.waiting import wait_for

pytestmark = ssh_marks()

NAME = "sshmin"  # unique to this file: other tests run ssh clusters beside it
net = host_network("orch", "w1", "w2", "spare")
cluster = cluster_fixture(["w1", "w2"], name=NAME, spares=("spare",), autoscale=AUTOSCALE, host_grace=2)


def test_idle_goes_down_to_the_minimum_and_a_step_brings_ups_containers_back_first(net, cluster):
    scale_below_up_and_back(cluster, lambda host: len(worker_ids(net, host, NAME)))


def test_down_leaves_nothing(net, cluster):
    result = cli("down", "--name", NAME, "--yes", home=cluster.home, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("orch", "w1", "w2", "spare"):
        wait_for(lambda: marked(net, name, NAME) == [], f"nothing of {NAME} left on {name}", timeout=20)
