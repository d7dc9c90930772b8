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
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from mlcluster.config import build_spec, load_config
from mlcluster.providers.aws.provider import KEY_FILE
from support.aws import RecordingUI, make_provider, new_state
from support.console import cli
from support.imds import InstanceMetadata
from support.load import ClosedLoop, failed
from support.moto import MotoServer, ec2_client, isolated, nothing_tagged
from support.sshcluster import docker_over_ssh_missing, host_network, ssh_marks, status
from support.waiting import wait_for

CLUSTER = "awsfresh"  # unique to this file
HOSTS = {"orchestrator": "orch", "worker1": "w1", "worker2": "w2"}

pytestmark = [*ssh_marks(docker_over_ssh_missing, "Docker over SSH"), pytest.mark.docker,
              pytest.mark.timeout(1800)]  # a first run builds the worker image on this machine (minutes)

net = host_network(*HOSTS.values(), docker=tuple(HOSTS.values()))


@pytest.fixture(scope="module")
def gateway_moto(net):
    server = MotoServer(ip_address=net.gateway)  # the controller on "orch" reaches it there
    server.start()
    yield server
    server.stop()


@pytest.fixture
def moto(gateway_moto, monkeypatch, tmp_path):
    yield isolated(gateway_moto, monkeypatch, tmp_path)
    gateway_moto.reset()


def dk(host, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The docker client against a test host's own engine (not over SSH)."""
    return subprocess.run(["docker", "-H", host.docker_host, *args], capture_output=True, text=True, timeout=timeout)


def ours(host) -> list[str]:
    return dk(host, "ps", "-aq", "--filter", f"label=mlcluster.cluster={CLUSTER}").stdout.split()


def write_config(path: Path, server, network, model: str, metadata_url: str = "") -> Path:
    mapping = ", ".join(f'{name} = {{ address = "{network.hosts[h].address}", workdir = "{network.hosts[h].workdir}" }}'
                        for name, h in HOSTS.items())
    path.write_text("\n".join([
        f'name = "{CLUSTER}"', 'provider = "aws"', "workers = 2", "containers_per_worker = 1",
        f'model = "{model}"', 'runtime = "docker"',
        "[autoscale]", "heal_grace = 1",
        "[aws]", 'region = "us-east-1"', f'endpoint_url = "{server.url}"', f'allowed_cidr = "{network.subnet}"',
        'ssh_user = "root"', "ssh_timeout_s = 60", "spot = true", f"address_map = {{ {mapping} }}",
        *([f'metadata_url = "{metadata_url}"'] if metadata_url else []),
        "[ssh]", 'images = "ship"', f'python = "{sys.executable}"', "connect_timeout = 3", "reach_timeout = 20",
        f'authorized_keys = "{network.authorized_keys}"', "host_grace = 3",
        'orchestrator_env = { ORCH_FORWARD_TIMEOUT_S = "4" }',
    ]) + "\n")
    return path


def replacements(server, name: str, old: str) -> list[str]:
    found = ec2_client(server).describe_instances(
        Filters=[{"Name": "tag:mlcluster:cluster", "Values": [CLUSTER]}, {"Name": "tag:mlcluster:name", "Values": [name]},
                 {"Name": "instance-state-name", "Values": ["running"]}])["Reservations"]
    return [i["InstanceId"] for r in found for i in r["Instances"] if i["InstanceId"] != old]


def controller_events(network) -> list[dict]:
    path = network.hosts["orch"].workdir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def serving(url: str, cid: str) -> bool:
    return {c["id"]: c["status"] for c in status(url)["containers"]}.get(cid) == "free"


def test_a_replacement_instance_gets_the_worker_image_and_serves(moto, net, tiny_model, tmp_path):
    config = write_config(tmp_path / "aws.toml", moto, net, tiny_model)
    spec = build_spec(load_config(config))
    state = new_state(spec)
    make_provider().provision(spec, state, RecordingUI())  # EC2 first: the orchestrator's instance id
    public = paramiko.Ed25519Key.from_private_key_file(str(state.dir / KEY_FILE))
    with open(net.authorized_keys, "a") as f:  # the test hosts accept the cluster's key, as the instances would
        f.write(f"{public.get_name()} {public.get_base64()} mlcluster-{CLUSTER}\n")
    instances = dict(state.resources.aws.instances)
    w1, orch = net.hosts["w1"], net.hosts["orch"]
    with InstanceMetadata(moto.url, instances["orchestrator"], bind=net.gateway) as imds:
        write_config(config, moto, net, tiny_model, metadata_url=imds.url)
        up = cli("up", "--config", str(config), "--yes", timeout=1800, check=False)
        assert up.returncode == 0, up.stderr[-3000:]
        url = f"http://{orch.address}:8000"
        wait_for(lambda: serving(url, "worker1-1"), "worker1-1 serving", timeout=60)
        pool = json.loads((orch.workdir / "controller.json").read_text())["hosts"]
        image = next(m["images"]["worker"] for m in pool if m["host"]["name"] == "worker1")
        assert dk(orch, "image", "inspect", image).returncode == 0  # `up` left it in the orchestrator's engine

        loop = ClosedLoop(url, clients=4)
        wait_for(lambda: loop.count() >= 20, "the load running", timeout=30)
        ec2_client(moto).terminate_instances(InstanceIds=[instances["worker1"]])  # AWS reclaims it
        net.cut(w1)
        net.kill_services(w1)  # the machine is gone: its processes, containers and images too
        assert ours(w1) and dk(w1, "rm", "-f", *ours(w1)).returncode == 0
        assert dk(w1, "rmi", "-f", image).returncode == 0
        assert image not in dk(w1, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        for model in w1.workdir.glob("model-*"):  # nor `up`'s copy of the model
            shutil.rmtree(model)

        new_id = wait_for(lambda: next(iter(replacements(moto, "worker1", instances["worker1"])), ""),
                          "the controller launching a replacement for worker1", timeout=60)
        launched = time.monotonic()
        net.restore(w1)  # the replacement boots at worker1's mapped address, with neither image nor container
        try:
            wait_for(lambda: serving(url, "worker1-1"), "worker1-1 serving on the replacement", timeout=600)
        except AssertionError:  # what the controller did, in the failure's output
            print((orch.workdir / "controller.log").read_text()[-5000:], controller_events(net))
            raise
        print(f"\nfresh Docker instance: {time.monotonic() - launched:.1f} s from its launch to worker1-1 serving "
              "(the worker image shipped from the orchestrator's host)")
        before = loop.count()
        wait_for(lambda: loop.count() >= before + 20, "more answers", timeout=60)
        answers = loop.finish()
        assert failed(answers) == []
        assert dk(w1, "image", "inspect", image).returncode == 0  # the image is there now

    events = controller_events(net)
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
        if ours(net.hosts[h]):
            dk(net.hosts[h], "rm", "-f", *ours(net.hosts[h]))
