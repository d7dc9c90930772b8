"""Reading a deployed cluster on its hosts, whoever provided them: what the providers call for logs, status
facts, `down`'s description and the admin channel."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from ..errors import MlclusterError
from ..resources import Service
from ..state import ClusterState
from . import watchdog
from .host import Host
from .options import RemoteOptions
from .session import Session


def logs(state: ClusterState, options: Optional[RemoteOptions], target: Optional[str], follow: bool,
         tail: int) -> Iterator[str]:
    """Lines of the orchestrator's log (`target` None) or of one container's, from its host."""
    session = Session(state, options)
    sid = target or "orchestrator"
    record = session.resources.services.get(sid)
    if record is None:
        known = ", ".join(sorted(session.resources.services)) or "none"
        raise MlclusterError(f"cluster {state.name!r} has no container {sid!r}", f"known: {known}")
    host = session.connect(session.config_of(record.host), session.connect_timeout)
    command = session.runtime(record.runtime).log_command(host, record, follow, tail)
    session.close()  # the runtimes' scratch files; the connection is opened again by the stream
    return _closing(host.stream(command) if follow else iter(host.run(command).stdout.splitlines()), host)


def describe(state: ClusterState, options: Optional[RemoteOptions]) -> str:
    """The hosts and how their services are found, in a few words."""
    hosts = {h.name: h for h in (options.hosts() if options else [])} | state.resources.hosts
    listed = ", ".join(f"{n} ({h.address}, in {h.workdir})" for n, h in sorted(hosts.items()))
    return (f"services on {len(hosts)} host(s): {listed or 'none recorded'}; their containers carry the label "
            f"mlcluster.cluster={state.name}, their processes MLCLUSTER_MARKER=ssh:{state.name}:<host>")


def stopped_itself(state: ClusterState, options: Optional[RemoteOptions]) -> Optional[str]:
    """Why and when the autostop agent on the orchestrator's host stopped the cluster, or None."""
    try:
        with _orchestrator_host(state, options) as (_, host):
            fired = watchdog.fired_remote(host) if host else None
    except MlclusterError:
        return None
    return watchdog.describe(fired) if fired else None


@contextlib.contextmanager
def admin_channel(state: ClusterState, options: Optional[RemoteOptions]) -> Iterator[str]:
    """The orchestrator's admin endpoints through SSH: a local port forwarded
    over the checked connection to the orchestrator's host, to its admin
    listener on that host's 127.0.0.1, so the token never crosses the
    network in cleartext (and the public port does not serve them at all)."""
    with _orchestrator_host(state, options) as (record, host):
        if host is None:
            raise MlclusterError(f"cluster {state.name!r} has no orchestrator recorded",
                                 f"`mlcluster up --name {state.name}` starts it")
        if record.admin_port:  # the admin listener, on the host's loopback
            target, port = "127.0.0.1", record.admin_port
        else:  # an orchestrator started before it had one serves them on its public port
            target = "127.0.0.1" if host.config.bind in ("0.0.0.0", "::") else host.config.bind
            port = record.port
        from ..remote.forward import Forward  # paramiko: only where an admin channel is asked for
        with Forward(host.conn, target, port) as forward:
            yield forward.url


def details(state: ClusterState) -> dict[str, dict[str, str]]:
    """Each service's host, address and runtime, for `status`."""
    hosts = state.resources.hosts
    return {sid: {"host": r.host, "address": hosts[r.host].address if r.host in hosts else "", "runtime": r.runtime}
            for sid, r in state.resources.services.items()}


def _closing(lines: Iterator[str], host: Host) -> Iterator[str]:
    try:
        yield from lines
    finally:
        host.close()


@contextlib.contextmanager
def _orchestrator_host(state: ClusterState,
                       options: Optional[RemoteOptions]) -> Iterator[tuple[Optional[Service], Optional[Host]]]:
    """The orchestrator's record and a connection to its host, for the block ((None, None): none recorded)."""
    session = Session(state, options)
    record = session.resources.services.get("orchestrator")
    try:
        if record is None or record.host not in session.resources.hosts:
            yield None, None
        else:
            yield record, session.connect(session.resources.hosts[record.host], session.connect_timeout)
    finally:
        session.close()
