"""What a cluster is (its spec) and what was started for it (its state).

State lives per cluster name under the state directory (`~/.mlcluster`, or
`$MLCLUSTER_HOME`): `<home>/<name>/state.json`, written atomically with mode
0600 so a later `mlcluster` process can read it. It holds the orchestrator's
token but never cloud credentials.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mlcluster_contract import BACKENDS, DEFAULT_MODEL

from .durations import seconds_or_none
from .errors import ClusterNotFound, MlclusterError
from .resources import Resources

# What serves the model. onnx (ONNX Runtime fp32) is the default: faster than
# torch with the same labels; onnx-int8 is faster still but changed 4.5 % of the
# labels on the agreement guard, so it is asked for, not given (README, "Inference").
# BACKENDS (their names) are the contract the images share: mlcluster_contract.
DEFAULT_BACKEND = "onnx"
# Where machines come from (the registry in mlcluster/providers maps each to its implementation).
PROVIDERS = ("local", "ssh", "aws")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def home() -> Path:
    return Path(os.environ.get("MLCLUSTER_HOME") or Path.home() / ".mlcluster").expanduser()


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise MlclusterError(f"cluster name {name!r} is not allowed",
                             "use 1-40 lowercase letters, digits and dashes, starting with a letter or digit")
    return name


def cluster_dir(name: str) -> Path:
    return home() / check_name(name)


@dataclass
class ClusterSpec:
    """What the user asked for. Provider-specific settings (ssh hosts, aws
    region...) are in `provider_options`, read from the config file's
    `[ssh]` / `[aws]` table and owned by that provider's module."""
    name: str = "default"
    provider: str = "local"                 # local | ssh | aws
    runtime: str = "auto"                   # process | docker | auto: the provider's default (local: process,
                                            # Docker only when asked; ssh: the [ssh] table's, else docker)
    workers: int = 4                        # machines (the local provider simulates them)
    containers_per_worker: int = 2
    model: str = DEFAULT_MODEL              # hub id, local directory, or overhead-test
    backend: str = DEFAULT_BACKEND          # torch | onnx | onnx-int8 (see BACKENDS and the README)
    batch_max: int = 0                      # requests per forward pass (0: the backend's measured default)
    batch_wait_ms: float = -1.0             # how long a batch waits to fill (< 0: the backend's default)
    service_ms: float = 50.0                # only for model = overhead-test
    queue_limit: int = 100
    queue_timeout_s: float = 30.0
    autostop: str = ""                      # stop after this long serving nothing ("30m"; "": never)
    max_lifetime: str = ""                  # stop this long after the first `up` ("8h"; "": never)
    # Autoscaling (mlcluster/elastic; the [autoscale] table): off while max_containers is 0.
    min_containers: int = 0                 # never fewer serving containers (with max_containers: at least 1)
    max_containers: int = 0                 # never more: the hard cap
    target_ongoing: float = 0.0             # in flight + queued per container aimed for (0: a container's capacity)
    upscale_delay: float = 30.0             # seconds a wish for more must hold
    downscale_delay: float = 600.0          # seconds a wish for fewer must hold
    heal_grace: float = 5.0                 # seconds a dead worker stays down before it is restarted
    provider_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "ClusterSpec":
        check_name(self.name)
        if self.provider not in PROVIDERS:
            raise MlclusterError(f"unknown provider {self.provider!r}",
                                 f"choose {', '.join(PROVIDERS[:-1])} or {PROVIDERS[-1]}")
        if self.runtime not in ("process", "docker", "auto"):
            raise MlclusterError(f"unknown runtime {self.runtime!r}", "choose process, docker or auto")
        if not 1 <= self.workers <= 64:
            raise MlclusterError("--workers must be between 1 and 64")
        if not 1 <= self.containers_per_worker <= 16:
            raise MlclusterError("--containers-per-worker must be between 1 and 16")
        if self.queue_limit < 0:
            raise MlclusterError("the queue limit cannot be negative")
        if self.backend not in BACKENDS:
            raise MlclusterError(f"unknown backend {self.backend!r}", "choose " + ", ".join(BACKENDS))
        if not 0 <= self.batch_max <= 64:
            raise MlclusterError("--batch-max must be between 1 and 64 (0: the backend's default)")
        if self.batch_wait_ms > 1000:
            raise MlclusterError("--batch-wait-ms must be at most 1000")
        seconds_or_none(self.autostop, "autostop")
        seconds_or_none(self.max_lifetime, "max_lifetime")
        from .elastic.settings import autoscale_problem  # imports nothing of mlcluster: no cycle
        problem = autoscale_problem(self)
        if problem:
            raise MlclusterError(problem)
        return self


