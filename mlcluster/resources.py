"""What the providers created for a cluster: `ClusterState.resources`, saved in state.json.

Each provider owns its part and writes it the moment something exists (see
providers/base.py): `processes` and `docker` (local), `ssh` (ssh, and aws
through it), `aws`, and `host_keys` (ssh and aws). A part is None until its
provider first touches it; `Resources.is_empty()` says whether any did, so a
failed first `up` that made nothing leaves no trace.

The JSON form is the records' fields (`dataclasses.asdict`), parts that are
None left out; unknown keys in a file are ignored, missing ones take their
defaults, so files of earlier versions load. This module imports nothing of
mlcluster, so state.py can use it and every provider can import it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The items of `data` that are fields of the dataclass `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class LocalProcess:
    """One process of a local cluster: the orchestrator and workers of the
    process runtime, and the autostop watchdog (either runtime)."""
    id: str            # orchestrator | worker<w>-<c> | watchdog
    role: str          # orchestrator | worker | watchdog
    worker: str        # the simulated machine ("" for the orchestrator)
    port: int          # on 127.0.0.1
    log: str           # its log file
    pid: int = 0
    admin_port: int = 0  # the orchestrator's admin listener, on 127.0.0.1 (0: none, an older cluster)


@dataclass
class LocalDocker:
    """A local cluster with the Docker runtime (everything also carries its labels)."""
    containers: dict[str, str] = field(default_factory=dict)  # container name -> Docker id
    volumes: list[str] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)      # kind -> image tag
    network: str = ""                                          # the bridge network's id
    orchestrator_port: Optional[int] = None                    # published on 127.0.0.1
    admin_port: Optional[int] = None                           # the admin listener, published on 127.0.0.1


@dataclass(frozen=True)
class HostConfig:
    """One machine as the ssh provider uses it: parsed from the [ssh] table
    (providers/ssh/options.py) or made from the aws provider's instances, and
    recorded in the state by the deployment (deploy/remote.py), so `down` and `logs`
    reach it even once the config no longer names it."""
    name: str               # how messages and container ids name it
    address: str            # what this machine connects to (SSH, the orchestrator's URL)
    private_address: str    # what the orchestrator connects to (the workers' containers)
    user: str
    port: int
    key: str                # path of the private key ("" = the agent / ~/.ssh defaults)
    runtime: str            # docker | process
    python: str             # process runtime: interpreter with mlcluster ("" = make a venv)
    workdir: str            # this cluster's directory on the host
    bind: str               # the address services listen on


@dataclass
class SSHService:
    """One service (the orchestrator, a worker container, an autostop
    watchdog) on an ssh host; `runtime` says which runtime stops it
    (deploy/runtime.py)."""
    runtime: str = "process"    # process | docker
    host: str = ""              # the host's name (a key of SSHResources.hosts)
    port: int = 0
    admin_port: int = 0         # the orchestrator's admin listener, on the host's 127.0.0.1 (0: none)
    pid: int = 0                # process runtime: the session leader's pid
    log: str = ""               # process runtime: its log file on the host
    container: str = ""         # docker runtime: the container's name
    image: str = ""             # docker runtime
    kind: str = ""              # "watchdog" for an autostop watchdog ("": the orchestrator or a worker)
    command: str = ""           # a watchdog's command line: its settings (a changed one is restarted)


@dataclass
class SSHResources:
    hosts: dict[str, HostConfig] = field(default_factory=dict)       # name -> how it was reached
    services: dict[str, SSHService] = field(default_factory=dict)    # service id -> where it runs

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SSHResources":
        return cls(hosts={n: HostConfig(**_known(HostConfig, h)) for n, h in data.get("hosts", {}).items()},
                   services={s: SSHService(**_known(SSHService, r)) for s, r in data.get("services", {}).items()})


@dataclass
class AWSResources:
    """What the aws provider made (all of it also tagged with the cluster's name)."""
    region: str = ""
    instances: dict[str, str] = field(default_factory=dict)       # orchestrator | worker<i> -> instance id
    security_group: str = ""
    key_pair: str = ""           # the id of the key pair mlcluster created ("" when none)
    key_name: str = ""           # the key pair the instances use (created, or the user's own)
    key_file: str = ""           # its private key on this machine
    address_owners: dict[str, str] = field(default_factory=dict)  # public address -> instance id
    markets: dict[str, str] = field(default_factory=dict)         # instance name -> spot | on-demand
    instance_profile: str = ""   # the controller's IAM instance profile (and role) name ("" when none)


@dataclass
class Resources:
    """Every provider's part; see the module docstring."""
    processes: list[LocalProcess] = field(default_factory=list)
    docker: Optional[LocalDocker] = None
    ssh: Optional[SSHResources] = None
    aws: Optional[AWSResources] = None
    host_keys: dict[str, str] = field(default_factory=dict)  # "host:port" -> "keytype base64"
    # The cluster's first `up` with autostop (epoch): its lifetime counts from it (deploy/watchdog.py).
    autostop_started: Optional[float] = None

    def is_empty(self) -> bool:
        """True when no provider has recorded anything (a part it made, even empty, counts)."""
        return not (self.processes or self.host_keys) and all(p is None for p in (self.docker, self.ssh, self.aws))

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Resources":
        docker, ssh, aws = data.get("docker"), data.get("ssh"), data.get("aws")
        return cls(processes=[LocalProcess(**_known(LocalProcess, p)) for p in data.get("processes", [])],
                   docker=LocalDocker(**_known(LocalDocker, docker)) if docker is not None else None,
                   ssh=SSHResources.from_json(ssh) if ssh is not None else None,
                   aws=AWSResources(**_known(AWSResources, aws)) if aws is not None else None,
                   host_keys=dict(data.get("host_keys", {})),
                   # files written before it had one place kept an ssh cluster's in its ssh part
                   autostop_started=data.get("autostop_started", (ssh or {}).get("autostop_started")))
