"""Autostop on any host (docs/providers.md#autostop): one agent (deploy/agent.py,
standard library only) per host, started by `up` when `autostop` or
`max_lifetime` is set, stopped by `down` like every other service. When it
fires it writes why and when to `autostop.json` and becomes the command that
stops its host's part of the cluster (without the marker, so it is not among
what it stops): on a remote host (ssh, aws) `stop_script`, recorded as the
service `watchdog-<host>`. On this machine the cluster's controller is the
agent (one per cluster): elastic/controller.py on the process runtime (it
feeds the same idle clock and stops the cluster with `stop_local_cluster`),
the pool controller run here on the Docker runtime (elastic/pool_here.py).
The state stays: `status` then says the cluster stopped itself, `down` removes
what is left and keeps the logs.
"""
from __future__ import annotations

import datetime
import json
import shlex
import time
from pathlib import Path
from shlex import quote
from typing import TYPE_CHECKING, Optional

from ..durations import seconds_or_none
from ..resources import Resources, Service
from ..services import MARKER_VAR, PASSED_VARS
from ..state import ClusterState, cluster_dir
from . import localhost

if TYPE_CHECKING:  # the remote parts import paramiko when used: a local cluster never loads it
    from ..state import ClusterSpec
    from .host import RemoteHost

WATCHDOG_SOURCE = Path(__file__).with_name("agent.py")
RECORD = "autostop.json"
# What a stop command needs to reach its host's Docker engine.
DOCKER_VARS = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY")


def watchdog_command(python: str, script: str, status_url: str, record: str, idle_s: Optional[float],
                     deadline: Optional[float], stop: list[str], interval_s: float = 10.0) -> list[str]:
    """The agent's argv: it runs `stop` once the cluster was idle for
    `idle_s` or the wall clock passed `deadline` (epoch seconds)."""
    return [python, "-I", script, "--status-url", status_url, "--record", record,
            "--idle-s", str(idle_s or 0), "--deadline", str(deadline or 0), "--interval-s", str(interval_s),
            "--", *stop]


def look_interval(idle_s: Optional[float]) -> float:
    """Several looks within one idle time, at most one every 10 s."""
    return max(0.2, min(10.0, (idle_s or 40.0) / 4))


def settings(spec: "ClusterSpec", resources: Resources) -> Optional[tuple[Optional[float], Optional[float]]]:
    """(idle seconds, deadline epoch) or None when neither is set. The lifetime
    counts from the cluster's first `up` with autostop (`resources.autostop_started`,
    saved with the next record)."""
    idle = seconds_or_none(spec.autostop, "autostop")
    lifetime = seconds_or_none(spec.max_lifetime, "max_lifetime")
    if idle is None and lifetime is None:
        return None
    if resources.autostop_started is None:
        resources.autostop_started = time.time()
    return idle, (resources.autostop_started + lifetime if lifetime else None)


def summary(autostop: str, max_lifetime: str, started: Optional[float], hourly: Optional[float],
            now: Optional[float] = None) -> Optional[dict]:
    """What `status` shows of a cluster with autostop: its settings, the
    lifetime's deadline (UTC) and the cost so far (`hourly` estimate × the
    time since `started`, epoch seconds; None where unknown)."""
    if not (autostop or max_lifetime):
        return None
    now = time.time() if now is None else now
    lifetime = seconds_or_none(max_lifetime, "max_lifetime")
    deadline = started + lifetime if started and lifetime else None
    return {"autostop": autostop or None, "max_lifetime": max_lifetime or None,
            "deadline": f"{_utc(deadline):%Y-%m-%d %H:%M} UTC" if deadline else None,
            "running_s": round(now - started) if started else None,
            "cost_so_far_usd": round(hourly * (now - started) / 3600, 3) if started and hourly is not None else None}


def _utc(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)


def describe(record_text: str) -> str:
    """An autostop record as a phrase: "autostop at 2026-12-01 11:40 UTC"."""
    try:
        note = json.loads(record_text)  # what agent.py wrote when it fired
        return f"{note['reason']} at {_utc(note['stopped_at']):%Y-%m-%d %H:%M:%S} UTC"
    except (ValueError, KeyError, TypeError):
        return "its watchdog fired"


# -- this machine ----------------------------------------------------------------
def stop_local(state: ClusterState) -> None:
    """Stop an agent no longer asked for (autostop and max_lifetime unset)."""
    known = state.resources.services.pop("watchdog", None)
    if known is not None and localhost.is_alive(known.pid, localhost.marker(state.name)):
        localhost.terminate({known.pid})


def fired_local(state: ClusterState) -> Optional[str]:
    """Why and when the agent stopped the cluster (a phrase), or None."""
    record = cluster_dir(state.name) / RECORD
    return describe(record.read_text()) if record.exists() else None


def stop_local_cluster(name: str) -> None:
    """What a local process cluster's controller runs when it fires (elastic/autostop.py): stop the
    cluster's processes (found by marker; the controller itself carries none of its own)."""
    localhost.terminate(set(localhost.find_marked(localhost.marker(name))))


# -- a remote host -----------------------------------------------------------------
def stop_script(cluster: str, marker: str, docker: str, power_off: bool) -> str:
    """What a fired agent runs on its host (it no longer carries the marker)."""
    from .docker import DockerRuntime
    from .process import find_by_marker
    script = (f"for p in $({find_by_marker(marker)}); do kill -TERM -$p 2>/dev/null; done; "
              f"if command -v docker >/dev/null; then {docker} ps -aq {DockerRuntime(None, cluster).label_filter()} "
              f"| xargs -r {docker} rm -f >/dev/null; fi")
    return script + ("; sudo -n shutdown -h now || shutdown -h now" if power_off else "")


def start_remote(host: "RemoteHost", cluster: str, marker: str, status_url: str, idle_s: Optional[float],
                 deadline: Optional[float], power_off: bool, known: Optional[Service]) -> Service:
    """Start the host's agent unless one with these settings runs; its
    record (without `host` and `port`: the caller's to fill)."""
    from .host import ServiceSpec
    from .process import ProcessRuntime, launch
    runtime = ProcessRuntime()
    script, record = host.path("watchdog.py"), host.path(RECORD)
    command = watchdog_command(host.config.python or "python3", script, status_url, record, idle_s, deadline,
                               ["sh", "-c", stop_script(cluster, marker, host.facts.get("docker", "docker"),
                                                        power_off)], look_interval(idle_s))
    settings_key = shlex.join(command)
    if known and known.command == settings_key and runtime.alive(host, known.pid, marker):
        return known
    if known:
        runtime.stop(host, {"watchdog": known}, marker, only=True)
    host.put(WATCHDOG_SOURCE, script)
    host.run(f"rm -f {quote(record)}")  # a new start: not fired (yet)
    # Only the basics of the login environment, and how to reach the host's Docker engine (the stop script).
    env_file = host.write_env(ServiceSpec("watchdog", "watchdog", 0, {MARKER_VAR: marker}), shell=True)
    pid, log = launch(host, "watchdog", settings_key, env_file, PASSED_VARS + DOCKER_VARS)
    return Service(runtime=runtime.name, pid=pid, log=log, kind="watchdog", command=settings_key)


def fired_remote(host: "RemoteHost") -> Optional[str]:
    """The host's autostop record (JSON text) if its agent fired, else None."""
    if not host.workdir:
        host.prepare_workdir()
    result = host.run(f"cat {quote(host.path(RECORD))} 2>/dev/null", warn=True)
    return result.stdout.strip() if result.ok and result.stdout.strip() else None

