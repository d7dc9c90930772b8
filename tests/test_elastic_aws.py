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
import sys
import time
from pathlib import Path

import paramiko
import pytest

from mlcluster.config import build_spec, load_config
from mlcluster.providers.aws.provider import KEY_FILE
from support.aws import RecordingUI, make_provider, new_state
from support.console import cli
from support.imds import CREDENTIALS, InstanceMetadata
from support.load import ClosedLoop, failed
from support.moto import MotoServer, ec2_client, isolated, nothing_tagged, tagged
from support.sshcluster import host_network, ssh_marks, status
from support.waiting import wait_for

pytestmark = ssh_marks()

CLUSTER = "awsheal"
HOSTS = {"orchestrator": "orch", "worker1": "w1", "worker2": "w2"}
net = host_network(*HOSTS.values())


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


def write_config(path: Path, server, net, model: str, metadata_url: str = "") -> Path:
    mapping = ", ".join(f'{name} = {{ address = "{net.hosts[h].address}", workdir = "{net.hosts[h].workdir}" }}'
                        for name, h in HOSTS.items())
    path.write_text("\n".join([
        f'name = "{CLUSTER}"', 'provider = "aws"', "workers = 2", "containers_per_worker = 1",
        f'model = "{model}"', 'runtime = "process"',
        "[autoscale]", "heal_grace = 1",
        "[aws]", 'region = "us-east-1"', f'endpoint_url = "{server.url}"', f'allowed_cidr = "{net.subnet}"',
        'ssh_user = "root"', "ssh_timeout_s = 60", "spot = true", f"address_map = {{ {mapping} }}",
        *([f'metadata_url = "{metadata_url}"'] if metadata_url else []),
        "[ssh]", f'python = "{sys.executable}"', "connect_timeout = 3", "reach_timeout = 20",
        f'authorized_keys = "{net.authorized_keys}"', "host_grace = 3",
    ]) + "\n")
    return path


def workers_of(server) -> dict[str, list[tuple[str, str]]]:
    """Worker name -> [(instance id, state)] of every instance tagged for the cluster."""
    found = ec2_client(server).describe_instances(
        Filters=[{"Name": "tag:mlcluster:cluster", "Values": [CLUSTER]}])["Reservations"]
    out: dict[str, list[tuple[str, str]]] = {}
    for i in (i for r in found for i in r["Instances"]):
        name = next((t["Value"] for t in i.get("Tags", []) if t["Key"] == "mlcluster:name"), "")
        out.setdefault(name, []).append((i["InstanceId"], i["State"]["Name"]))
    return out


def live_workers(server) -> int:
    return sum(1 for name, found in workers_of(server).items() if name != "orchestrator"
               for _, state in found if state in ("pending", "running"))


def controller_events(net) -> list[dict]:
    path = net.hosts["orch"].workdir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_reclaimed_spot_worker_is_replaced_and_serves_again(moto, net, tiny_model, tmp_path):
    config = write_config(tmp_path / "aws.toml", moto, net, tiny_model)
    spec = build_spec(load_config(config))
    state = new_state(spec)
    make_provider().provision(spec, state, RecordingUI())  # EC2 first: the orchestrator's instance id
    public = paramiko.Ed25519Key.from_private_key_file(str(state.dir / KEY_FILE))
    with open(net.authorized_keys, "a") as f:  # the test hosts accept the cluster's key, as the instances would
        f.write(f"{public.get_name()} {public.get_base64()} mlcluster-{CLUSTER}\n")
    instances = dict(state.resources.aws.instances)
    with InstanceMetadata(moto.url, instances["orchestrator"], bind=net.gateway) as imds:
        write_config(config, moto, net, tiny_model, metadata_url=imds.url)
        up = cli("up", "--config", str(config), "--yes", check=False)
        assert up.returncode == 0, up.stderr[-3000:]
        url = f"http://{net.hosts['orch'].address}:8000"
        wait_for(lambda: {c["id"]: c["status"] for c in status(url)["containers"]}.get("worker1-1") == "free",
                 "worker1-1 serving", timeout=30)
        settings = json.loads((net.hosts["orch"].workdir / "controller.json").read_text())["aws"]
        assert settings["cap"] == 2 and settings["instances"]["worker1"] == instances["worker1"]
        assert "testing" not in json.dumps(settings)  # nothing of this machine's credentials

        loop = ClosedLoop(url, clients=4)
        wait_for(lambda: loop.count() >= 20, "the load running", timeout=30)
        reclaimed = time.monotonic()
        ec2_client(moto).terminate_instances(InstanceIds=[instances["worker1"]])  # AWS reclaims it
        net.cut(net.hosts["w1"])
        net.kill_services(net.hosts["w1"])  # the machine is gone, its processes too

        def replacement() -> str:
            return next((i for i, s in workers_of(moto).get("worker1", [])
                         if i != instances["worker1"] and s == "running"), "")
        new_id = wait_for(replacement, "the controller launching a replacement for worker1", timeout=45)
        launched = time.monotonic() - reclaimed
        assert live_workers(moto) <= 2  # the cap
        net.restore(net.hosts["w1"])  # the replacement boots at worker1's mapped address, without our services
        try:
            wait_for(lambda: {c["id"]: c["status"] for c in status(url)["containers"]}.get("worker1-1") == "free",
                     "worker1-1 serving on the replacement", timeout=60)
        except AssertionError:  # what the controller did, in the failure's output
            print((net.hosts["orch"].workdir / "controller.log").read_text()[-5000:], controller_events(net))
            raise
        print(f"replacement launched {launched:.1f} s after the reclaim; worker1-1 served again after "
              f"{time.monotonic() - reclaimed:.1f} s")
        pinned = json.loads((net.hosts["orch"].workdir / "controller-aws.json").read_text())["hosts"]["worker1"]
        assert pinned["id"] == new_id and pinned["key"].split() == net.hosts["w1"].host_public_key().split()[:2]
        before = loop.count()
        wait_for(lambda: loop.count() >= before + 20, "more answers", timeout=30)
        answers = loop.finish()
        assert failed(answers) == []
        assert imds.asked[CREDENTIALS] >= 1  # the controller's credentials came from the instance profile

    kinds = [(e["kind"], e.get("container", "")) for e in controller_events(net)]
    heal = [e for e in controller_events(net) if e["kind"] == "heal" and e.get("container") == "worker1"]
    assert heal and new_id in heal[0]["reason"] and "(spot)" in heal[0]["reason"], kinds
    assert "terminated" in heal[0]["reason"] or "shutting-down" in heal[0]["reason"]
    assert any(k == "heal" and c == "worker1-1" for k, c in kinds), kinds  # its container started there
    assert live_workers(moto) == 2
    assert tagged(moto, CLUSTER)["instance_profiles"] == [f"mlcluster-{CLUSTER}-controller"]  # while it exists

    down = cli("down", "--name", CLUSTER, "--yes", check=False)
    assert down.returncode == 0, down.stderr[-3000:]
    assert nothing_tagged(moto, CLUSTER)
