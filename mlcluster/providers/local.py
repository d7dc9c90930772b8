"""The local provider: the whole cluster on this machine.

Runtime `process` (the default): one orchestrator and N×M worker processes
(gunicorn), each in its own session, on free loopback ports, deployed by the
same code as any provider's hosts (deploy/remote.py): this machine is the
orchestrator's host record and one per simulated worker (`hosts`): worker2's
containers are `worker2-1`, `worker2-2`, ...
Runtime `docker`: delegated to `LocalDockerDeployment` (deploy/local_docker.py).

Every process carries MLCLUSTER_MARKER=<name>@<state dir> in its environment;
`down` finds them by it when the state is lost (never by name patterns).
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import ContextManager, Iterator, Optional

from ..deploy import watchdog
from ..deploy.host import LocalHost, local_config
from ..deploy.localhost import LOOPBACK, find_marked, marker, read_log
from ..deploy.options import RemoteOptions
from ..deploy.process import ProcessRuntime
from ..deploy.runtime import Deployment
from ..elastic import local as elastic
from ..errors import MlclusterError
from ..models import resolve_model
from ..resources import LOCAL_HOST
from ..state import ClusterSpec, ClusterState, cluster_dir
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
        else:  # the model resolved (fetched, or its stand-in made) here, once, before anything starts
            model = resolve_model(spec.model, ui).ref
            deployment = self._deployment().up(dataclasses.replace(spec, model=model), state, self.hosts(spec), ui)
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

    @staticmethod
    def hosts(spec: ClusterSpec) -> RemoteOptions:
        """This machine as the cluster's hosts: the orchestrator's (LOCAL_HOST) and one
        record per simulated worker (worker1..N), deployed onto like any provider's
        (deploy/remote.py), with ports picked free on 127.0.0.1."""
        logs = cluster_dir(spec.name) / "logs"
        requested = spec.provider_options.get("local", {}).get("port")
        return RemoteOptions(orchestrator=local_config(LOCAL_HOST, logs),
                             workers=[local_config(f"worker{w}", logs) for w in range(1, spec.workers + 1)],
                             orchestrator_port=int(requested or 0), admin_port=0, worker_port=0, free_ports=True)

    @staticmethod
    def _deployment():
        from ..deploy.remote import RemoteDeployment  # paramiko: never for `list` or `status`
        return RemoteDeployment()

    # -- down -------------------------------------------------------------
    def down(self, name: str, state: Optional[ClusterState], ui: QuietUI) -> list[str]:
        left: list[str] = []
        if (state is None or state.runtime == "docker" or state.resources.is_empty()) and docker_engine_answers():
            left += self._docker().down(name, state, ui)
        if state is not None:  # first, so it heals nothing that is being stopped
            elastic.stop_controller(state)
        if state is not None and state.runtime == "process":  # as on any provider's hosts (deploy/remote.py)
            left += self._deployment().down(name, state, self.hosts(state.spec), ui)
        # Whatever else carries the marker (the state lost, a stray), and the services' env files (they hold the token).
        strays = find_marked(marker(name))
        if strays or state is None:
            with ui.step(f"stopping {len(strays)} process(es)"):
                ProcessRuntime().stop(LocalHost(cluster_dir(name) / "logs"), {}, marker(name))
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
