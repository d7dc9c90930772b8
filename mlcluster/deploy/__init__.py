"""What runs on machines, whoever provided them: the deployment layer.

A provider (mlcluster/providers) says which machines a cluster has (a
`RemoteOptions`: its host records and the deployment settings); this package
starts, checks, stops and reads the logs of the services on them, through the
entry functions below, the same for every provider:
- `host`: a Host (run -> Result, put, stream): `LocalHost` (this machine) and
  `RemoteHost` (over SSH); the two runtimes (`process.ProcessRuntime`,
  `docker.DockerRuntime`) run on either, behind one contract (`runtime.Runtime`);
  what is really this machine's is a small part of each (`localhost`: its
  processes found by marker; `DockerRuntime.here`: containers published on
  127.0.0.1 on the cluster's network);
- `remote`: the cluster onto its hosts, whoever provided them (the ssh provider's
  hosts from the config, the aws provider's instances, this machine's for the
  local provider); `reading`: what is read from a deployed cluster;
- `watchdog`: autostop on any host, one agent per host (`agent.py`).

Nothing here imports a provider. The submodules are imported where used, so a
local `list` or `status` never loads paramiko, nor does a local `up`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ContextManager, Iterator, Optional

if TYPE_CHECKING:
    from ..elastic.poolconfig import AWSFleet
    from ..state import ClusterSpec, ClusterState
    from ..ui import QuietUI
    from .options import RemoteOptions
    from .runtime import Deployment


def deploy(spec: ClusterSpec, state: ClusterState, hosts: RemoteOptions, ui: QuietUI,
           fleet: Optional[AWSFleet] = None) -> Deployment:
    """Start what is missing of the cluster on `hosts` (what runs is kept, what the
    config no longer has is stopped), recording every service in `state`; what runs.
    `fleet`: how the aws controller replaces a lost instance."""
    from .remote import RemoteDeployment
    return RemoteDeployment().up(spec, state, hosts, ui, fleet)


def remove(name: str, state: Optional[ClusterState], hosts: Optional[RemoteOptions], ui: QuietUI) -> list[str]:
    """Stop the cluster's services on every host recorded or in `hosts` (None: the config
    changed or is gone); sentences naming what is left, if anything."""
    from .remote import RemoteDeployment
    return RemoteDeployment().down(name, state, hosts, ui)


def logs(state: ClusterState, hosts: Optional[RemoteOptions], target: Optional[str], follow: bool,
         tail: int) -> Iterator[str]:
    """Lines of the orchestrator's log (`target` None) or of one container's, from its host."""
    from . import reading
    return reading.logs(state, hosts, target, follow, tail)


def admin_channel(state: ClusterState, hosts: Optional[RemoteOptions]) -> ContextManager[str]:
    """The orchestrator's admin endpoints, forwarded over SSH to this machine's loopback."""
    from . import reading
    return reading.admin_channel(state, hosts)


def stopped_itself(state: ClusterState, hosts: Optional[RemoteOptions]) -> Optional[str]:
    """Why and when the autostop agent on the orchestrator's host stopped the cluster, or None."""
    from . import reading
    return reading.stopped_itself(state, hosts)


def describe(state: ClusterState, hosts: Optional[RemoteOptions]) -> str:
    """The hosts and how their services are found, in a few words."""
    from . import reading
    return reading.describe(state, hosts)


def details(state: ClusterState) -> dict[str, dict[str, str]]:
    """Each service's host, address and runtime, for `status`."""
    from . import reading
    return reading.details(state)
