"""Autostop for a local cluster: the same watchdog as on ssh hosts
(mlcluster/watchdog.py), here a detached process of this machine, started by
`up` when `autostop` or `max_lifetime` is set and recorded as the process
`watchdog` (it carries the cluster's marker, so `down` stops it like the rest).

It reads the orchestrator's public /status; when it fires it writes why and
when to `autostop.json` in the cluster's directory and becomes

    python -m mlcluster.providers.local.autostop NAME

which stops (does not remove) the cluster's processes, found by marker, and
its labelled Docker containers. The state stays: `status` then says the
cluster stopped itself, `down` removes what is left and keeps the logs.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Optional

from ... import services
from ...autostop import WATCHDOG_SOURCE, describe, watchdog_command
from ...resources import LocalProcess
from ...state import ClusterState, cluster_dir, home
from .processes import find_marked, is_alive, marker, spawn, terminate

RECORD = "autostop.json"
# What the stop command needs to reach this machine's Docker engine.
DOCKER_VARS = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY")


def command(name: str, status_url: str, idle_s: Optional[float], deadline: Optional[float]) -> list[str]:
    interval = max(0.2, min(10.0, (idle_s or 40.0) / 4))  # several looks within one idle time
    stop = [sys.executable, "-m", "mlcluster.providers.local.autostop", name]
    return watchdog_command(sys.executable, str(WATCHDOG_SOURCE), status_url, str(cluster_dir(name) / RECORD),
                            idle_s, deadline, stop, interval)


def ensure(state: ClusterState, status_url: str, idle_s: Optional[float], deadline: Optional[float],
           caller_env=None) -> LocalProcess:
    """The cluster's watchdog with these settings: kept if it runs, else
    (re)started; its record (the caller adds it to the state)."""
    name, procs = state.name, state.resources.processes
    argv = command(name, status_url, idle_s, deadline)
    known = next((p for p in procs if p.id == "watchdog"), None)
    if known and is_alive(known.pid, marker(name)) and _cmdline(known.pid) == argv:
        return known
    if known and is_alive(known.pid, marker(name)):
        terminate({known.pid})  # other settings: replaced
    (cluster_dir(name) / RECORD).unlink(missing_ok=True)
    caller = os.environ if caller_env is None else caller_env
    env = {"MLCLUSTER_HOME": str(home().resolve()), services.MARKER_VAR: marker(name),
           **{k: caller[k] for k in DOCKER_VARS if k in caller}}
    log = cluster_dir(name) / "logs" / "watchdog.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    record = LocalProcess(id="watchdog", role="watchdog", worker="", port=0, log=str(log))
    record.pid = spawn(argv, "watchdog", env, log)
    return record


def stop_watchdog(state: ClusterState) -> None:
    """Stop a watchdog no longer asked for (autostop and max_lifetime unset)."""
    known = next((p for p in state.resources.processes if p.id == "watchdog"), None)
    if known is not None:
        if is_alive(known.pid, marker(state.name)):
            terminate({known.pid})
        state.resources.processes.remove(known)


def stopped_itself(state: ClusterState) -> Optional[str]:
    record = cluster_dir(state.name) / RECORD
    return describe(record.read_text()) if record.exists() else None


def _cmdline(pid: int) -> list[str]:
    try:
        return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    except OSError:
        return []


def stop_cluster(name: str) -> None:
    """What a fired watchdog runs: stop the cluster's processes and containers."""
    terminate(set(find_marked(marker(name))))
    state = ClusterState.load_or_none(name)
    if state is not None and state.runtime == "docker":
        from .docker import L_ROLE, _filters, connect
        for container in connect(timeout=60).containers.list(filters=_filters(name)):
            if container.labels.get(L_ROLE) in ("orchestrator", "worker"):
                container.stop(timeout=10)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m mlcluster.providers.local.autostop NAME ({shlex.join(sys.argv[1:])!r} given)")
    stop_cluster(sys.argv[1])
