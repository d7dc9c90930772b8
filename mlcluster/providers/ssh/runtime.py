"""What the ssh provider asks of a runtime on a host: the contract that
`ProcessRuntime` (process.py) and `DockerRuntime` (docker.py) implement.

A service's record (what `start` returns) is an `SSHService`, saved in the
cluster's state under resources.ssh.services; its `runtime` tells `down`
which runtime stops it.
"""
from __future__ import annotations

from typing import Optional, Protocol

from ...resources import SSHService
from ...ui import Step
from .host import RemoteHost, ServiceSpec


class RemoteRuntime(Protocol):
    name: str  # "process" | "docker"

    def prepare(self, host: RemoteHost, step: Step) -> None:
        """Make the host able to run services (an interpreter, or Docker and the images)."""

    def start(self, host: RemoteHost, service: ServiceSpec, marker: str, known: Optional[SSHService]) -> SSHService:
        """Start `service` unless what `known` records still runs as wanted; return its record."""

    def verify(self, host: RemoteHost, marker: str) -> None:
        """Fail at once, naming the host, when what `start` just started is not running."""

    def stop(self, host: RemoteHost, records: dict[str, SSHService], marker: str, only: bool = False) -> list[str]:
        """Stop the recorded services (and, unless `only`, anything else carrying
        `marker`); return sentences naming what still runs."""

    def log_command(self, host: RemoteHost, record: SSHService, follow: bool, tail: int) -> str:
        """The shell command that prints the service's log on the host."""

    def close(self) -> None:
        """Release what the runtime holds on this machine (temporary files)."""
