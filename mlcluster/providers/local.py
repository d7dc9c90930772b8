"""The local provider: the whole cluster on this machine.

Runtime `process` (the default): one orchestrator and N×M worker processes
(gunicorn), each in its own session, on free loopback ports. "Workers" are
simulated machines: worker2's containers are `worker2-1`, `worker2-2`, ...
Runtime `docker`: delegated to `LocalDockerDeployment` (deploy/local_docker.py).

Every process carries MLCLUSTER_MARKER=<name>@<state dir> in its environment;
`down` finds them by it when the state is lost (never by name patterns).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import ContextManager, Iterator, Optional

from .. import security, services
from ..deploy import watchdog
from ..deploy.host import LocalHost, ServiceSpec
from ..deploy.localhost import (
    LOOPBACK,
    find_marked,
    free_port,
    is_alive,
    is_zombie,
    marker,
    port_free,
    read_log,
    terminate,
)
from ..deploy.process import ProcessRuntime
from ..deploy.runtime import Deployment
from ..elastic import local as elastic
from ..errors import MlclusterError
from ..models import resolve_model
from ..resources import LOCAL_HOST, Service
from ..state import ClusterSpec, ClusterState, ContainerRecord, cluster_dir
from ..ui import QuietUI
from .base import CostPlan


def docker_engine_answers() -> bool:
    try:
        import docker
        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # any failure means "no usable engine here"
        return False


class LocalProvider:
    name = "local"

    def _docker(self):
        from ..deploy.local_docker import LocalDockerDeployment
        return LocalDockerDeployment()

    def _runtime(self, spec_or_state_runtime: str) -> str:
        if spec_or_state_runtime == "auto":
            return "process"  # Docker only when asked: the first build takes minutes
        return spec_or_state_runtime

    # -- up ---------------------------------------------------------------
    def up(self, spec: ClusterSpec, state: ClusterState, ui: QuietUI) -> Deployment:
        runtime = self._runtime(spec.runtime)
        if not state.resources.is_empty() and state.runtime != runtime:
            raise MlclusterError(f"cluster {spec.name!r} already runs with the {state.runtime} runtime",
                                 f"`mlcluster down --name {spec.name}` first to change it")
        state.runtime = runtime
        if runtime == "docker":
            if not docker_engine_answers():
                raise MlclusterError("no Docker engine answers on this machine",
                                     "start dockerd, or use --runtime process")
            deployment = self._docker().up(spec, state, ui)
        else:
            deployment = self._up_processes(spec, state, ui)
        self._watchdog(spec, state, deployment.orchestrator_url, ui)
        if runtime == "process":  # heals always; scales with --max-containers (mlcluster/elastic)
            elastic.ensure_controller(state)
        elif spec.max_containers:
            raise MlclusterError("autoscaling needs the process runtime for now", "leave out --runtime docker")
        return deployment

    @staticmethod
    def _watchdog(spec: ClusterSpec, state: ClusterState, url: str, ui: QuietUI) -> None:
        """The autostop watchdog (deploy/watchdog.py) when autostop or
        max_lifetime is set; one no longer asked for is stopped."""
        watch = watchdog.settings(spec, state.resources)
        if watch is None or state.runtime == "process":  # a process cluster's controller watches (mlcluster/elastic)
            watchdog.stop_local(state)
        else:
            with ui.step("starting the autostop watchdog"):
                state.resources.services["watchdog"] = watchdog.ensure_local(state, f"{url}/status", *watch)
        state.save()

    def _up_processes(self, spec: ClusterSpec, state: ClusterState, ui: QuietUI) -> Deployment:
        model = resolve_model(spec.model, ui)
        procs = state.resources.services
        alive = {sid: p for sid, p in procs.items() if p.kind in ("orchestrator", "worker")
                 and is_alive(p.pid, marker(spec.name))}
        logs = cluster_dir(spec.name) / "logs"
        logs.mkdir(parents=True, exist_ok=True)

        wanted = [("orchestrator", "orchestrator", "")]
        for w in range(1, spec.workers + 1):
            for c in range(1, spec.containers_per_worker + 1):
                wanted.append(("worker", f"worker{w}-{c}", f"worker{w}"))
        extra = [sid for sid in alive if sid not in {w[1] for w in wanted}]
        if extra:  # a smaller cluster than last time: stop what is no longer asked for
            with ui.step(f"stopping {', '.join(extra)}: no longer part of the cluster"):
                terminate({alive[sid].pid for sid in extra})
            for sid in extra:
                del procs[sid]
            state.save()
        # The same process runtime as on any remote host, on this machine: env, pid and log files in logs/.
        host, runtime = LocalHost(logs), ProcessRuntime()
        host.facts["python"] = sys.executable
        threads = max(1, (os.cpu_count() or 1) // (spec.workers * spec.containers_per_worker))
        requested_port = spec.provider_options.get("local", {}).get("port")
        missing = [w for w in wanted if w[1] not in alive]
        with ui.step(f"starting {len(missing)} process(es)" if missing else "all processes already run", total=len(missing) or None) as step:
            for role, pid_id, worker in missing:
                previous = procs.get(pid_id)
                port = self._port(role, previous.port if previous else 0, requested_port)
                admin_port = 0
                if role == "orchestrator":  # its admin endpoints only on a loopback port of their own
                    admin_port = self._port("admin", previous.admin_port if previous else 0, None, avoid=port)
                    env = services.orchestrator_env(
                        port=port, token=state.token, worker_token=state.worker_token, queue_limit=spec.queue_limit,
                        queue_timeout_s=spec.queue_timeout_s, admin_bind=f"{LOOPBACK}:{admin_port}",
                        status_file=str(cluster_dir(spec.name) / "orchestrator-status.json"), marker=marker(spec.name))
                    env.update(security.orchestrator_env(state))
                else:
                    env = services.worker_env(model=model.ref, port=port, torch_threads=threads, worker_id=pid_id,
                                              service_ms=spec.service_ms, marker=marker(spec.name),
                                              **services.cluster_worker_settings(spec, state))
                    if model.local:
                        env["HF_HUB_OFFLINE"] = "1"
                started = runtime.start(host, ServiceSpec(pid_id, role, port, env, admin_port=admin_port),
                                        marker(spec.name), None)
                procs[pid_id] = Service(host=LOCAL_HOST, kind=role, worker=worker, port=port, log=started.log,
                                        pid=started.pid, admin_port=admin_port)
                state.save()  # recorded the moment it exists, so `down` can always clean it
                step.advance()
        orchestrator = procs["orchestrator"]
        url = f"{security.scheme(state)}://{LOOPBACK}:{orchestrator.port}"
        services.wait_answering(
            url, what="the orchestrator",
            running=lambda: Path(f"/proc/{orchestrator.pid}").exists() and not is_zombie(orchestrator.pid),
            log_tail=lambda: "".join(read_log(Path(orchestrator.log), False, 15)), session=security.http_session(state))
        containers = [ContainerRecord(id=sid, host=LOOPBACK, port=p.port, worker=p.worker)
                      for sid, p in procs.items() if p.kind == "worker" and sid in {w[1] for w in wanted}]
        return Deployment(orchestrator_url=url, containers=containers)

    def _port(self, role: str, previous: int, requested: Optional[int], avoid: int = 0) -> int:
        if role == "orchestrator" and requested:
            if not port_free(int(requested)):
                raise MlclusterError(f"port {requested} on {LOOPBACK} is already in use",
                                     "choose another with --port, or leave --port out to take a free one")
            return int(requested)
        if previous and port_free(previous):
            return previous  # a restarted process keeps its address
        return free_port(avoid)

    # -- down -------------------------------------------------------------
    def down(self, name: str, state: Optional[ClusterState], ui: QuietUI) -> list[str]:
        left: list[str] = []
        if (state is None or state.runtime == "docker" or state.resources.is_empty()) and docker_engine_answers():
            left += self._docker().down(name, state, ui)
        if state is not None:  # first, so it heals nothing that is being stopped
            elastic.stop_controller(state)
        # The process runtime stops what the state recorded and whatever else carries the marker,
        # and removes the services' env files (they hold the token).
        recorded = {sid: p for sid, p in (state.resources.services if state else {}).items() if p.runtime == "process"}
        with ui.step(f"stopping {len(set(find_marked(marker(name))))} process(es)"):
            ProcessRuntime().stop(LocalHost(cluster_dir(name) / "logs"), recorded, marker(name))
        survivors = find_marked(marker(name))
        left += [f"process {pid} of cluster {name!r} is still running" for pid in survivors]
        return left

    # -- logs, details ----------------------------------------------------
    def logs(self, state: ClusterState, target: Optional[str], follow: bool, tail: int) -> Iterator[str]:
        if state.runtime == "docker":
            yield from self._docker().logs(state, target, follow, tail)
            return
        target = target or "orchestrator"
        record = state.resources.services.get(target)
        if record is None:
            known = ", ".join(state.resources.services)
            raise MlclusterError(f"cluster {state.name!r} has no container {target!r}", f"known: {known}")
        yield from read_log(Path(record.log), follow, tail)

    def describe(self, state: ClusterState) -> str:
        if state.runtime == "docker":
            return f"Docker containers, network and volumes labelled mlcluster.cluster={state.name} on this machine"
        return (f"{len(state.resources.services)} process(es) on this machine "
                f"(MLCLUSTER_MARKER={marker(state.name)} in their environment)")

    def admin_channel(self, state: ClusterState) -> ContextManager[str]:
        """The orchestrator's admin listener, on 127.0.0.1 (the docker runtime
        publishes it there only); a cluster started before it had one serves
        the admin endpoints on its public address, which is 127.0.0.1 too."""
        orchestrator = state.resources.services.get("orchestrator")
        port = orchestrator.admin_port if orchestrator else 0
        return contextlib.nullcontext(f"http://{LOOPBACK}:{port}" if port else state.orchestrator_url)

    def stopped_itself(self, state: ClusterState) -> Optional[str]:
        return watchdog.fired_local(state)

    def plan(self, spec: ClusterSpec) -> Optional[CostPlan]:
        return None  # nothing here costs money: `up` needs no confirmation

    def details(self, state: ClusterState) -> dict[str, dict[str, str]]:
        if state.runtime == "docker":
            return self._docker().details(state)
        return {sid: {"pid": str(p.pid), "worker": p.worker} for sid, p in state.resources.of_kind("worker").items()}
