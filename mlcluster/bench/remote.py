"""Load hosts of a cluster (`bench --from orchestrator|HOST[,HOST2]|here`):
which machines, the orchestrator's URL as each sees it, and the agent started
there over the cluster's pinned SSH connection.

The agent is started over SSH by `sshagent` (uploaded there first).
"""
from __future__ import annotations

from typing import Optional

from ..errors import MlclusterError, UsageError
from ..resources import HostConfig
from ..state import ClusterState
from .loadhosts import LoadHost, local_host


def default_from(state: Optional[ClusterState]) -> str:
    """Where the load comes from when --from is not given."""
    return "orchestrator" if state is not None and state.provider in ("ssh", "aws") else "here"


def load_hosts(spec: str, state: Optional[ClusterState], url: str) -> list[LoadHost]:
    """The load hosts `--from` names ([] for `here` alone: today's in-process
    run). Raises UsageError naming what cannot be loaded from."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UsageError("--from needs one or more of: here, orchestrator, a host of the cluster")
    if names == ["here"]:
        return []
    if state is None:
        if set(names) == {"here"}:  # several agents on this machine
            return [local_host(url, f"here{i + 1}") for i in range(len(names))]
        raise UsageError(f"--from {spec}: with --url there is no cluster whose hosts could send the load",
                         "give the cluster's --name, or use --from here")
    ssh = state.resources  # its hosts and services
    if state.provider == "local" or not ssh.hosts:
        if set(names) <= {"here", "orchestrator"} and state.provider == "local":
            # a local cluster's orchestrator runs here: every load host is a process of this machine
            return [local_host(url, f"{n}{i + 1}" if len(names) > 1 else n) for i, n in enumerate(names)]
        raise UsageError(f"--from {spec}: cluster {state.name!r} has no SSH hosts to send load from",
                         "use --from here")
    orchestrator = ssh.services.get("orchestrator")
    if orchestrator is None or orchestrator.host not in ssh.hosts:
        raise MlclusterError("the cluster's state names no orchestrator host", "`mlcluster status` shows the cluster")
    from .sshagent import SSHAgentStarter, pinned_keys  # paramiko only when SSH is used
    store = pinned_keys(state)
    hosts = []
    for i, name in enumerate(names):
        if name == "here":
            hosts.append(local_host(url, "here" if names.count("here") == 1 else f"here{i + 1}"))
            continue
        host_name = orchestrator.host if name == "orchestrator" else name
        if host_name not in ssh.hosts:
            raise UsageError(f"--from {spec}: {name!r} is not a host of cluster {state.name!r}",
                             "name one of: here, orchestrator, " + ", ".join(sorted(ssh.hosts)))
        config = ssh.hosts[host_name]
        on_orchestrator = host_name == orchestrator.host
        address = _local_bind(config) if on_orchestrator else ssh.hosts[orchestrator.host].private_address
        image = orchestrator.image if on_orchestrator and orchestrator.runtime == "docker" else ""
        hosts.append(LoadHost(host_name, f"http://{_bracket(address)}:{orchestrator.port}",
                              SSHAgentStarter(config, store, image, state.name)))
    if len({h.name for h in hosts}) < len(hosts):
        raise UsageError(f"--from {spec} names a host twice")
    return hosts


def _local_bind(config: HostConfig) -> str:
    """The orchestrator's address from its own host: loopback when it listens on all."""
    return "127.0.0.1" if config.bind in ("", "0.0.0.0", "::") else config.bind


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address
