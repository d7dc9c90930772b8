"""The local provider: the whole cluster on this machine.

This machine is the cluster's hosts (`hosts`): the orchestrator's host record
and one per simulated worker (worker2's containers are `worker2-1`,
`worker2-2`, ...), deployed onto by the deployment layer like any provider's
hosts (`deploy.remote.deploy`), with the runtime the spec asks for:
- `process` (the default): one orchestrator and N×M worker processes
  (gunicorn), each in its own session, on free loopback ports;
- `docker`: the same as containers on this machine's engine, on the cluster's
  own network, published on 127.0.0.1 only (deploy/docker.py).

Each has a controller that heals it, autoscales it with --max-containers and is
its autostop agent: mlcluster/elastic's for processes, the pool controller of
ssh and aws clusters run here for Docker (elastic/pool_here.py, started by
`deploy`); `down` stops it first.

Every process carries MLCLUSTER_MARKER=<name>@<state dir> in its environment,
every container and network and volume the cluster's labels; `down` finds
them by those when the state is lost (never by name patterns).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import ContextManager, Iterator, Optional

from ..deploy import reading, remote, watchdog
from ..deploy.host import LocalHost, local_config
from ..deploy.localhost import LOOPBACK, find_marked, marker
from ..deploy.options import RemoteOptions
from ..deploy.process import ProcessRuntime
from ..deploy.runtime import Deployment
from ..elastic import local as elastic
from ..errors import MlclusterError
from ..models import hub_snapshot, resolve_model
from ..resources import LOCAL_HOST, DockerSetup
from ..state import ClusterSpec, ClusterState, cluster_dir
from ..ui import QuietUI
from .base import CostPlan


class LocalProvider:
    name = "local"

    # -- up ---------------------------------------------------------------
    def up(self, spec: ClusterSpec, state: ClusterState, ui: QuietUI) -> Deployment:
        runtime = "process" if spec.runtime == "auto" else spec.runtime  # Docker only when asked: builds take minutes
        if not state.resources.is_empty() and state.runtime != runtime:
            raise MlclusterError(f"cluster {spec.name!r} already runs with the {state.runtime} runtime",
                                 f"`mlcluster down --name {spec.name}` first to change it")
        if runtime == "docker":
            from ..deploy.docker import connect
            connect(timeout=3).close()  # or why no engine answers
            state.resources.docker = state.resources.docker or DockerSetup()  # `down` looks for its labels
        state.runtime = runtime
        # The model resolved (fetched, or its stand-in made) here, once, before anything starts; a
        # container gets a cached hub model's folder mounted (it may not reach the hub itself).
        model = resolve_model(spec.model, ui)
        ref = model.ref if runtime == "process" or model.local else str(hub_snapshot(model.ref) or model.ref)
        deployment = remote.deploy(dataclasses.replace(spec, model=ref), state, self.hosts(spec, runtime), ui)
        self._watchdog(spec, state, deployment.orchestrator_url, ui)
        if runtime == "process":  # heals always; scales with --max-containers (mlcluster/elastic)
            elastic.ensure_controller(state)  # docker: the pool controller, started by `deploy` (elastic/pool_here.py)
        return deployment

    @staticmethod
    def _watchdog(spec: ClusterSpec, state: ClusterState, url: str, ui: QuietUI) -> None:
        """A local cluster's autostop agent is its controller (one agent per cluster: mlcluster/elastic
        for the process runtime, the pool controller for Docker); a watchdog an older `up` started goes."""
        watchdog.stop_local(state)
        state.save()

    @staticmethod
    def hosts(spec: ClusterSpec, runtime: str = "process") -> RemoteOptions:
        """This machine as the cluster's hosts: the orchestrator's (LOCAL_HOST) and one
        record per simulated worker (worker1..N), with ports picked free on 127.0.0.1."""
        workdir = cluster_dir(spec.name) / ("docker" if runtime == "docker" else "logs")
        requested = spec.provider_options.get("local", {}).get("port")
        return RemoteOptions(orchestrator=local_config(LOCAL_HOST, workdir, runtime),
                             workers=[local_config(f"worker{w}", workdir, runtime) for w in range(1, spec.workers + 1)],
                             orchestrator_port=int(requested or 0), admin_port=0, worker_port=0, free_ports=True)

    def _recorded(self, state: ClusterState) -> RemoteOptions:
        """The hosts `up` deployed onto (the state's name wins over its spec's)."""
        return self.hosts(dataclasses.replace(state.spec, name=state.name), state.runtime)

    # -- down -------------------------------------------------------------
    def down(self, name: str, state: Optional[ClusterState], ui: QuietUI) -> list[str]:
        left: list[str] = []
        if state is not None:
            elastic.stop_controller(state)  # first, so it heals nothing that is being stopped
            left += remote.remove(name, state, self._recorded(state), ui)
        if state is None or state.resources.is_empty():  # the state lost: whatever carries the cluster's labels
            from ..deploy.docker import DockerRuntime
            left += DockerRuntime(None, name, local=True).stop(LocalHost(cluster_dir(name) / "docker"), {}, "")
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
        return reading.logs(state, self._recorded(state), target, follow, tail)

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
        workers = state.resources.of_kind("worker")
        if state.runtime != "docker":
            return {sid: {"pid": str(p.pid), "worker": p.worker} for sid, p in workers.items()}
        from ..deploy.docker import DockerRuntime
        here = LocalHost(cluster_dir(state.name) / "docker")
        facts = DockerRuntime(None, state.name, local=True).facts(here, workers)
        return {sid: {"worker": p.worker, **facts.get(sid, {})} for sid, p in workers.items()}
