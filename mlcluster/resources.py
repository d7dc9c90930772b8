"""What the providers created for a cluster: `ClusterState.resources`, saved in state.json.

Every provider's cluster keeps its hosts and its services in one place
(`hosts`, `services`: the deployment layer, mlcluster/deploy, writes them the
moment something runs); beside them, what a provider made itself: `docker` (a
local Docker cluster's network, volumes and images), `aws`, and `host_keys`
(ssh and aws). A part is None until its provider first touches it;
`Resources.is_empty()` says whether anything was recorded, so a failed first
`up` that made nothing leaves no trace.

The JSON form is the records' fields (`dataclasses.asdict`), parts that are
None left out; unknown keys in a file are ignored, missing ones take their
defaults, and the shapes files had before services had one record (a local
cluster's `processes` list, its `docker` part's containers, an ssh cluster's
`ssh` part) are read into the one of today (`Resources.from_json`). This module imports nothing of
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


LOCAL_HOST = "local"  # this machine's name among a cluster's hosts (a local cluster's only one)


@dataclass(frozen=True)
class HostConfig:
    """One machine a cluster's services run on: this machine (LOCAL_HOST), a host
    of the [ssh] table (providers/ssh/options.py) or an aws instance; recorded in
    the state by the deployment (mlcluster/deploy), so `down` and `logs` reach it
    even once the config no longer names it."""
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
    local: bool = False     # this machine (a LocalHost: no SSH; a local cluster's hosts)


@dataclass
class Service:
    """One service of a cluster, whatever provided its host: the orchestrator, a
    worker container (a process or a Docker container), an autostop watchdog or
    the controller. `runtime` says which runtime stops it (deploy/runtime.py)."""
    runtime: str = "process"    # process | docker
    host: str = ""              # the host's name (a key of Resources.hosts; LOCAL_HOST: this machine)
    port: int = 0               # where it is reached on its host (a local container: its port on 127.0.0.1)
    admin_port: int = 0         # the orchestrator's admin listener, on its host's 127.0.0.1 (0: none)
    pid: int = 0                # process runtime: the session leader's pid
    log: str = ""               # process runtime: its log file on the host
    container: str = ""         # docker runtime: the container's name
    image: str = ""             # docker runtime
    kind: str = "worker"        # orchestrator | worker | watchdog | controller
    command: str = ""           # an agent's command line: its settings (a changed one is restarted)
    worker: str = ""            # the simulated machine a local worker stands for (worker1..N), "" elsewhere


@dataclass
class DockerSetup:
    """What a local cluster with the Docker runtime has beside its containers
    (its services): all of it also carries the cluster's labels."""
    volumes: list[str] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)      # kind -> image tag
    network: str = ""                                          # the bridge network's id


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
    hosts: dict[str, HostConfig] = field(default_factory=dict)   # name -> how it was reached
    services: dict[str, Service] = field(default_factory=dict)   # service id -> where and how it runs
    docker: Optional[DockerSetup] = None
    aws: Optional[AWSResources] = None
    host_keys: dict[str, str] = field(default_factory=dict)  # "host:port" -> "keytype base64"
    # The cluster's first `up` with autostop (epoch): its lifetime counts from it (deploy/watchdog.py).
    autostop_started: Optional[float] = None

    def is_empty(self) -> bool:
        """True when no provider has recorded anything (a part it made, even empty, counts;
        this machine as a host is nothing made)."""
        made_hosts = any(not h.local for h in self.hosts.values())
        return not (made_hosts or self.services or self.host_keys) and self.docker is None and self.aws is None

    def of_kind(self, *kinds: str) -> dict[str, Service]:
        """The services of these kinds (orchestrator, worker, watchdog, controller), by id."""
        return {sid: s for sid, s in self.services.items() if s.kind in kinds}

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any], cluster: str = "") -> "Resources":
        """Today's shape, or one of before (`cluster`: the cluster's name, which
        its old Docker containers' names carry)."""
        docker, ssh, aws = data.get("docker"), data.get("ssh") or {}, data.get("aws")
        services = {s: Service(**_known(Service, r)) for s, r in data.get("services", {}).items()}
        services.update(_old_services(data, cluster))
        hosts = {**data.get("hosts", {}), **ssh.get("hosts", {})}
        return cls(hosts={n: HostConfig(**_known(HostConfig, h)) for n, h in hosts.items()}, services=services,
                   docker=DockerSetup(**_known(DockerSetup, docker)) if docker is not None else None,
                   aws=AWSResources(**_known(AWSResources, aws)) if aws is not None else None,
                   host_keys=dict(data.get("host_keys", {})),
                   # files written before it had one place kept an ssh cluster's in its ssh part
                   autostop_started=data.get("autostop_started", ssh.get("autostop_started")))


def _old_services(data: dict[str, Any], cluster: str) -> dict[str, Service]:
    """The services of a file written before they had one record: a local
    process cluster's `processes` list (`role` is today's `kind`), a local Docker
    cluster's `docker.containers` (container name -> id; the orchestrator's
    published ports beside them) and an ssh cluster's `ssh.services` (`kind`
    "" for the orchestrator and the workers)."""
    found: dict[str, Service] = {}
    for p in data.get("processes", []):
        # a worker's host is the simulated machine it stood for (the deployment's host records name them so)
        known = _known(Service, {k: v for k, v in p.items() if k not in ("runtime", "host", "kind")})
        found[p["id"]] = Service(runtime="process", host=p.get("worker") or LOCAL_HOST,
                                 kind=p.get("role", "worker"), **known)
    docker = data.get("docker") or {}
    for name in docker.get("containers", {}):
        sid = name.removeprefix(f"mlcluster-{cluster}-")
        found[sid] = Service(runtime="docker", host=LOCAL_HOST, container=name,
                             kind="orchestrator" if sid == "orchestrator" else "worker",
                             worker=sid.rsplit("-", 1)[0] if sid.startswith("worker") else "")
    if "orchestrator" in found and docker:
        found["orchestrator"].port = docker.get("orchestrator_port") or 0
        found["orchestrator"].admin_port = docker.get("admin_port") or 0
    for sid, r in (data.get("ssh") or {}).get("services", {}).items():
        kind = r.get("kind") or ("orchestrator" if sid == "orchestrator" else "worker")
        found[sid] = Service(**{**_known(Service, r), "kind": kind})
    return found
