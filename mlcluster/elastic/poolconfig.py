"""What the controller of an ssh cluster is started with: one JSON file
(mode 0600, on the orchestrator's host), written by `up` (elastic/pool_setup.py),
read by the controller (elastic/pool.py).

It holds the admin token and how each worker container is started (its
environment holds the worker token), and the path of the controller's own SSH
key on that host, never the user's key; the pool hosts' host keys are pinned
here (recorded by `up`): the controller never trusts a key on first use.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..resources import HostConfig
from .policy import AutoscaleConfig

CONFIG_FILE = "controller.json"
STATE_FILE = "controller-state.json"


def pick(cls: type, data: dict) -> dict:
    """The items of `data` that are fields of the dataclass `cls` (an older or newer file still loads)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class PoolMember:
    """A host of the pool as the controller reaches it."""
    host: HostConfig     # its key: the controller's key on the orchestrator's host
    host_key: str        # "type base64", pinned
    python: str          # the interpreter the services run with there
    model: str           # the model reference on this host (a directory there, or a hub id)
    slots: int           # containers it may hold (placement.py's room)
    runtime: str = "process"  # or "docker" (elastic/poolruntime.py)
    images: dict[str, str] = field(default_factory=dict)  # docker: `up`'s image tag by role there


@dataclass
class WorkerSpec:
    """One of `up`'s worker containers and how it was started."""
    id: str
    home: str            # the pool host `up` placed it on
    port: int
    env: dict[str, str]
    model_dir: str = ""
    pid: int = 0
    log: str = ""


@dataclass
class AWSFleet:
    """How the controller of an aws cluster replaces a lost worker instance
    (elastic/aws_fleet.py): EC2 with the orchestrator instance's profile
    (boto3's chain on that host, never the user's credentials)."""
    region: str
    instances: dict[str, str]      # worker name -> instance id, as `up` left them
    cap: int                       # the most worker instances that may exist (providers/aws/fleet.py worker_cap)
    image_id: str
    root_device: str
    instance_type: str
    key_name: str
    security_group: str
    volume_gb: int
    user_data: str                 # `up`'s first-boot script, and the controller's key for `user`
    zones: list[list[str]] = field(default_factory=list)   # [zone, subnet], the orchestrator's first
    orchestrator: str = ""         # its own instance: nothing is launched once it is going (`down`)
    spot: bool = False
    fallback: str = "on-demand"
    user: str = "ec2-user"
    ssh_port: int = 22
    look_s: float = 12.0           # EC2 is asked this often, not every look
    endpoint_url: str = ""         # emulators only (moto): EC2's endpoint
    metadata_url: str = ""         # emulators only: the instance metadata service (AWS_EC2_METADATA_SERVICE_ENDPOINT)
    address_map: dict[str, str] = field(default_factory=dict)  # tests only: instance name -> address
    workdirs: dict[str, str] = field(default_factory=dict)     # tests only: instance name -> its workdir


# The controller's environment on aws: the instance profile's keys come from the metadata service, which
# boto3 gives one try of 1 s by default; a busy orchestrator host can miss that, and the fleet then cannot
# act until its next look.
METADATA_RETRIES = {"AWS_METADATA_SERVICE_TIMEOUT": "5", "AWS_METADATA_SERVICE_NUM_ATTEMPTS": "3"}


