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

from dataclasses import dataclass
from typing import ContextManager, Iterator, Optional, Protocol

from ..deploy.runtime import Deployment
from ..state import ClusterSpec, ClusterState
from ..ui import QuietUI


@dataclass
class CostRow:
    """One line of a cost plan: `count` of `unit` at `hourly_each` USD (None: unknown);
    `up_to`: the price is a ceiling, the bill may be lower (spot)."""
    what: str
    count: int
    unit: str
    hourly_each: Optional[float]
    up_to: bool = False

    @property
    def hourly(self) -> Optional[float]:
        return None if self.hourly_each is None else self.hourly_each * self.count


@dataclass
class CostPlan:
    """What `up` will create, with an estimated cost (a provider's `plan()`);
    `mlcluster.output` renders it."""
    cluster: str
    region: str
    instance_type: str
    lines: list[CostRow]
    notes: list[str]
    vcpus: Optional[int] = None   # the vCPUs the instances need (None: unknown type)

    @property
    def hourly(self) -> Optional[float]:
        costs = [row.hourly for row in self.lines]
        return None if any(c is None for c in costs) else sum(costs)


class Provider(Protocol):
    name: str

    def up(self, spec: ClusterSpec, state: ClusterState, ui: QuietUI) -> Deployment:
        """Start whatever of the cluster is missing and return what runs."""

    def down(self, name: str, state: Optional[ClusterState], ui: QuietUI) -> list[str]:
        """Remove everything the cluster started; return what is left, if anything."""

    def logs(self, state: ClusterState, target: Optional[str], follow: bool, tail: int) -> Iterator[str]:
        """Lines of the orchestrator's log (`target` None or "orchestrator") or
        of one container's (`target` a container id)."""

    def stopped_itself(self, state: ClusterState) -> Optional[str]:
        """Why and when the cluster's autostop watchdogs stopped it (one phrase),
        or None when they did not (or it cannot be told)."""

    def admin_channel(self, state: ClusterState) -> ContextManager[str]:
        """While open, a base URL on this machine's loopback that reaches the
        orchestrator's admin endpoints (which take the token) with nothing in
        cleartext on any network: the orchestrator itself when it listens on
        this machine, else a port forwarded through SSH to its host."""

    def details(self, state: ClusterState) -> dict[str, dict[str, str]]:
        """Extra facts per container id for `status` (instance id, type, zone...)."""

    def describe(self, state: ClusterState) -> str:
        """Where the cluster's things are, in a few words (the hosts or
        instances and how to find them): for `down`'s question, and for what
        `down --purge` may leave behind."""

    def plan(self, spec: ClusterSpec) -> Optional[CostPlan]:
        """What `up` would create and what it costs, to confirm before any call
        that spends money; None when nothing needs confirming (local, ssh)."""

