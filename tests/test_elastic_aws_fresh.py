"""A fresh instance the controller launches is made ready (issue 20): aws on
the Docker runtime, images shipped. moto's server and the orchestrator
instance's metadata service on the SSH test network's gateway, the instances
mapped (`address_map`) onto Docker test hosts (each its own dockerd). `up`
leaves the worker image in the orchestrator host's engine too. Under a
closed-loop load a worker's spot instance is reclaimed: its test host cut
off, its services, containers, its copy of the model and the worker image gone from
its engine (a new machine has none of them; checked with `docker image ls`
there). The controller launches a replacement; when it answers, it ships the
worker image from the orchestrator host's engine (`docker save | docker load`
over its SSH connection), copies the model from the other worker host,
starts the container and it serves again. No request fails; the
time from the replacement's launch to serving is printed. `down` leaves
nothing tagged.

Needs what .ci/setup-docker.sh sets up besides .ci/setup-ssh.sh.
"""
from __future__ import annotations

import json
import shutil
import time

import pytest

from support.awscluster import AwsConfig, up_with_metadata
from support.console import cli
from support.load import ClosedLoop, failed
from support.moto import ec2_client, nothing_tagged, replacement
from support.sshcluster import (
    containers,
    controller_events,
    controller_shown,
    docker_containers,
    docker_on,
    docker_over_ssh_missing,
    host_network,
    ssh_marks,
)
from support.waiting import wait_for

CLUSTER = "awsfresh"  # unique to this file
HOSTS = {"orchestrator": "orch", "worker1": "w1", "worker2": "w2"}

pytestmark = [*ssh_marks(docker_over_ssh_missing, "Docker over SSH"), pytest.mark.docker,
              pytest.mark.timeout(1800)]  # a first run builds the worker image on this machine (minutes)

net = host_network(*HOSTS.values(), docker=tuple(HOSTS.values()))


def test_a_replacement_instance_gets_the_worker_image_and_serves(gateway_moto, net, tiny_model, tmp_path):
    moto, w1, orch = gateway_moto, net.hosts["w1"], net.hosts["orch"]
    config = AwsConfig(tmp_path / "aws.toml", moto, net, HOSTS, CLUSTER, tiny_model, runtime="docker", spot=True,
                       autoscale={"heal_grace": 1},
                       ssh={"images": "ship", "host_grace": 3, "orchestrator_env": {"ORCH_FORWARD_TIMEOUT_S": "4"}})
    with up_with_metadata(config, up_timeout=1800) as up:
        url, instances = up.url, up.instances
        wait_for(lambda: containers(url).get("worker1-1") == "free", "worker1-1 serving", timeout=60)
        pool = json.loads((orch.workdir / "controller.json").read_text())["hosts"]
        image = next(m["images"]["worker"] for m in pool if m["host"]["name"] == "worker1")
        assert docker_on(orch, "image", "inspect", image, timeout=300).returncode == 0  # `up` left it in orch's engine

        loop = ClosedLoop(url, clients=4)
        wait_for(lambda: loop.count() >= 20, "the load running", timeout=30)
        ec2_client(moto).terminate_instances(InstanceIds=[instances["worker1"]])  # AWS reclaims it
        net.cut(w1)
        net.kill_services(w1)  # the machine is gone: its processes, containers and images too
        assert docker_containers(w1, CLUSTER)
        assert docker_on(w1, "rm", "-f", *docker_containers(w1, CLUSTER), timeout=300).returncode == 0
        assert docker_on(w1, "rmi", "-f", image, timeout=300).returncode == 0
        assert image not in docker_on(w1, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}",
                                      timeout=300).stdout.split()
        for model in w1.workdir.glob("model-*"):  # nor `up`'s copy of the model
            shutil.rmtree(model)

        new_id = wait_for(lambda: replacement(moto, CLUSTER, "worker1", instances["worker1"]),
                          "the controller launching a replacement for worker1", timeout=60)
        launched = time.monotonic()
        net.restore(w1)  # the replacement boots at worker1's mapped address, with neither image nor container
        with controller_shown(orch):
            wait_for(lambda: containers(url).get("worker1-1") == "free", "worker1-1 serving on the replacement",
                     timeout=600)
        print(f"\nfresh Docker instance: {time.monotonic() - launched:.1f} s from its launch to worker1-1 serving "
              "(the worker image shipped from the orchestrator's host)")
        before = loop.count()
        wait_for(lambda: loop.count() >= before + 20, "more answers", timeout=60)
        answers = loop.finish()
        assert failed(answers) == []
        assert docker_on(w1, "image", "inspect", image, timeout=300).returncode == 0  # the image is there now

    events = controller_events(orch)
    prepared = [e for e in events if e["kind"] == "prepare" and e.get("container") == "worker1"]
    assert prepared and f"image {image} shipped" in prepared[0]["reason"], events
    print(f"the controller's event: {prepared[0]['reason']}")
    assert any(e["kind"] == "heal" and e.get("container") == "worker1" and new_id in e["reason"] for e in events)
    assert "the model copied from worker2" in prepared[0]["reason"]
    # Errors there may be, none of the fresh instance's: worker1-1 with nowhere to go while its host was cut off
    # (no spare), and EC2 not asked once the metadata service above is gone.
    assert [e["reason"] for e in events if e["kind"] == "error" and (e.get("container") == "worker1"
                                                                    or "a look failed" in e["reason"])] == []

    down = cli("down", "--name", CLUSTER, "--yes", check=False)
    assert down.returncode == 0, down.stderr[-3000:]
    assert nothing_tagged(moto, CLUSTER)
    for h in HOSTS.values():  # the instances are gone on AWS; the test hosts stay: their containers go by hand
        if docker_containers(net.hosts[h], CLUSTER):
            docker_on(net.hosts[h], "rm", "-f", *docker_containers(net.hosts[h], CLUSTER), timeout=300)
