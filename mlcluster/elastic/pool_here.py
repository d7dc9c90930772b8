"""Starting the pool controller (elastic/pool.py) on the orchestrator's host, and
`up`'s setup of it for a local Docker cluster, where that host is this machine.

A local Docker cluster's controller is the same pool controller as an ssh or aws
cluster's, run here: its pool is this machine's host records (worker1..N,
`HostConfig.local`), reached as LocalHosts (no key, no authorized_keys line, no
host key), its containers run by the DockerRuntime `up` used (`local=True`); its
config, state, events (`events.jsonl`) and published status (`autoscale.json`)
are in the cluster's directory, where `status` and `mlcluster events` read a local
process cluster's controller's. It carries the local marker, so `down` stops it
first (providers/local.py) and finds it when the state is lost. It is the
cluster's autostop agent too (one agent per cluster).

This module loads no SSH library: a local `up` never loads paramiko.
"""
from __future__ import annotations

import dataclasses
from shlex import quote
from typing import Optional

from ..deploy import localhost, watchdog
from ..deploy.host import Host, LocalHost, ServiceSpec
from ..deploy.options import RemoteOptions
from ..deploy.process import ProcessRuntime, launch
from ..deploy.session import Session
from ..resources import Service
from ..services import MARKER_VAR, PASSED_VARS
from ..state import ClusterSpec
from ..ui import QuietUI
from .poolconfig import CONFIG_FILE, METADATA_RETRIES, PoolConfig, PoolMember, WorkerSpec
from .settings import autoscale_config

KEY_FILE = "controller_key"
CONTROLLER = "controller"  # its service id and kind in the state


def start(host: Host, config: PoolConfig, private_key: str, marker: str,
          known: Optional[Service]) -> Service:
    """The controller on the orchestrator's host with this config: kept when it
    runs with it (a second `up` changes nothing), else (re)started; its record
    (without `host`: the caller's to fill). `command` holds the config's digest."""
    runtime = ProcessRuntime()
    text = config.to_json()
    python = host.facts.get("python") or host.config.python or "python3"
    command = f"{quote(python)} -m mlcluster.elastic.pool {quote(host.path(CONFIG_FILE))}"
    settings = f"{command} # {config.digest()}"
    if known and known.command == settings and runtime.alive(host, known.pid, marker):
        host.conn.put_text(text, host.path(CONFIG_FILE), mode=0o600)  # the workers' pids: it reads them again
        return known
    if known:
        runtime.stop(host, {CONTROLLER: known}, marker, only=True)
    host.run(f"rm -f {quote(host.path(watchdog.RECORD))}", warn=True)  # a new start: not stopped (yet)
    if private_key:  # none on this machine (a local Docker cluster: no SSH)
        host.conn.put_text(private_key, host.path(KEY_FILE), mode=0o600)
    host.conn.put_text(text, host.path(CONFIG_FILE), mode=0o600)
    # Like every service (deploy/process.py): `env -i`, the basics, and its own 0600 env file (the marker);
    # and, only when the orchestrator's host runs Docker, how to reach its engine (autostop there removes
    # the cluster's containers); nothing of Docker otherwise.
    env = {MARKER_VAR: marker}
    passed = PASSED_VARS + (watchdog.DOCKER_VARS if config.docker else ())
    if config.aws:  # the instance profile's keys, from the metadata service (patiently: METADATA_RETRIES)
        env.update(METADATA_RETRIES)
        if config.aws.metadata_url:  # an emulator's (tests)
            env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = config.aws.metadata_url
    env_file = host.write_env(ServiceSpec(CONTROLLER, CONTROLLER, 0, env), shell=True)
    pid, log = launch(host, CONTROLLER, command, env_file, passed)
    return Service(runtime=runtime.name, pid=pid, log=log, kind=CONTROLLER, command=settings)


def ensure_here(session: Session, spec: ClusterSpec, options: RemoteOptions, workers: dict[str, ServiceSpec],
                models: dict[str, str], ui: QuietUI) -> None:
    """`up`'s last step on a local Docker cluster: the controller's config in the cluster's
    directory and the controller itself, a process on this machine (see the module docstring)."""
    orch = options.orchestrator
    host = LocalHost(session.state.dir, orch)
    records = session.resources.services
    # This machine holds what the cap allows: each host record may take as many containers.
    slots = max(spec.containers_per_worker, spec.max_containers or 0)
    members = [PoolMember(host=h, host_key="", python=h.python or "python3", model=models.get(h.name, ""),
                          slots=slots, runtime=h.runtime,
                          images=dict(session.hosts[h.name].facts.get("images", {}))) for h in options.workers]
    idle_s, deadline = watchdog.settings(spec, session.state.resources) or (None, None)
    config = PoolConfig(
        cluster=spec.name, admin_url=f"http://127.0.0.1:{records['orchestrator'].admin_port}",
        token=session.state.token, worker_port=0, host_grace_s=options.host_grace, heal_grace_s=spec.heal_grace,
        host=orch.name, idle_s=idle_s or 0.0, deadline=deadline or 0.0, docker="docker", hosts=members,
        workers=[WorkerSpec(id=sid, home=records[sid].host, port=s.port, env=s.env, model_dir=s.model_dir)
                 for sid, s in sorted(workers.items()) if sid in records],
        autoscale=autoscale_config(spec, 0), local=True)
    with ui.step("starting the controller"):
        record = start(host, config, "", localhost.marker(spec.name), records.get(CONTROLLER))
        session.record_service(CONTROLLER, dataclasses.replace(record, host=orch.name))