@dataclass
class PoolConfig:
    cluster: str
    admin_url: str       # the orchestrator's admin listener, on its host's loopback
    token: str
    worker_port: int     # the first port a stand-in tries on its host
    host_grace_s: float
    heal_grace_s: float
    host: str = ""       # the orchestrator's host, where the controller runs
    idle_s: float = 0.0  # autostop on this host (the controller is its agent: deploy/agent.py's clock); 0: off
    deadline: float = 0.0  # max_lifetime's end, epoch seconds; 0: none
    docker: str = ""     # how docker is called on the orchestrator's host when it uses the Docker runtime (autostop)
    hosts: list[PoolMember] = field(default_factory=list)
    workers: list[WorkerSpec] = field(default_factory=list)
    aws: Optional[AWSFleet] = None  # an aws cluster: lost worker instances are replaced
    # Autoscaling (--max-containers; elastic/poolscaler.py); None: the cluster's size is fixed.
    # Its target_ongoing 0: each container's capacity as the orchestrator has it.
    autoscale: Optional[AutoscaleConfig] = None
    local: bool = False  # a local Docker cluster: the controller, its hosts and containers on this machine

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PoolConfig":
        data = json.loads(text)
        hosts = [PoolMember(**{**pick(PoolMember, m), "host": HostConfig(**pick(HostConfig, m["host"]))})
                 for m in data["hosts"]]
        workers = [WorkerSpec(**pick(WorkerSpec, w)) for w in data["workers"]]
        fleet = AWSFleet(**pick(AWSFleet, data["aws"])) if data.get("aws") else None
        scale = AutoscaleConfig(**pick(AutoscaleConfig, data["autoscale"])) if data.get("autoscale") else None
        return cls(**{**pick(cls, data), "hosts": hosts, "workers": workers, "aws": fleet, "autoscale": scale})

    def digest(self) -> str:
        """What the controller runs with, but the workers' pids and logs (a healed
        worker's new pid is no reason to restart it: it reads them again)."""
        data = dataclasses.asdict(self)
        for w in data["workers"]:
            w["pid"], w["log"] = 0, ""
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def member(self, name: str) -> PoolMember:
        return next(m for m in self.hosts if m.host.name == name)


@dataclass
class StandIn:
    """A container the controller started on another host for one of `up`'s."""
    id: str              # "<up's id>-on-<host>"
    of: str              # up's container id
    host: str
    port: int
    pid: int
    log: str
    leaving: bool = False  # drained: stopped once the orchestrator lets it go


@dataclass
class Scaled:
    """A container the controller started to follow the load (autoscaling)."""
    id: str              # "<host>-scale<serial>"
    host: str
    port: int
    pid: int
    log: str
    serial: int
    leaving: bool = False  # drained: stopped once the orchestrator lets it go


def load_stand_ins(text: str) -> list[StandIn]:
    try:
        return [StandIn(**pick(StandIn, s)) for s in json.loads(text)["stand_ins"]]
    except (ValueError, KeyError, TypeError):
        return []


def load_scaled(text: str) -> list[Scaled]:
    try:
        return [Scaled(**pick(Scaled, s)) for s in json.loads(text).get("scaled", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def dump_state(stand_ins: list[StandIn], workers: list[WorkerSpec], scaled: tuple[Scaled, ...] = (),
               away: Optional[dict[str, str]] = None) -> dict:
    """The controller's state file: its stand-ins, the pid of each of `up`'s workers (a healed one's new),
    the containers it started to scale and `up`'s it scaled away (id -> "draining" or "parked")."""
    return {"stand_ins": [dataclasses.asdict(s) for s in stand_ins], "pids": {w.id: w.pid for w in workers},
            "scaled": [dataclasses.asdict(s) for s in scaled], "away": dict(away or {})}


def load_away(text: str) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in json.loads(text).get("away", {}).items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def healed_pids(text: str) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads(text)["pids"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def started_by(text: str) -> set[str]:
    """The ids of the containers a controller started (its stand-ins and those it scaled up), from its
    state file's text: a second `up` must not take them for stale ones ("" or no such file: none)."""
    return {s.id for s in load_stand_ins(text)} | {s.id for s in load_scaled(text)} if text.strip() else set()


def started_here(directory: Path) -> set[str]:
    """`started_by` of the controller whose state file is in `directory` (a local Docker cluster's)."""
    try:
        return started_by((directory / STATE_FILE).read_text())
    except OSError:
        return set()
