"""How the controller starts, finds and stops one worker process of a local
process cluster, talks to the orchestrator's admin listener, and how `up`
starts the controller itself.

A new worker gets exactly the environment `up` gave the others: the
controller copies it from a live worker of the cluster (/proc/<pid>/environ
and cmdline) and changes only its address and id. That copy holds the
workers' credential, so it lives in the controller's memory only.

Workers the controller started are recorded in `<cluster dir>/elastic.json`
(so a restarted controller knows them); those `up` started stay in state.json
(the controller updates a healed one's pid there, and forgets one it removed).
Everything carries the cluster's marker: `down` stops it all.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import requests

from mlcluster_contract import BIND

from ..deploy import localhost
from ..deploy.localhost import LOOPBACK
from ..resources import LOCAL_HOST, Service
from ..services import MARKER_VAR
from ..state import ClusterState, cluster_dir, home, write_private_json
from .poolconfig import started_here

OWN_FILE = "elastic.json"
CONTROLLER = "controller"  # its id and kind in state.json's services


@dataclass
class WorkerProcess:
    """One worker the controller looks after."""
    id: str
    port: int
    pid: int
    log: str
    own: bool = True  # started by the controller (else by `up`: recorded in state.json)


@dataclass(frozen=True)
class WorkerTemplate:
    """How `up` started a worker: its argv and whole environment."""
    argv: list[str]
    env: dict[str, str]

    @classmethod
    def of(cls, pid: int) -> Optional["WorkerTemplate"]:
        argv = localhost.cmdline(pid)
        raw = localhost.environ(pid)
        if not argv or not raw:
            return None
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        return cls(argv, env)

    def start(self, worker_id: str, port: int, log: Path) -> int:
        """Start a worker as `worker_id` on `port`; its pid."""
        env = {**self.env, BIND: f"{LOOPBACK}:{port}", "WORKER_ID": worker_id}
        log.parent.mkdir(parents=True, exist_ok=True)
        return localhost.spawn(self.argv, "worker", env, log)


def running(pid: int, name: str) -> bool:
    return pid > 0 and localhost.is_alive(pid, localhost.marker(name)) and not localhost.is_zombie(pid)


def stop(pid: int) -> None:
    localhost.terminate({pid}, grace_s=5.0)


def port_for(previous: int) -> int:
    """The worker's old port when free (a restarted worker keeps its address), else a new one."""
    return previous if previous and localhost.port_free(previous) else localhost.free_port()


# -- the records -------------------------------------------------------------------
def load_own(name: str) -> list[WorkerProcess]:
    try:
        data = json.loads((cluster_dir(name) / OWN_FILE).read_text())
        return [WorkerProcess(**w) for w in data["workers"]]
    except (OSError, ValueError, TypeError, KeyError):
        return []


def save_own(name: str, workers: list[WorkerProcess]) -> None:
    write_private_json(cluster_dir(name) / OWN_FILE,
                       {"workers": [dataclasses.asdict(w) for w in workers if w.own]})


def workers_of_up(state: ClusterState) -> list[WorkerProcess]:
    return [WorkerProcess(id=sid, port=p.port, pid=p.pid, log=p.log, own=False)
            for sid, p in state.resources.of_kind("worker").items()]


def controller_started(state: ClusterState) -> set[str]:
    """The ids of every container the cluster's controller started (scaled up, stand-ins): a local
    process cluster's (`load_own`), a local Docker cluster's (its state file here), an ssh or aws
    cluster's (its state file on the orchestrator's host). A second `up` must not drain them as stale."""
    ids = {w.id for w in load_own(state.name)} | started_here(state.dir)
    if state.provider in ("ssh", "aws"):
        from .pool_setup import started_remotely  # paramiko: only for a remote cluster
        ids |= started_remotely(state)
    return ids


def record_in_state(name: str, worker: WorkerProcess, remove: bool = False) -> None:
    """A worker of `up` healed (its new pid and port) or removed, in state.json."""
    state = ClusterState.load_or_none(name)
    if state is None:
        return
    services = state.resources.services
    if remove:
        services.pop(worker.id, None)
        state.containers = [c for c in state.containers if c.id != worker.id]
    else:
        if worker.id in services:
            services[worker.id].pid, services[worker.id].port = worker.pid, worker.port
        for c in state.containers:
            if c.id == worker.id:
                c.port = worker.port
    state.save()


# -- the orchestrator's admin listener ---------------------------------------------------
class Admin:
    """The orchestrator's admin endpoints on loopback, with the cluster's token."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def status(self) -> dict:
        response = self.http.get(f"{self.url}/status", timeout=5)
        response.raise_for_status()
        return response.json()

    def register(self, worker: WorkerProcess, capacity: int) -> None:
        body = {"containers": [{"id": worker.id, "host": LOOPBACK, "port": worker.port, "capacity": capacity}]}
        self.http.post(f"{self.url}/workers", json=body, timeout=10).raise_for_status()

    def drain(self, worker_id: str) -> None:
        response = self.http.post(f"{self.url}/workers/{worker_id}/drain", timeout=10)
        if response.status_code != 404:  # already gone: nothing to drain
            response.raise_for_status()

    def close(self) -> None:
        self.http.close()


def admin_url(state: ClusterState) -> str:
    orchestrator = state.resources.services.get("orchestrator")
    port = orchestrator.admin_port if orchestrator else 0
    return f"http://{LOOPBACK}:{port}" if port else state.orchestrator_url


# -- the controller process, as `up` and `down` handle it ---------------------------
def controller_command(name: str, spec_key: str) -> list[str]:
    return [sys.executable, "-m", "mlcluster.elastic.controller", name, "--settings", spec_key]


def settings_key(state: ClusterState) -> str:
    """The settings the controller runs with, as one string: a change restarts it."""
    s = state.spec
    return json.dumps({"min": s.min_containers, "max": s.max_containers, "target": s.target_ongoing,
                       "up": s.upscale_delay, "down": s.downscale_delay, "grace": s.heal_grace,
                       "autostop": s.autostop, "max_lifetime": s.max_lifetime,
                       "autostop_started": state.resources.autostop_started}, sort_keys=True)


def ensure_controller(state: ClusterState) -> None:
    """The cluster's controller, running with the spec's settings: kept if it
    runs with them, else (re)started; recorded as the process `controller`."""
    name = state.name
    argv = controller_command(name, settings_key(state))
    known = state.resources.services.get(CONTROLLER)
    if known and running(known.pid, name) and localhost.cmdline(known.pid) == argv:
        return
    if known and running(known.pid, name):
        stop(known.pid)  # other settings: replaced
    log = cluster_dir(name) / "logs" / "controller.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {"MLCLUSTER_HOME": str(home().resolve()), MARKER_VAR: localhost.marker(name)}
    state.resources.services[CONTROLLER] = Service(host=LOCAL_HOST, kind=CONTROLLER, log=str(log),
                                                   pid=localhost.spawn(argv, CONTROLLER, env, log))
    state.save()


def stop_controller(state: ClusterState) -> None:
    """Stop the controller (the workers it started stay: `down` stops them by marker)."""
    known = state.resources.services.pop(CONTROLLER, None)
    if known is not None:
        if running(known.pid, state.name):
            stop(known.pid)
        state.save()
