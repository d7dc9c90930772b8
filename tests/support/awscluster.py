"""An aws cluster on the SSH test hosts: EC2 is moto's server (the
`gateway_moto` fixture of support/moto.py: on the test network's gateway,
where a controller on a test host reaches it) and each instance is mapped
(`address_map`) onto a test host, never onto moto's public IPs, which are
real AWS addresses.

    HOSTS = {"orchestrator": "orch", "worker1": "w1"}   # instance name -> test host
    net = host_network(*HOSTS.values())

    def test_x(gateway_moto, net, tiny_model, tmp_path):
        config = AwsConfig(tmp_path / "aws.toml", gateway_moto, net, HOSTS, "mine", tiny_model, workers=1)
        with up_with_metadata(config) as up:   # EC2 first, the key trusted, metadata service, `up`
            ...  up.url, up.instances["worker1"], up.imds.asked ...
        cli("down", "--name", "mine", "--yes")

`provision_on_test_hosts(config)` alone is the first half: what an `up` cut
short after EC2 leaves (a test then runs `up` itself)."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import paramiko

from mlcluster.config import build_spec, load_config
from mlcluster.providers.aws.provider import KEY_FILE
from mlcluster.state import ClusterState

from .aws import RecordingUI, make_provider, new_state
from .console import cli
from .imds import InstanceMetadata
from .moto import MotoServer
from .sshcluster import toml_value
from .sshhosts import SSHTestNetwork

# A cluster of 2 workers × 1 container that may shrink to 1 container, with short delays: under one client the
# controller parks one of `up`'s containers and scales its emptied instance away (test_elastic_aws_park.py,
# test_elastic_aws_second_up.py).
SHRINKING = {"min_containers": 1, "max_containers": 2, "target_ongoing": 1, "upscale_delay": 1, "downscale_delay": 3}


@dataclass
class AwsConfig:
    """An aws cluster's config file, its instances mapped onto SSH test hosts."""
    path: Path                 # where `write` puts it
    server: MotoServer         # EC2 (moto's server)
    net: SSHTestNetwork
    hosts: dict[str, str]      # instance name ("orchestrator", "worker1"...) -> test host name
    name: str                  # the cluster's
    model: str
    workers: int = 2
    containers_per_worker: int = 1
    runtime: str = "process"
    spot: bool = False
    top: dict = field(default_factory=dict)        # more top-level settings ({"service_ms": 25})
    autoscale: dict = field(default_factory=dict)  # the [autoscale] table
    ssh: dict = field(default_factory=dict)        # more [ssh] settings ({"host_grace": 3, "images": "ship"})

    def write(self, metadata_url: str = "") -> Path:
        """The file written (`metadata_url`: the instance metadata service the controller asks); its path."""
        mapping = {name: {"address": self.net.hosts[h].address, "workdir": str(self.net.hosts[h].workdir)}
                   for name, h in self.hosts.items()}
        aws = {"region": "us-east-1", "endpoint_url": self.server.url, "allowed_cidr": str(self.net.subnet),
               "ssh_user": "root", "ssh_timeout_s": 60, **({"spot": True} if self.spot else {}),
               "address_map": mapping, **({"metadata_url": metadata_url} if metadata_url else {})}
        ssh = {"python": sys.executable, "connect_timeout": 3, "reach_timeout": 20,
               # the controller's key goes where the test hosts' sshd reads, never ~/.ssh of this machine
               "authorized_keys": str(self.net.authorized_keys), **self.ssh}
        top = {"name": self.name, "provider": "aws", "workers": self.workers,
               "containers_per_worker": self.containers_per_worker, "model": self.model, "runtime": self.runtime,
               **self.top}
        tables = [("", top), ("[autoscale]", self.autoscale), ("[aws]", aws), ("[ssh]", ssh)]
        self.path.write_text("".join((f"{title}\n" if title else "") + "".join(
            f"{k} = {toml_value(v)}\n" for k, v in values.items()) for title, values in tables if values))
        return self.path


def provision_on_test_hosts(config: AwsConfig) -> ClusterState:
    """What an `up` cut short after EC2 leaves: the config written, the
    instances and the cluster's key pair made in moto (through the provider);
    the test hosts accept that key, as the instances would. Its state."""
    spec = build_spec(load_config(config.write()))
    state = new_state(spec)
    make_provider().provision(spec, state, RecordingUI())
    public = paramiko.Ed25519Key.from_private_key_file(str(state.dir / KEY_FILE))
    with open(config.net.authorized_keys, "a") as f:
        f.write(f"{public.get_name()} {public.get_base64()} mlcluster-{config.name}\n")
    return state


@dataclass
class AwsUp:
    """An aws cluster `up_with_metadata` started."""
    state: ClusterState         # as provisioned, before `up`
    instances: dict[str, str]   # instance name -> id, as provisioned
    imds: InstanceMetadata      # the orchestrator instance's metadata service (what it was asked: `asked`)
    url: str                    # the orchestrator's


@contextmanager
def up_with_metadata(config: AwsConfig, up_timeout: float = 600.0) -> Iterator[AwsUp]:
    """`provision_on_test_hosts`, then the orchestrator instance's metadata
    service on the network's gateway (the controller's credentials: its
    instance profile's, never the user's), the config naming it, and
    `mlcluster up`, which must succeed. The metadata service stops at the end;
    the cluster stays (the test runs `down`)."""
    state = provision_on_test_hosts(config)
    instances = dict(state.resources.aws.instances)
    with InstanceMetadata(config.server.url, instances["orchestrator"], bind=config.net.gateway) as imds:
        config.write(metadata_url=imds.url)
        up = cli("up", "--config", str(config.path), "--yes", timeout=up_timeout, check=False)
        assert up.returncode == 0, up.stderr[-3000:]
        orchestrator = config.net.hosts[config.hosts["orchestrator"]]
        yield AwsUp(state, instances, imds, f"http://{orchestrator.address}:8000")
