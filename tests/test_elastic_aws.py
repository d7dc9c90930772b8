"""Healing on aws (issues 20, 21): moto's server on the SSH test network's
gateway, the instances mapped (`address_map`) onto SSH test hosts, the
instance metadata service (tests/support/imds.py) of the orchestrator's
instance on that gateway too. `up` (spot workers) starts the controller on
the orchestrator's host; under a closed-loop load a worker's spot instance is
reclaimed (terminated in moto, and its test host cut off with its services
killed: the machine is gone). The controller, with the instance profile's
credentials (asked of the metadata service, never the user's), launches a
tagged replacement within the cap; when the replacement answers (the test
host back, services gone), the worker's container starts there and serves
again. No request fails. `down` leaves nothing tagged, the profile included.
"""
from __future__ import annotations

import json
import time

from mlcluster.elastic.poolconfig import METADATA_RETRIES
from support.awscluster import AwsConfig, up_with_metadata
from support.console import cli
from support.imds import CREDENTIALS
from support.load import ClosedLoop, failed
from support.moto import ec2_client, live_workers, nothing_tagged, replacement, tagged
from support.sshcluster import containers, controller_events, controller_shown, host_network, ssh_marks
from support.waiting import wait_for

pytestmark = ssh_marks()

CLUSTER = "awsheal"
HOSTS = {"orchestrator": "orch", "worker1": "w1", "worker2": "w2"}
net = host_network(*HOSTS.values())


def test_a_reclaimed_spot_worker_is_replaced_and_serves_again(gateway_moto, net, tiny_model, tmp_path):
    moto, orch = gateway_moto, net.hosts["orch"]
    config = AwsConfig(tmp_path / "aws.toml", moto, net, HOSTS, CLUSTER, tiny_model, spot=True,
                       autoscale={"heal_grace": 1}, ssh={"host_grace": 3})
    with up_with_metadata(config) as up:
        url, instances = up.url, up.instances
        wait_for(lambda: containers(url).get("worker1-1") == "free", "worker1-1 serving", timeout=30)
        settings = json.loads((orch.workdir / "controller.json").read_text())["aws"]
        assert settings["cap"] == 2 and settings["instances"]["worker1"] == instances["worker1"]
        assert "testing" not in json.dumps(settings)  # nothing of this machine's credentials
        started_with = set((orch.workdir / "controller.env").read_text().splitlines())
        assert {f"{k}={v}" for k, v in METADATA_RETRIES.items()} <= started_with  # patient with the metadata service

        loop = ClosedLoop(url, clients=4)
        wait_for(lambda: loop.count() >= 20, "the load running", timeout=30)
        reclaimed = time.monotonic()
        ec2_client(moto).terminate_instances(InstanceIds=[instances["worker1"]])  # AWS reclaims it
        net.cut(net.hosts["w1"])
        net.kill_services(net.hosts["w1"])  # the machine is gone, its processes too

        with controller_shown(orch):
            new_id = wait_for(lambda: replacement(moto, CLUSTER, "worker1", instances["worker1"]),
                              "the controller launching a replacement for worker1", timeout=45)
        launched = time.monotonic() - reclaimed
        assert len(live_workers(moto, CLUSTER)) <= 2  # the cap
        net.restore(net.hosts["w1"])  # the replacement boots at worker1's mapped address, without our services
        with controller_shown(orch):
            wait_for(lambda: containers(url).get("worker1-1") == "free", "worker1-1 serving on the replacement",
                     timeout=60)
        print(f"replacement launched {launched:.1f} s after the reclaim; worker1-1 served again after "
              f"{time.monotonic() - reclaimed:.1f} s")
        pinned = json.loads((orch.workdir / "controller-aws.json").read_text())["hosts"]["worker1"]
        assert pinned["id"] == new_id and pinned["key"].split() == net.hosts["w1"].host_public_key().split()[:2]
        before = loop.count()
        wait_for(lambda: loop.count() >= before + 20, "more answers", timeout=30)
        answers = loop.finish()
        assert failed(answers) == []
        assert up.imds.asked[CREDENTIALS] >= 1  # the controller's credentials came from the instance profile

    kinds = [(e["kind"], e.get("container", "")) for e in controller_events(orch)]
    heal = [e for e in controller_events(orch) if e["kind"] == "heal" and e.get("container") == "worker1"]
    assert heal and new_id in heal[0]["reason"] and "(spot)" in heal[0]["reason"], kinds
    assert "terminated" in heal[0]["reason"] or "shutting-down" in heal[0]["reason"]
    assert any(k == "heal" and c == "worker1-1" for k, c in kinds), kinds  # its container started there
    assert len(live_workers(moto, CLUSTER)) == 2
    assert tagged(moto, CLUSTER)["instance_profiles"] == [f"mlcluster-{CLUSTER}-controller"]  # while it exists

    down = cli("down", "--name", CLUSTER, "--yes", check=False)
    assert down.returncode == 0, down.stderr[-3000:]
    assert nothing_tagged(moto, CLUSTER)
