"""The provider interface: one contract that `local`, `ssh` and `aws` implement.

A provider owns the machines and the containers on them. It does not talk to
the orchestrator's API: `mlcluster.cluster` registers the containers it
returns and waits for them to be ready, the same way for every provider.

Rules for every implementation:
- `up` is idempotent: it looks at what already exists (in `state.resources`
  and, where it can, by the cluster's marker/tag) and creates only what is
  missing. Everything it creates is written to `state.resources` and saved
  (`state.save()`) the moment it exists, so an interrupted `up` is always
  cleaned by `down`.
- `down` removes everything the cluster created, finding it by marker or tag
  when the state is gone (`state` is then None, or, when the user named a
  provider/config for the lost cluster, a fresh ClusterState whose `spec` holds
  those settings and whose `resources` are empty), and returns a list of
  sentences naming whatever could not be removed (empty when all is gone).
- Errors a person can act on are raised as `MlclusterError`; provider-specific
  exceptions (boto3, paramiko, docker) never leak out of the provider module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Protocol

from ..state import ClusterSpec, ClusterState, ContainerRecord
from ..ui import QuietUI


@dataclass
class Deployment:
    """What runs after `up`: where this machine reaches the orchestrator, and
    where the orchestrator reaches each worker container."""
    orchestrator_url: str
    containers: list[ContainerRecord] = field(default_factory=list)


class Provider(Protocol):
    name: str

    def up(self, spec: ClusterSpec, state: ClusterState, ui: QuietUI) -> Deployment:
        """Start whatever of the cluster is missing and return what runs."""

    def down(self, name: str, state: Optional[ClusterState], ui: QuietUI) -> list[str]:
        """Remove everything the cluster started; return what is left, if anything."""

    def logs(self, state: ClusterState, target: Optional[str], follow: bool, tail: int) -> Iterator[str]:
        """Lines of the orchestrator's log (`target` None or "orchestrator") or
        of one container's (`target` a container id)."""

    def details(self, state: ClusterState) -> dict[str, dict[str, str]]:
        """Extra facts per container id for `status` (instance id, type, zone...)."""


def get_provider(name: str) -> Provider:
    if name == "local":
        from .local import LocalProvider
        return LocalProvider()
    if name == "ssh":
        from .ssh import SSHProvider
        return SSHProvider()
    if name == "aws":
        from .aws import AWSProvider
        return AWSProvider()
    from ..errors import MlclusterError
    raise MlclusterError(f"unknown provider {name!r}", "choose local, ssh or aws")
