"""Deploying a cluster onto its hosts, whoever provided them: the ssh
provider's hosts from the config, the aws provider's instances, reached over
SSH, and this machine (the local provider's hosts: LocalHosts, no SSH).

Each service is recorded in the state the moment it runs, so a second `up` only
fills the gaps. What differs on this machine is data (`HostConfig.local`,
`RemoteOptions.free_ports`; the simulated workers worker1..N are host records of
this machine) and a few small branches, each commented where it is.
`remove` also works from the hosts the state recorded alone (`options` None: the
config changed or is gone). The ssh and aws controller's setup (elastic/pool_setup.py)
is imported only where remote hosts are: it loads paramiko, which a local cluster never does.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .. import security, services
from ..errors import MlclusterError
from ..models import OVERHEAD_TEST, is_local_dir
from ..remote.group import HostsFailed, run_on_hosts
from ..resources import HostConfig, Service
from ..state import ClusterSpec, ClusterState, ContainerRecord
from ..ui import QuietUI
from . import localhost, watchdog
from .docker import ADMIN_PORT, ORCHESTRATOR_PORT, STATE_MOUNT, WORKER_PORT
from .host import RemoteHost, ServiceSpec, readable_by_all
from .options import RemoteOptions
from .runtime import Deployment
from .session import Session

if TYPE_CHECKING:
    from ..elastic.poolconfig import AWSFleet

ORCHESTRATOR_READY_S = 90.0


def marker(cluster: str, host: HostConfig) -> str:
    """What every process of ours on `host` carries in MLCLUSTER_MARKER (on this
    machine: the local provider's marker, the same for all its simulated workers)."""
    return localhost.marker(cluster) if host.local else f"ssh:{cluster}:{host.name}"


def _url(address: str, port: int) -> str:
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


def _pool_setup():
    """The ssh and aws controller's setup, for remote hosts only (it loads paramiko)."""
    from ..elastic import pool_setup
    return pool_setup


def deploy(spec: ClusterSpec, state: ClusterState, options: RemoteOptions, ui: QuietUI,
           fleet: Optional[AWSFleet] = None) -> Deployment:
    """Start what is missing of the cluster on the hosts (what runs is kept, what the config
    no longer has is stopped), recording every service in `state`; what runs. `fleet`: how
    the aws controller replaces a lost instance."""
    session = Session(state, options, spec)
    hosts = options.hosts()
    runtimes = {h.runtime for h in hosts}
    state.runtime = runtimes.pop() if len(runtimes) == 1 else "mixed"
    here = options.orchestrator.local  # this machine's hosts: the local provider's
    for config in hosts:  # recorded at once: a first `up` that reaches none is kept, for `down` to say so
        state.resources.hosts.setdefault(config.name, config)
    session.save()
    try:
        _reach(session, hosts, ui)
        if not here:
            _pool_setup().adopt_healed(session, options.orchestrator.name)  # what its controller restarted
        _stop_unwanted(session, spec, options, ui)
        model = _prepare(session, spec, options, ui)
        _start_orchestrator(session, spec, options, ui)
        workers: dict[str, ServiceSpec] = {}
        containers = _start_workers(session, spec, options, model, ui, workers)
        if here and options.orchestrator.runtime == "docker":  # the pool controller, run on this machine
            from ..elastic.pool_here import ensure_here
            ensure_here(session, spec, options, workers, model, ui)
        elif state.provider == "ssh" or fleet is not None:  # aws: `fleet` replaces a lost instance
            _pool_setup().ensure(session, spec, options, workers, model, ui, fleet)
        watch = watchdog.settings(spec, session.state.resources)
        if watch is not None and not here:  # this machine's agent: the local provider's
            _start_watchdogs(session, spec, options, *watch, ui)
        orchestrator = session.resources.services["orchestrator"]
        url = security.with_scheme(state, _url(options.orchestrator.address, orchestrator.port))
        services.wait_answering(
            url, what=f"the orchestrator on {options.orchestrator.name}", timeout=ORCHESTRATOR_READY_S,
            session=security.http_session(state),
            hint="check that this machine can reach its orchestrator_port (firewall, security group); "
                 "`mlcluster logs` shows its log", **(_watched(session, orchestrator) if here else {}))
        return Deployment(orchestrator_url=url, containers=containers)
    finally:
        session.close()


def _reach(session: Session, hosts: list[HostConfig], ui: QuietUI) -> None:
    deadline = time.monotonic() + session.options.reach_timeout

    def reach(name: str, step) -> None:
        config = next(h for h in hosts if h.name == name)
        step.update(f"{name} ({config.address}): connecting")
        # The hosts are machines that are up: a refused port is an answer, not a boot in progress.
        session.reach(config, deadline, on_wait=lambda why: step.update(
            f"{name} ({config.address}): still waiting: {why}"))
        session.record_host(config)

    run_on_hosts([h.name for h in hosts], reach, ui, what="connecting")


def _stop_unwanted(session: Session, spec: ClusterSpec, options: RemoteOptions, ui: QuietUI) -> None:
    """Services recorded by an earlier `up` that this config no longer has
    (fewer containers per worker, a host gone from the list, another runtime)."""
    wanted = {"orchestrator": options.orchestrator}
    wanted.update({f"{w.name}-{i}": w for w in options.workers for i in range(1, spec.containers_per_worker + 1)})
    by_host: dict[str, dict[str, Service]] = {}
    keep_watchdogs = bool(spec.autostop or spec.max_lifetime)  # replaced by _start_watchdogs if changed
    for sid, record in list(session.resources.services.items()):
        if (keep_watchdogs and record.kind == "watchdog") or record.kind == "controller":
            continue
        host = wanted.get(sid)
        if host is None or record.host != host.name or record.runtime != host.runtime:
            by_host.setdefault(record.host, {})[sid] = record
    for host_name, records in by_host.items():
        host = session.hosts.get(host_name)
        if host is None:  # a host no longer in the config: reach it as recorded
            try:
                host = session.reach(session.resources.hosts[host_name], time.monotonic() + session.connect_timeout)
            except (MlclusterError, KeyError, TypeError) as exc:
                ui.warn(f"{', '.join(records)} on {host_name} (no longer in the config) could not be stopped: {exc}")
                continue
        with ui.step(f"stopping {', '.join(records)}: no longer part of the cluster"):
            for sid, record in records.items():
                session.runtime(record.runtime).stop(host, {sid: record}, marker(spec.name, host.config), only=True)
                session.record_service(sid, None)


def _prepare(session: Session, spec: ClusterSpec, options: RemoteOptions, ui: QuietUI) -> dict[str, str]:
    """Runtime and model on every host; returns each worker host's model reference."""
    worker_names = {w.name for w in [*options.workers, *options.spares]}  # a spare may take containers
    local_model = is_local_dir(spec.model)
    # This machine: the model used in place (the local provider resolved it), unless it is for
    # containers whose user could not read it: then copied, as onto any host, readable by all.
    in_place = options.orchestrator.local and (options.orchestrator.runtime == "process" or not local_model
                                               or readable_by_all(Path(spec.model)))
    models: dict[str, str] = {}

    def prepare(name: str, step) -> None:
        host = session.hosts[name]
        host.facts["roles"] = ({"worker"} if name in worker_names else set()) | \
            ({"orchestrator"} if name == options.orchestrator.name else set())
        step.update(f"{name}: preparing the {host.config.runtime} runtime")
        session.runtime(host.config.runtime).prepare(host, step)
        if name in worker_names:
            if local_model and not in_place:
                step.update(f"{name}: {'copying' if host.config.local else 'uploading'} the model")
                models[name] = host.upload_model(Path(spec.model).expanduser().resolve())
            else:
                models[name] = spec.model

    run_on_hosts([h.name for h in options.hosts()], prepare, ui, what="preparing",
                 max_parallel=1 if options.orchestrator.local else 16)  # this machine's: they share its work
    return models


def _start_orchestrator(session: Session, spec: ClusterSpec, options: RemoteOptions, ui: QuietUI) -> None:
    config = options.orchestrator
    host = session.hosts[config.name]
    runtime = session.runtime(config.runtime)
    docker, mark = config.runtime == "docker", marker(spec.name, config)
    inside = docker and config.local  # a container here: fixed ports inside, published on 127.0.0.1
    known = session.services_on(config.name).get("orchestrator")
    port = _port(session, known, options.orchestrator_port, requested=options.orchestrator_port)
    admin_port = _port(session, known, options.admin_port, admin=True, avoid=port)
    listen, admin_listen = (ORCHESTRATOR_PORT, ADMIN_PORT) if inside else (port, admin_port)
    # The admin endpoints on the host's loopback only (a container's port is published there
    # only), so the CLI reaches them through SSH and the public port answers them 404.
    env = services.orchestrator_env(
        port=listen, token=session.state.token, worker_token=session.state.worker_token,
        host="0.0.0.0" if docker else config.bind, queue_limit=spec.queue_limit,
        queue_timeout_s=spec.queue_timeout_s, marker="" if inside else mark,
        status_file=f"{STATE_MOUNT}/registry.json" if inside else "" if docker else host.path(
            "orchestrator-status.json"),
        admin_bind=f"{'0.0.0.0' if docker else '127.0.0.1'}:{admin_listen}")
    env.update(options.orchestrator_env)
    env.update(security.orchestrator_env(session.state, inline=True))  # TLS and API keys, when asked
    service = ServiceSpec("orchestrator", "orchestrator", listen, env, admin_port=admin_listen)
    if inside:
        service = runtime.here(service, port, admin_port)
    with ui.step(f"starting the orchestrator on {config.name}"):
        if known and known.runtime == "process" and known.admin_port != admin_port:
            runtime.stop(host, {"orchestrator": known}, mark, only=True)
            known = None  # started before its admin listener moved (or existed): start it anew
        record = runtime.start(host, service, mark, known)
        session.record_service("orchestrator", dataclasses.replace(record, host=config.name, port=port,
                                                                   admin_port=admin_port))
        runtime.verify(host, mark)


def _start_workers(session: Session, spec: ClusterSpec, options: RemoteOptions,
                   models: dict[str, str], ui: QuietUI, specs: dict[str, ServiceSpec]) -> list[ContainerRecord]:
    per_host = spec.containers_per_worker

    def start(name: str, step) -> list[ContainerRecord]:
        host, config = session.hosts[name], session.hosts[name].config
        runtime = session.runtime(config.runtime)
        known = session.services_on(name)
        sharing = len(options.workers) if config.local else 1  # this machine's simulated workers share it
        threads = max(1, host.cpus // (per_host * sharing))
        inside = config.local and config.runtime == "docker"  # reached by its name on the cluster's network
        records = []
        for i in range(1, per_host + 1):
            sid = f"{name}-{i}"
            port = WORKER_PORT if inside else _port(session, known.get(sid), options.worker_port + i - 1)
            step.update(f"{name}: starting {sid} ({i}/{per_host})")
            service = _worker_service(spec, session.state, options, config, sid, port, models[name], threads)
            record = runtime.start(host, runtime.here(service) if inside else service, marker(spec.name, config),
                                   known.get(sid))
            session.record_service(sid, dataclasses.replace(record, host=name, port=port, worker=name))
            specs[sid] = service
            records.append(ContainerRecord(id=sid, host=record.container if inside else config.private_address,
                                           port=port, worker=name))
        runtime.verify(host, marker(spec.name, config))
        return records

    started = run_on_hosts([w.name for w in options.workers], start, ui, what="starting workers")
    return [c for w in options.workers for c in started[w.name]]


def _start_watchdogs(session: Session, spec: ClusterSpec, options: RemoteOptions, idle_s: Optional[float],
                     deadline: Optional[float], ui: QuietUI) -> None:
    """One autostop agent per host (deploy/watchdog.py); on the orchestrator's host
    the healing controller is that agent when it runs (one agent per cluster there)."""
    orch = options.orchestrator
    absorbed = _pool_setup().CONTROLLER in session.resources.services
    old = session.resources.services.get(f"watchdog-{orch.name}")
    if absorbed and old is not None:
        session.runtime("process").stop(session.hosts[orch.name], {old.kind: old}, marker(spec.name, orch), only=True)
        session.record_service(f"watchdog-{orch.name}", None)

    def start(name: str, step) -> None:
        here = "127.0.0.1" if orch.bind in ("0.0.0.0", "::") else orch.bind
        url = _url(here if name == orch.name else orch.private_address, options.orchestrator_port) + "/status"
        sid = f"watchdog-{name}"
        host = session.hosts[name]
        record = watchdog.start_remote(host, spec.name, marker(spec.name, host.config), url, idle_s, deadline,
                                       session.state.provider == "aws", session.services_on(name).get(sid))
        session.record_service(sid, dataclasses.replace(record, host=name, port=0))

    run_on_hosts([h.name for h in options.hosts() if not (absorbed and h.name == orch.name)], start, ui,
                 what="starting the autostop watchdogs")


def _worker_service(spec: ClusterSpec, state: ClusterState, options: RemoteOptions, config: HostConfig, sid: str,
                    port: int, model: str, threads: int) -> ServiceSpec:
    docker = config.runtime == "docker"
    model_dir = model if model.startswith("/") else ""
    env = services.worker_env(
        model="/model" if docker and model_dir else model, port=port,
        host="0.0.0.0" if docker else config.bind, torch_threads=threads, worker_id=sid,
        service_ms=spec.service_ms if model == OVERHEAD_TEST else None,
        marker="" if docker and config.local else marker(spec.name, config),  # none in a container here
        **services.cluster_worker_settings(spec, state))
    if config.local and model_dir:
        env["HF_HUB_OFFLINE"] = "1"  # a model directory here: no hub lookup (it would retry for long)
    env.update(options.worker_env)
    return ServiceSpec(sid, "worker", port, env, model_dir=model_dir)


def remove(name: str, state: Optional[ClusterState], options: Optional[RemoteOptions], ui: QuietUI) -> list[str]:
    """Stop the cluster's services on every host recorded or in `options` (None: the config
    changed or is gone); sentences naming what is left, if anything."""
    if state is None:
        return []
    session = Session(state, options)
    hosts = {h.name: h for h in (options.hosts() if options else [])} | session.resources.hosts
    left: list[str] = []
    here = any(h.local for h in hosts.values())

    def stop(host_name: str, step) -> None:
        config = hosts[host_name]
        host = session.reach(config, time.monotonic() + 2 * session.connect_timeout)
        if session.state.provider == "ssh":
            _pool_setup().remove(session, host, options)
        records = session.services_on(host_name)
        kinds = {r.runtime for r in records.values()} | {config.runtime}
        for kind in sorted(kinds):
            mine = {k: r for k, r in records.items() if r.runtime == kind}
            still = session.runtime(kind).stop(host, mine, marker(name, config))
            left.extend(still)
            if not still:
                for sid in mine:
                    session.record_service(sid, None)

    try:
        _stop_controller(session, hosts)  # first: it would start what `down` stops
        run_on_hosts(sorted(hosts), stop, ui, what="stopping", max_parallel=1 if here else 16)
    except HostsFailed as exc:
        left.extend(f"{o.host} ({hosts[o.host].address}): {o.error}; its services may still run"
                    for o in exc.outcomes if not o.ok)
    except MlclusterError as exc:
        left.append(str(exc))
    finally:
        session.close()
    if not left and not here:
        _pool_setup().forget_key(state.dir)
    return left


def _stop_controller(session: Session, hosts: dict[str, HostConfig]) -> None:
    record = session.resources.services.get("controller")
    if record is None or record.host not in hosts or hosts[record.host].local:  # this machine's: the provider's
        return
    pool_setup = _pool_setup()
    host = RemoteHost.connect(hosts[record.host], session.store, session.connect_timeout)
    with contextlib.suppress(MlclusterError), contextlib.closing(host):  # unreachable: its host's stop says so
        host.prepare_workdir()
        if not session.runtime("process").stop(host, {pool_setup.CONTROLLER: record},
                                               marker(session.state.name, hosts[record.host]), only=True):
            session.record_service(pool_setup.CONTROLLER, None)


def _port(session: Session, known: Optional[Service], fixed: int, requested: int = 0, admin: bool = False,
          avoid: int = 0) -> int:
    """A service's port: `fixed` on remote hosts. On this machine (`free_ports`): the one it
    runs on, else `requested` (refused when taken), else the one it had while that is free
    (a restarted service keeps its address), else a free one."""
    if not (session.options and session.options.free_ports):
        return fixed
    previous = (known.admin_port if admin else known.port) if known else 0
    if previous and known and (known.runtime == "docker" or localhost.is_alive(known.pid, localhost.marker(
            session.state.name))):  # a container keeps its port published while it exists
        return previous
    if requested and not admin:
        if not localhost.port_free(requested):
            raise MlclusterError(f"port {requested} on {localhost.LOOPBACK} is already in use",
                                 "choose another with --port, or leave --port out to take a free one")
        return requested
    return previous if previous and localhost.port_free(previous) else localhost.free_port(avoid)


def _watched(session: Session, record: Service) -> dict:
    """How `wait_answering` sees an orchestrator on this machine die, and its log's last lines."""
    host, runtime = session.hosts[record.host], session.runtime(record.runtime)
    mark = marker(session.state.name, host.config)
    return {"running": lambda: runtime.running(host, record, mark),
            "log_tail": lambda: host.run(runtime.log_command(host, record, False, 15), warn=True).stdout}
