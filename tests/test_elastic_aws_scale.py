"""Autoscaling on aws (issue 20): moto's server on the SSH test network's
gateway, instances mapped (`address_map`) onto SSH test hosts, the instance
metadata service of the orchestrator's instance there too. One worker
instance of one container, --min-containers 1 --max-containers 2: under a
closed-loop load the controller on the orchestrator's host launches a tagged
worker instance (spot, with the instance profile's credentials) within the
cap, copies the model onto it and serves from a container there; the load
gone, it drains and stops that container and terminates the instance (never
the orchestrator's, never up's). No request fails; nothing tagged is left
after `down`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import paramiko
import pytest

from mlcluster.config import build_spec, load_config
from mlcluster.providers.aws.provider import KEY_FILE
from support.aws import RecordingUI, make_provider, new_state
from support.console import cli
from support.imds import CREDENTIALS, InstanceMetadata
from support.load import ClosedLoop, failed
from support.moto import MotoServer, ec2_client, isolated, nothing_tagged
from support.sshcluster import host_network, ssh_marks, status
from support.waiting import wait_for

pytestmark = ssh_marks()

CLUSTER = "awsscale"  # unique to this file
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


def write_config(path: Path, server, network, model: str, metadata_url: str = "") -> Path:
    mapping = ", ".join(f'{name} = {{ address = "{network.hosts[h].address}", workdir = "{network.hosts[h].workdir}" }}'
                        for name, h in HOSTS.items())
    path.write_text("\n".join([
        f'name = "{CLUSTER}"', 'provider = "aws"', "workers = 1", "containers_per_worker = 1",
        f'model = "{model}"', 'runtime = "process"',
        "[autoscale]", "min_containers = 1", "max_containers = 2", "target_ongoing = 1", "upscale_delay = 1",
        "downscale_delay = 3",
        "[aws]", 'region = "us-east-1"', f'endpoint_url = "{server.url}"', f'allowed_cidr = "{network.subnet}"',
        'ssh_user = "root"', "ssh_timeout_s = 60", "spot = true", f"address_map = {{ {mapping} }}",
        *([f'metadata_url = "{metadata_url}"'] if metadata_url else []),
        "[ssh]", f'python = "{sys.executable}"', "connect_timeout = 3", "reach_timeout = 20",
        f'authorized_keys = "{network.authorized_keys}"', "host_grace = 3",
    ]) + "\n")
    return path


def workers(server) -> dict[str, list[tuple[str, str]]]:
    """Instance name -> [(id, state)] of every instance tagged for the cluster."""
    found = ec2_client(server).describe_instances(
        Filters=[{"Name": "tag:mlcluster:cluster", "Values": [CLUSTER]}])["Reservations"]
    out: dict[str, list[tuple[str, str]]] = {}
    for i in (i for r in found for i in r["Instances"]):
        name = next((t["Value"] for t in i.get("Tags", []) if t["Key"] == "mlcluster:name"), "")
        out.setdefault(name, []).append((i["InstanceId"], i["State"]["Name"]))
    return out


def live_workers(server) -> list[str]:
    return sorted(name for name, found in workers(server).items() if name != "orchestrator"
                  for _, state in found if state in ("pending", "running"))


def controller_events(net) -> list[dict]:
    path = net.hosts["orch"].workdir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_load_launches_a_tagged_worker_within_the_cap_and_its_end_terminates_it(moto, net, tiny_model, tmp_path):
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
        settings = json.loads((net.hosts["orch"].workdir / "controller.json").read_text())
        assert settings["aws"]["cap"] == 2 and settings["autoscale"]["max_containers"] == 2
        assert live_workers(moto) == ["worker1"]

        loop = ClosedLoop(url, clients=4, watch=True)
        caps: list[int] = []
        try:
            def serving_there() -> bool:
                caps.append(len(live_workers(moto)))
                return any(c["id"].startswith("worker2-") and c["status"] in ("free", "busy")
                           for c in status(url)["containers"])
            try:
                wait_for(serving_there, "a container serving on a new worker instance", timeout=90, interval=0.5)
            except AssertionError:
                print((net.hosts["orch"].workdir / "controller.log").read_text()[-5000:], controller_events(net))
                raise
            wait_for(lambda: sum(1 for a in list(loop.answers) if a.container.startswith("worker2-")) >= 10,
                     "answers from worker2's container", timeout=30)
            assert max(caps) <= 2 and live_workers(moto) == ["worker1", "worker2"]  # the cap: 2 containers of 1
            shown = wait_for(lambda: (lambda a: a if a.get("current") == 2 else None)(
                json.loads(cli("status", "--name", CLUSTER, "--json").stdout).get("autoscale") or {}),
                "status --json showing 2 containers", timeout=30, interval=0.5)
            assert (shown["min"], shown["max"], shown["target"], shown["desired"]) == (1, 2, 1, 2), shown
        finally:
            answers = loop.finish()
        assert loop.most() <= 2
        wait_for(lambda: live_workers(moto) == ["worker1"], "worker2 terminated once its container is gone",
                 timeout=60, interval=0.5)
        assert [c["id"] for c in status(url)["containers"]] == ["worker1-1"]
        assert failed(answers) == [] and len(answers) > 30
        assert imds.asked[CREDENTIALS] >= 1  # the profile's credentials, never the user's
        assert [s for _, s in workers(moto)["orchestrator"]] == ["running"]

    found = controller_events(net)
    ups = [e["reason"] for e in found if e["kind"] == "scale_up"]
    downs = [e["reason"] for e in found if e["kind"] == "scale_down"]
    assert any("launched worker2" in r and "spot" in r for r in ups), found
    assert any("started worker2-scale1 on worker2" in r for r in ups), found
    assert any("draining worker2-scale1" in r for r in downs), found
    assert any("terminated worker2" in r and "held no container" in r for r in downs), found
    print("\n" + "\n".join(f"{e['kind']:<10} {e['current']} -> {e['desired']}  {e['reason']}" for e in found))

    down = cli("down", "--name", CLUSTER, "--yes", check=False)
    assert down.returncode == 0, down.stderr[-3000:]
    assert nothing_tagged(moto, CLUSTER)
