"""Deploying a cluster onto remote hosts over SSH, whoever provided them (the
ssh provider's hosts from the config, the aws provider's instances).

`up` (given the hosts and the deployment settings, a `RemoteOptions`):
1. connects to every host in parallel (waiting up to `reach_timeout` for each,
   saying why it still waits; host keys trusted on first use, recorded in the
   state, required afterwards);
2. prepares each host for its runtime: `docker` (install/start Docker if
   missing, get the images there: deploy/docker.py) or `process` (a Python
   environment with mlcluster: deploy/process.py), and uploads the model
   directory if the model is a local one;
3. starts the orchestrator on its host, then M worker containers on each worker
   host (ports worker_port, worker_port+1, ...; torch threads = host CPUs / M),
   recording each service in `state.resources` the moment it runs;
4. returns the orchestrator's URL (the host's `address`) and the containers as
   the orchestrator reaches them (each host's `private_address`).
Anything already running is kept, so a second `up` only fills the gaps.
`down` stops the cluster's containers and processes on every host (the hosts
and what was installed stay); `logs` reads a service's log over SSH. Every
function after `up` also works from the hosts the state recorded alone
(`options` None: the config changed or is gone).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Iterator, Optional

from .. import security, services
from ..elastic import pool_setup
from ..elastic.poolconfig import AWSFleet
from ..errors import MlclusterError
from ..models import OVERHEAD_TEST, is_local_dir
from ..remote.connection import HostsFailed, run_on_hosts
from ..remote.forward import Forward
from ..resources import HostConfig, Service
from ..state import ClusterSpec, ClusterState, ContainerRecord
from ..ui import QuietUI
from . import watchdog
from .host import RemoteHost, ServiceSpec
from .options import RemoteOptions
from .process import ProcessRuntime
from .runtime import Deployment
from .session import Session

ORCHESTRATOR_READY_S = 90.0


def marker(cluster: str, host: str) -> str:
    """What every process of ours on `host` carries in MLCLUSTER_MARKER."""
    return f"ssh:{cluster}:{host}"


def _url(address: str, port: int) -> str:
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


class RemoteDeployment:
    """See the module docstring."""

    # -- up ---------------------------------------------------------------
    def up(self, spec: ClusterSpec, state: ClusterState, options: RemoteOptions, ui: QuietUI,
           fleet: Optional[AWSFleet] = None) -> Deployment:
        session = Session(state, options)
        hosts = options.hosts()
        runtimes = {h.runtime for h in hosts}
        state.runtime = runtimes.pop() if len(runtimes) == 1 else "mixed"
        for config in hosts:  # recorded at once: a first `up` that reaches none is kept, for `down` to say so
            state.resources.hosts.setdefault(config.name, config)
        session.save()
        try:
            self._reach(session, hosts, ui)
            pool_setup.adopt_healed(session, options.orchestrator.name)  # what its controller restarted
            self._stop_unwanted(session, spec, options, ui)
            model = self._prepare(session, spec, options, ui)
            self._start_orchestrator(session, spec, options, ui)
            workers: dict[str, ServiceSpec] = {}
            containers = self._start_workers(session, spec, options, model, ui, workers)
            if state.provider == "ssh" or fleet is not None:  # aws: `fleet` replaces a lost instance
                pool_setup.ensure(session, spec, options, workers, model, ui, fleet)
            watch = watchdog.settings(spec, session.state.resources)
            if watch is not None:
                self._start_watchdogs(session, spec, options, *watch, ui)
            url = security.with_scheme(state, _url(options.orchestrator.address, options.orchestrator_port))
            services.wait_answering(
                url, what=f"the orchestrator on {options.orchestrator.name}", timeout=ORCHESTRATOR_READY_S,
                session=security.http_session(state),
                hint="check that this machine can reach its orchestrator_port (firewall, security group); "
                     "`mlcluster logs` shows its log")
            return Deployment(orchestrator_url=url, containers=containers)
        finally:
            session.close()

    def _reach(self, session: Session, hosts: list[HostConfig], ui: QuietUI) -> None:
        options = session.options
        deadline = time.monotonic() + options.reach_timeout

        def reach(name: str, step) -> None:
            config = next(h for h in hosts if h.name == name)
            host = session.connect(config, options.connect_timeout)
            step.update(f"{name} ({config.address}): connecting")
            # The hosts are machines that are up: a refused port is an answer, not a boot in progress.
            host.conn.wait_reachable(deadline, on_wait=lambda why: step.update(
                f"{name} ({config.address}): still waiting: {why}"), retry_refused=False)
            host.prepare_workdir()
            session.record_host(config)

        run_on_hosts([h.name for h in hosts], reach, ui, what="connecting")

    def _stop_unwanted(self, session: Session, spec: ClusterSpec, options: RemoteOptions, ui: QuietUI) -> None:
        """Services recorded by an earlier `up` that this config no longer has
        (fewer containers per worker, a host gone from the list, another runtime)."""
        wanted = {"orchestrator": options.orchestrator}
        wanted.update({f"{w.name}-{i}": w for w in options.workers for i in range(1, spec.containers_per_worker + 1)})
        by_host: dict[str, dict[str, Service]] = {}
        keep_watchdogs = bool(spec.autostop or spec.max_lifetime)  # replaced by _start_watchdogs if changed
        for sid, record in list(session.resources.services.items()):
            if (keep_watchdogs and record.kind == "watchdog") or record.kind == pool_setup.CONTROLLER:
                continue
            host = wanted.get(sid)
            if host is None or record.host != host.name or record.runtime != host.runtime:
                by_host.setdefault(record.host, {})[sid] = record
        for host_name, records in by_host.items():
            host = session.hosts.get(host_name)
            if host is None:  # a host no longer in the config: reach it as recorded
                try:
                    host = session.connect(session.resources.hosts[host_name], options.connect_timeout)
                    host.conn.wait_reachable(time.monotonic() + options.connect_timeout, retry_refused=False)
                    host.prepare_workdir()
                except (MlclusterError, KeyError, TypeError) as exc:
                    ui.warn(f"{', '.join(records)} on {host_name} (no longer in the config) could not be stopped: {exc}")
                    continue
            for sid, record in records.items():
                session.runtime(record.runtime).stop(
                    host, {sid: record}, marker(spec.name, host_name), only=True)
                session.record_service(sid, None)

    def _prepare(self, session: Session, spec: ClusterSpec, options: RemoteOptions, ui: QuietUI) -> dict[str, str]:
        """Runtime and model on every host; returns each worker host's model reference."""
        worker_names = {w.name for w in [*options.workers, *options.spares]}  # a spare may take containers
        local_model = is_local_dir(spec.model)
        models: dict[str, str] = {}

        def prepare(name: str, step) -> None:
            host = session.hosts[name]
            host.facts["roles"] = ({"worker"} if name in worker_names else set()) | \
                ({"orchestrator"} if name == options.orchestrator.name else set())
            step.update(f"{name}: preparing the {host.config.runtime} runtime")
            session.runtime(host.config.runtime).prepare(host, step)
            if name in worker_names:
                if local_model:
                    step.update(f"{name}: uploading the model")
                    models[name] = host.upload_model(Path(spec.model).expanduser().resolve())
                else:
                    models[name] = spec.model

        run_on_hosts([h.name for h in options.hosts()], prepare, ui, what="preparing")
        return models

    def _start_orchestrator(self, session: Session, spec: ClusterSpec, options: RemoteOptions, ui: QuietUI) -> None:
        config = options.orchestrator
        host = session.hosts[config.name]
        runtime = session.runtime(config.runtime)
        docker = config.runtime == "docker"
        # The admin endpoints on the host's loopback only (a container's port is published there
        # only), so the CLI reaches them through SSH and the public port answers them 404.
        env = services.orchestrator_env(
            port=options.orchestrator_port, token=session.state.token, worker_token=session.state.worker_token,
            host="0.0.0.0" if docker else config.bind, queue_limit=spec.queue_limit,
            queue_timeout_s=spec.queue_timeout_s, marker=marker(spec.name, config.name),
            status_file="" if docker else host.path("orchestrator-status.json"),
            admin_bind=f"{'0.0.0.0' if docker else '127.0.0.1'}:{options.admin_port}")
        env.update(options.orchestrator_env)
        env.update(security.orchestrator_env(session.state, inline=True))  # TLS and API keys, when asked
        service = ServiceSpec("orchestrator", "orchestrator", options.orchestrator_port, env,
                              admin_port=options.admin_port)
        with ui.step(f"starting the orchestrator on {config.name}"):
            known = session.services_on(config.name).get("orchestrator")
            if known and known.runtime == "process" and known.admin_port != service.admin_port:
                runtime.stop(host, {"orchestrator": known}, marker(spec.name, config.name), only=True)
                known = None  # started before its admin listener moved (or existed): start it anew
            record = runtime.start(host, service, marker(spec.name, config.name), known)
            session.record_service("orchestrator", dataclasses.replace(record, host=config.name, port=service.port,
                                                                       admin_port=service.admin_port))
            runtime.verify(host, marker(spec.name, config.name))

    def _start_workers(self, session: Session, spec: ClusterSpec, options: RemoteOptions,
                       models: dict[str, str], ui: QuietUI, specs: dict[str, ServiceSpec]) -> list[ContainerRecord]:
        per_host = spec.containers_per_worker

        def start(name: str, step) -> list[ContainerRecord]:
            host, config = session.hosts[name], session.hosts[name].config
            runtime = session.runtime(config.runtime)
            known = session.services_on(name)
            threads = max(1, host.cpus // per_host)
            records = []
            for i in range(1, per_host + 1):
                sid, port = f"{name}-{i}", options.worker_port + i - 1
                step.update(f"{name}: starting {sid} ({i}/{per_host})")
                service = self._worker_service(spec, session.state, options, config, sid, port, models[name],
                                               threads)
                record = runtime.start(host, service, marker(spec.name, name), known.get(sid))
                session.record_service(sid, dataclasses.replace(record, host=name, port=port))
                specs[sid] = service
                records.append(ContainerRecord(id=sid, host=config.private_address, port=port, worker=name))
            runtime.verify(host, marker(spec.name, name))
            return records

        started = run_on_hosts([w.name for w in options.workers], start, ui, what="starting workers")
        return [c for w in options.workers for c in started[w.name]]

    @staticmethod
    def _start_watchdogs(session: Session, spec: ClusterSpec, options: RemoteOptions, idle_s: Optional[float],
                         deadline: Optional[float], ui: QuietUI) -> None:
        """One autostop agent per host (deploy/watchdog.py); on the orchestrator's host
        the healing controller is that agent when it runs (one agent per cluster there)."""
        orch = options.orchestrator
        absorbed = pool_setup.CONTROLLER in session.resources.services
        old = session.resources.services.get(f"watchdog-{orch.name}")
        if absorbed and old is not None:
            ProcessRuntime().stop(session.hosts[orch.name], {old.kind: old}, marker(spec.name, orch.name), only=True)
            session.record_service(f"watchdog-{orch.name}", None)

        def start(name: str, step) -> None:
            here = "127.0.0.1" if orch.bind in ("0.0.0.0", "::") else orch.bind
            url = _url(here if name == orch.name else orch.private_address, options.orchestrator_port) + "/status"
            sid = f"watchdog-{name}"
            record = watchdog.start_remote(session.hosts[name], spec.name, marker(spec.name, name), url, idle_s, deadline,
                                    session.state.provider == "aws", session.services_on(name).get(sid))
            session.record_service(sid, dataclasses.replace(record, host=name, port=0))

        run_on_hosts([h.name for h in options.hosts() if not (absorbed and h.name == orch.name)], start, ui,
                     what="starting the autostop watchdogs")

    @staticmethod
    def _worker_service(spec: ClusterSpec, state: ClusterState, options: RemoteOptions, config: HostConfig, sid: str,
                        port: int, model: str, threads: int) -> ServiceSpec:
        docker = config.runtime == "docker"
        model_dir = model if model.startswith("/") else ""
        env = services.worker_env(
            model="/model" if docker and model_dir else model, port=port,
            host="0.0.0.0" if docker else config.bind, torch_threads=threads, worker_id=sid,
            service_ms=spec.service_ms if model == OVERHEAD_TEST else None,
            marker=marker(spec.name, config.name), **services.cluster_worker_settings(spec, state))
        env.update(options.worker_env)
        return ServiceSpec(sid, "worker", port, env, model_dir=model_dir)

    # -- down -------------------------------------------------------------
    def down(self, name: str, state: Optional[ClusterState], options: Optional[RemoteOptions], ui: QuietUI) -> list[str]:
        if state is None:
            return []
        session = Session(state, options)
        hosts = dict(session.resources.hosts)
        for config in (options.hosts() if options else []):
            hosts.setdefault(config.name, config)
        left: list[str] = []
        connect_timeout = options.connect_timeout if options else 10.0

        def stop(host_name: str, step) -> None:
            config = hosts[host_name]
            host = session.connect(config, connect_timeout)
            host.conn.wait_reachable(time.monotonic() + 2 * connect_timeout, retry_refused=False)
            host.prepare_workdir()
            if session.state.provider == "ssh":
                pool_setup.remove(session, host, options)
            records = session.services_on(host_name)
            kinds = {r.runtime for r in records.values()} | {config.runtime}
            for kind in sorted(kinds):
                mine = {k: r for k, r in records.items() if r.runtime == kind}
                still = session.runtime(kind).stop(host, mine, marker(name, host_name))
                left.extend(still)
                if not still:
                    for sid in mine:
                        session.record_service(sid, None)

        try:
            self._stop_controller(session, hosts, connect_timeout)  # first: it would start what `down` stops
            run_on_hosts(sorted(hosts), stop, ui, what="stopping")
        except HostsFailed as exc:
            left.extend(f"{o.host} ({hosts[o.host].address}): {o.error}; its services may still run"
                        for o in exc.outcomes if not o.ok)
        except MlclusterError as exc:
            left.append(str(exc))
        finally:
            session.close()
        if not left:
            pool_setup.forget_key(state.dir)
        return left

    @staticmethod
    def _stop_controller(session: Session, hosts: dict[str, HostConfig], connect_timeout: float) -> None:
        record = session.resources.services.get(pool_setup.CONTROLLER)
        if record is None or record.host not in hosts:
            return
        host = RemoteHost.connect(hosts[record.host], session.store, connect_timeout)
        with contextlib.suppress(MlclusterError), contextlib.closing(host):  # unreachable: its host's stop says so
            host.prepare_workdir()
            if not ProcessRuntime().stop(host, {pool_setup.CONTROLLER: record}, marker(session.state.name, record.host),
                                         only=True):
                session.record_service(pool_setup.CONTROLLER, None)

    # -- logs, details ----------------------------------------------------
    def logs(self, state: ClusterState, options: Optional[RemoteOptions], target: Optional[str], follow: bool,
             tail: int) -> Iterator[str]:
        session = Session(state, options)
        sid = target or "orchestrator"
        record = session.resources.services.get(sid)
        if record is None:
            known = ", ".join(sorted(session.resources.services)) or "none"
            raise MlclusterError(f"cluster {state.name!r} has no service {sid!r}", f"known: {known}")
        config = session.resources.hosts[record.host]
        host = session.connect(config, session.options.connect_timeout if session.options else 10.0)
        command = session.runtime(record.runtime).log_command(host, record, follow, tail)
        session.close()  # the runtimes' scratch files; the connection is opened again by the stream
        return _closing(host.conn.stream(command) if follow else iter(host.run(command).stdout.splitlines()), host)

    def describe(self, state: ClusterState, options: Optional[RemoteOptions]) -> str:
        recorded = state.resources.hosts
        hosts = {h.name: (h.address, h.workdir) for h in (options.hosts() if options else [])}
        hosts.update({n: (h.address, h.workdir) for n, h in recorded.items()})
        listed = ", ".join(f"{n} ({address}, in {workdir})" for n, (address, workdir) in sorted(hosts.items()))
        return (f"services on {len(hosts)} host(s): {listed or 'none recorded'}; their containers carry the label "
                f"mlcluster.cluster={state.name}, their processes MLCLUSTER_MARKER=ssh:{state.name}:<host>")

    def stopped_itself(self, state: ClusterState, options: Optional[RemoteOptions]) -> Optional[str]:
        """The orchestrator host's autostop record, read over SSH."""
        session = Session(state, options)
        try:
            found = _orchestrator_host(session)
            fired = watchdog.fired_remote(found[1]) if found else None
        except MlclusterError:
            return None
        finally:
            session.close()
        return watchdog.describe(fired) if fired else None

    @contextlib.contextmanager
    def admin_channel(self, state: ClusterState, options: Optional[RemoteOptions]) -> Iterator[str]:
        """The orchestrator's admin endpoints through SSH: a local port forwarded
        over the checked connection to the orchestrator's host, to its admin
        listener on that host's 127.0.0.1, so the token never crosses the
        network in cleartext (and the public port does not serve them at all)."""
        session = Session(state, options)
        try:
            found = _orchestrator_host(session)
            if found is None:
                raise MlclusterError(f"cluster {state.name!r} has no orchestrator recorded",
                                     f"`mlcluster up --name {state.name}` starts it")
            record, host = found
            if record.admin_port:  # the admin listener, on the host's loopback
                target, port = "127.0.0.1", record.admin_port
            else:  # an orchestrator started before it had one serves them on its public port
                target = "127.0.0.1" if host.config.bind in ("0.0.0.0", "::") else host.config.bind
                port = record.port
            with Forward(host.conn, target, port) as forward:
                yield forward.url
        finally:
            session.close()

    def details(self, state: ClusterState) -> dict[str, dict[str, str]]:
        resources = state.resources
        out = {}
        for sid, record in resources.services.items():
            host = resources.hosts.get(record.host)
            out[sid] = {"host": record.host, "address": host.address if host else "", "runtime": record.runtime}
        return out


def _closing(lines: Iterator[str], host: RemoteHost) -> Iterator[str]:
    try:
        yield from lines
    finally:
        host.close()


def _orchestrator_host(session: Session) -> Optional[tuple[Service, RemoteHost]]:
    """The orchestrator's record and a connection to its host (None: none recorded)."""
    record = session.resources.services.get("orchestrator")
    if record is None or record.host not in session.resources.hosts:
        return None
    timeout = session.options.connect_timeout if session.options else 10.0
    return record, session.connect(session.resources.hosts[record.host], timeout)

