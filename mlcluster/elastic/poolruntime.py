"""How the controller of an ssh or aws cluster (elastic/pool.py) starts, checks
and stops a worker container on a pool host, whatever that host's runtime.

It acts through the deployment layer's own runtimes over the controller's
RemoteHost: deploy/process.py's ProcessRuntime (a process found by its pid and
marker) and deploy/docker.py's DockerRuntime (a container `mlc-<cluster>-<id>`,
labelled with the cluster; `up`'s images, recorded per host in the controller's
config). There is no second Docker layer here: only the question "does it run?"
(`docker inspect` of the one name the runtime gives it) and the environment a
container needs on another host.

A Docker container that died is not started again by Docker's restart policy
when it was killed (`docker kill`) or stopped: the controller's heal starts the
same container again (DockerRuntime.start keeps an identical one and starts it
if it stopped), or runs it anew when it is gone. Nothing but the names the
runtime gives this cluster's containers is ever looked at, started or removed:
what the user runs by hand on a host is left alone.

A local Docker cluster's pool is this machine's host records (`HostConfig.local`):
its containers are run by the DockerRuntime `up` used (`local=True`: named
`mlcluster-<cluster>-<id>`, labelled provider=local, on the cluster's network,
published on 127.0.0.1 only: `DockerRuntime.here`); `up`'s listen on port 5000
inside, published on any free port; the controller's on a port chosen free on
127.0.0.1, the same inside and out; the orchestrator (a container on that
network) reaches each by its name (pool.py's `register`).
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from shlex import quote
from typing import TYPE_CHECKING, Callable, Optional

from ..deploy.docker import WORKER_PORT, DockerRuntime, docker, has_docker
from ..deploy.host import ServiceSpec
from ..deploy.process import ProcessRuntime
from ..errors import MlclusterError
from ..resources import Service
from ..services import BIND, MARKER_VAR
from .poolconfig import PoolMember
from .poolprepare import make_ready

if TYPE_CHECKING:
    from .poolhosts import Member


class PoolRuntime:
    """Both runtimes, as the controller uses them on its pool hosts."""

    def __init__(self, cluster: str, members: Optional[dict[str, "Member"]] = None, fresh: Optional[set[str]] = None,
                 docker_here: str = "", directory: Optional[Path] = None,
                 unready: Callable[[str, str], None] = lambda name, reason: None,
                 ready: Callable[[str, str], None] = lambda name, done: None):
        self.process = ProcessRuntime()
        self.docker = DockerRuntime(None, cluster)  # only start/stop/names: images are made present by poolprepare
        self.here = DockerRuntime(None, cluster, local=True)  # this machine's (a local Docker cluster)
        # A fresh host is made ready before its first container (elastic/poolprepare.py); `unready(name,
        # reason)` when that fails, `ready(name, what was done)` when something had to be done.
        self.docker_here, self.directory, self.unready, self.ready = docker_here, directory, unready, ready
        self.fresh = fresh if fresh is not None else set()  # names of the hosts the controller launched (aws)
        self.members = members if members is not None else {}  # the pool's (the model is copied from one)

    def make_ready(self, member: "Member") -> None:
        """A host the controller launched, made ready once per connection (up's own hosts were by `up`)."""
        if member.name not in self.fresh:
            return
        try:
            done = make_ready(member, self.docker_here, self.directory or Path("."),
                              [m for n, m in self.members.items() if n not in self.fresh])
        except MlclusterError as exc:
            self.unready(member.name, exc.message)
            raise
        if done:
            self.ready(member.name, done)

    def _docker(self, member: "Member") -> str:
        if not has_docker(member.host):
            raise MlclusterError(f"{member.name}: Docker does not answer there")
        member.host.facts.setdefault("images", dict(member.config.images))  # `up`'s image tags on that host
        return docker(member.host)

    def docker_of(self, member: "Member") -> DockerRuntime:
        """The Docker runtime `up` used on the member's host: this machine's, or a remote host's."""
        return self.here if member.config.host.local else self.docker

    def alive(self, member: "Member", cid: str, pid: int, marker: str) -> bool:
        """Does container `cid` (process `pid` on the process runtime) run on the member's host?"""
        if member.config.runtime != "docker":
            return self.process.alive(member.host, pid, marker)
        found = member.host.run(f"{self._docker(member)} inspect --format '{{{{.State.Running}}}}' "
                                f"{quote(self.docker_of(member).container_name(cid))} 2>/dev/null", warn=True)
        return found.ok and found.stdout.strip() == "true"

    def start(self, member: "Member", service: ServiceSpec, marker: str) -> Service:
        """Start the container (again): a process anew, a Docker container kept when identical and started."""
        self.make_ready(member)
        if member.config.runtime != "docker":
            record = self.process.start(member.host, service, marker, None)
            member.host.facts.pop("just_started", None)  # it is looked at again at the next look, not waited on
            return record
        self._docker(member)
        # up's on port 5000 inside, published on any free port; the controller's on its own
        if member.config.host.local:
            service = self.here.here(service, 0 if service.port == WORKER_PORT else service.port)
        return self.docker_of(member).start(member.host, service, marker, None)

    def stop(self, member: "Member", cid: str, pid: int, log: str, marker: str) -> list[str]:
        """Stop one container of the controller's (a drained stand-in); what still runs, named."""
        if member.config.runtime != "docker":
            record = Service(runtime="process", host=member.name, pid=pid, log=log)
            return self.process.stop(member.host, {cid: record}, marker, only=True)
        name = self.docker_of(member).container_name(cid)
        self.docker_of(member).stop(member.host, {cid: Service(runtime="docker", container=name)}, marker, only=True)
        return [f"{member.name}: container {name} is still there"] if self.alive(member, cid, 0, marker) else []


def stand_in_service(env: dict[str, str], model_dir: str, home: PoolMember, there: PoolMember, sid: str, port: int,
                     marker: str) -> ServiceSpec:
    """Container `sid` on pool host `there`, on `port`, for one of `up`'s on `home`: the home
    container's environment, with what differs on that host and runtime (its address, its copy
    of the model: in a container the model directory is mounted at /model)."""
    out = dict(env)
    docker_there = there.runtime == "docker"
    out[BIND] = f"{'0.0.0.0' if docker_there else there.host.bind}:{port}"  # a container's port is published
    out["WORKER_ID"] = sid
    out[MARKER_VAR] = marker
    if model_dir:  # a local model, uploaded by `up` to every worker host and spare
        out["MODEL"] = "/model" if docker_there else there.model
    elif env.get("MODEL") == home.model:
        out["MODEL"] = there.model
    return ServiceSpec(sid, "worker", port, out, model_dir=there.model if model_dir else "")


def stop_containers_here(cluster: str, docker_command: str, local: bool = False) -> None:
    """Autostop on a Docker orchestrator host (the controller is its agent): the cluster's
    containers on this host go, as deploy/watchdog.py's stop script removes them (`local`:
    a local Docker cluster's, labelled provider=local; its network and volume go at `down`)."""
    label = quote(f"label=mlcluster.cluster={cluster}")
    provider = "local" if local else "ssh"
    script = (f"{docker_command} ps -aq --filter {label} --filter label=mlcluster.provider={provider} "
              f"| xargs -r {docker_command} rm -f >/dev/null")
    subprocess.run(["sh", "-c", script], capture_output=True, timeout=120)


def docker_command(runtime: str, facts: dict) -> str:
    """How the controller calls docker on its own host ("" on the process runtime)."""
    return facts.get("docker", "docker") if runtime == "docker" else ""


def python_of(facts: dict, configured: Optional[str]) -> str:
    """The interpreter on a pool host: the process runtime's; on a Docker host only `free_port`'s probe needs one."""
    return facts.get("python") or configured or "python3"
