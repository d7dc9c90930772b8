"""Autostop on ssh (and aws) hosts: one watchdog (mlcluster/watchdog.py, run
with the host's python3) per host, started by `up` when `autostop` or
`max_lifetime` is set. Each reads the orchestrator's public /status (the
orchestrator's host on its own loopback, the others at its private address)
and, when the cluster has served nothing for the idle time or its lifetime is
over, stops this host's part of the cluster: its processes (found by marker)
and its labelled containers; on aws it then powers the instance off (launched
to terminate on shutdown). It writes why and when to `autostop.json` in the
host's workdir first. The hosts themselves stay on ssh.

A watchdog is recorded as the service `watchdog-<host>` (process runtime), so
`down` stops it like any other process of the cluster.
"""
from __future__ import annotations

import shlex
from typing import Optional

from ...autostop import WATCHDOG_SOURCE, describe, settings, watchdog_command  # noqa: F401 (re-exported)
from ...remote.connection import quote
from ...resources import SSHService
from ...services import MARKER_VAR, PASSED_VARS
from .host import RemoteHost
from .process import ProcessRuntime, _find_by_marker, clean_env

DOCKER_VARS = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG")

RECORD = "autostop.json"


def stop_script(cluster: str, marker: str, docker: str, power_off: bool) -> str:
    """What a fired watchdog runs on its host (it no longer carries the marker)."""
    label = quote(f"label=mlcluster.cluster={cluster}")
    script = (f"for p in $({_find_by_marker(marker)}); do kill -TERM -$p 2>/dev/null; done; "
              f"if command -v docker >/dev/null; then {docker} ps -aq --filter {label} "
              f"--filter label=mlcluster.provider=ssh | xargs -r {docker} rm -f >/dev/null; fi")
    return script + ("; sudo -n shutdown -h now || shutdown -h now" if power_off else "")


def start(host: RemoteHost, cluster: str, marker: str, status_url: str, idle_s: Optional[float],
          deadline: Optional[float], power_off: bool, known: Optional[SSHService]) -> SSHService:
    """Start the host's watchdog unless one with these settings runs; its
    record (without `host` and `port`: the caller's to fill)."""
    runtime = ProcessRuntime()
    interval = max(0.2, min(10.0, (idle_s or 40.0) / 4))  # several looks within one idle time
    script, record = host.path("watchdog.py"), host.path(RECORD)
    command = watchdog_command(host.config.python or "python3", script, status_url, record, idle_s, deadline,
                               ["sh", "-c", stop_script(cluster, marker, host.facts.get("docker", "docker"),
                                                        power_off)], interval)
    settings_key = shlex.join(command)
    if known and known.command == settings_key and runtime._alive(host, known.pid, marker):
        return known
    if known:
        runtime.stop(host, {"watchdog": known}, marker, only=True)
    host.conn.put(WATCHDOG_SOURCE, script)
    log, pidfile = host.path("watchdog.log"), host.path("watchdog.pid")
    # Only the basics of the login environment, and how to reach the host's Docker engine (the stop script).
    clean = clean_env(PASSED_VARS + DOCKER_VARS)
    host.run(f"rm -f {quote(record)}; ( cd {quote(host.workdir)} && exec {clean} {quote(f'{MARKER_VAR}={marker}')} "
             f"setsid {settings_key} >>{quote(log)} 2>&1 </dev/null & echo $! >{quote(pidfile)} )", timeout=30)
    pid = int(host.run(f"cat {quote(pidfile)}").stdout.strip())
    return SSHService(runtime=runtime.name, pid=pid, log=log, kind="watchdog", command=settings_key)


def fired(host: RemoteHost) -> Optional[str]:
    """The host's autostop record (JSON text) if its watchdog fired, else None."""
    if not host.workdir:
        host.prepare_workdir()
    result = host.run(f"cat {quote(host.path(RECORD))} 2>/dev/null", warn=True)
    return result.stdout.strip() if result.ok and result.stdout.strip() else None
