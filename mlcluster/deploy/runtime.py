"""The deployment layer's contract: what runs after `up` (`Deployment`), and what
a runtime does on any host (`Runtime`: ProcessRuntime in process.py, DockerRuntime
in docker.py). What `start` returns is a `Service` (mlcluster.resources), saved in
the state, whose `runtime` tells `down` which runtime stops it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Protocol

from ..resources import Service
from ..state import ContainerRecord
from ..ui import Step

if TYPE_CHECKING:  # paramiko only where a remote host is used: a local cluster never loads it
    from .host import Host, ServiceSpec


@dataclass
class Deployment:
    """What runs after `up`: where this machine reaches the orchestrator, and
    where the orchestrator reaches each worker container."""
    orchestrator_url: str
    containers: list[ContainerRecord] = field(default_factory=list)


class Runtime(Protocol):
    name: str  # "process" | "docker"

    def prepare(self, host: Host, step: Step) -> None:
        """Make the host able to run services (an interpreter, or Docker and the images)."""

    def start(self, host: Host, service: ServiceSpec, marker: str, known: Optional[Service]) -> Service:
        """Start `service` unless what `known` records still runs as wanted; return its record."""

    def verify(self, host: Host, marker: str) -> None:
        """Fail at once, naming the host, when what `start` just started is not running."""

    def stop(self, host: Host, records: dict[str, Service], marker: str, only: bool = False) -> list[str]:
        """Stop the recorded services (and, unless `only`, anything else carrying
        `marker`); return sentences naming what still runs."""

    def running(self, host: Host, record: Service, marker: str) -> bool:
        """Whether the service `record` names still runs (or, a container, is restarting)."""

    def log_command(self, host: Host, record: Service, follow: bool, tail: int) -> str:
        """The shell command that prints the service's log on the host."""

    def close(self) -> None:
        """Release what the runtime holds on this machine (temporary files)."""