_SPEC_FIELDS = {f.name for f in dataclasses.fields(ClusterSpec)}


@dataclass
class ContainerRecord:
    """One worker container as the orchestrator reaches it."""
    id: str
    host: str
    port: int
    worker: str = ""       # the machine (or simulated machine) it runs on
    capacity: int = 1
    model: str = ""        # what it serves, when a roll started it ("": the cluster's spec says)
    version: str = ""      # its version label at the orchestrator (mlcluster/rollout; "": none given)


# 1: `spec` a free-form dict, no `version` field; 2: `spec` a ClusterSpec.
# `resources` (typed: mlcluster.resources) reads the shapes it had before its
# services had one record by their keys, so it needs no version of its own.
STATE_VERSION = 2


@dataclass
class ApiKeyRecord:
    """An API key of the public endpoint: its id and sha256, never the key (mlcluster/apikeys.py)."""
    id: str
    sha256: str
    created_at: float = 0.0


@dataclass
class ClusterState:
    """What was started for a cluster, saved as state.json (see the module docstring)."""
    name: str
    provider: str
    token: str
    worker_token: str = ""  # the workers' credential: only their orchestrator may call /run_model
    runtime: str = "process"
    orchestrator_url: str = ""
    spec: ClusterSpec = field(default_factory=ClusterSpec)  # what `up` was last asked for
    version: int = STATE_VERSION
    containers: list[ContainerRecord] = field(default_factory=list)
    # What the provider created (pids, container ids, instance ids, host
    # keys...). Written the moment something is created, so an interrupted
    # `up` can always be cleaned by `down`.
    resources: Resources = field(default_factory=Resources)
    created_at: float = field(default_factory=time.time)
    tls_cert: str = ""         # the public endpoint's certificate (PEM path) when it serves HTTPS ...
    tls_key: str = ""          # ... its key (PEM path, mode 0600)
    tls_fingerprint: str = ""  # ... and the sha256 of the certificate that clients pin (mlcluster/tls.py)
    api_keys: list[ApiKeyRecord] = field(default_factory=list)  # ids and hashes; keys required when any

    @property
    def dir(self) -> Path:
        return cluster_dir(self.name)

    def save(self) -> None:
        write_private_json(self.dir / "state.json", {**dataclasses.asdict(self), "resources": self.resources.to_json()})

    @classmethod
    def load(cls, name: str) -> "ClusterState":
        path = cluster_dir(name) / "state.json"
        if not path.exists():
            raise ClusterNotFound(name)
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, TypeError, AttributeError) as exc:
            raise MlclusterError(f"the state file {path} is unreadable: {exc}",
                                 f"`mlcluster down --name {name}` still finds what it started") from None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ClusterState":
        """A state from its JSON form, of this version or an older one."""
        version = data.pop("version", 1)
        if version > STATE_VERSION:
            raise ValueError(f"it was written by a newer mlcluster (state version {version})")
        data["containers"] = [ContainerRecord(**c) for c in data.get("containers", [])]
        data["resources"] = Resources.from_json(data.get("resources") or {}, data["name"])
        data["api_keys"] = [ApiKeyRecord(**k) for k in data.get("api_keys", [])]
        # Version 1 kept whatever part of the spec it had (possibly nothing):
        # the known fields are read, the cluster's own name and provider fill the gaps.
        spec = {"name": data["name"], "provider": data["provider"], **(data.get("spec") or {})}
        data["spec"] = ClusterSpec(**{k: v for k, v in spec.items() if k in _SPEC_FIELDS})
        return cls(**data)

    @classmethod
    def load_or_none(cls, name: str) -> Optional["ClusterState"]:
        try:
            return cls.load(name)
        except ClusterNotFound:
            return None


def write_private_json(path: Path, data: Any) -> None:
    """Atomically replace `path` with `data` as JSON, readable only by its owner."""
    write_private(path, json.dumps(data, indent=2, sort_keys=True))


def write_private(path: Path, text: str) -> None:
    """Atomically replace `path` with `text`, readable only by its owner
    (mode 0600 from the start, in a directory only the owner can enter)."""
    for directory in (home(), path.parent):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_cluster_dir(name: str) -> None:
    shutil.rmtree(cluster_dir(name), ignore_errors=True)


def known_clusters() -> list[str]:
    root = home()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "state.json").exists())
