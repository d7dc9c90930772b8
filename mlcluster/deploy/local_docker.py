"""The Docker runtime on this machine: the cluster as containers on the local
engine, started by the one `DockerRuntime` (docker.py, the docker CLI) on a
`LocalHost`, as on any remote host. The local provider delegates here when
`spec.runtime == "docker"`.

What `up` makes, all labelled `mlcluster.cluster=<name>` and
`mlcluster.provider=local` (plus `mlcluster.role`, `mlcluster.id`):
- the images `mlcluster-worker` / `mlcluster-orchestrator`, built if missing
  (mlcluster.images; images are shared between clusters and never removed);
- a bridge network `mlcluster-<name>`: the orchestrator reaches each worker
  container by its name, on port 5000;
- a volume `mlcluster-<name>-state` for the orchestrator's registry, so a
  restarted orchestrator keeps its containers;
- the orchestrator container (port 8000 published on 127.0.0.1; its admin
  listener, port 8001 inside, published on another 127.0.0.1 port) and N×M worker
  containers `mlcluster-<name>-worker<w>-<c>` (port 5000 published on a free
  127.0.0.1 port, for looking at one directly). A local model directory is
  mounted read-only at /model; one whose files the containers' user could not
  read is copied into a volume `mlcluster-<name>-model` instead.
Containers are hardened and kept or replaced as on every host (docker.py). `down`
removes exactly what carries the labels, with or without state.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import stat
from pathlib import Path
from typing import Iterator, Optional

from .. import security, services
from ..errors import MlclusterError, see_docs
from ..images import ensure_image, worker_kind
from ..models import hub_snapshot, resolve_model
from ..remote.results import CommandFailed, quote
from ..resources import LOCAL_HOST, DockerSetup, Service
from ..state import ClusterSpec, ClusterState, ContainerRecord, cluster_dir
from ..ui import QuietUI
from .docker import DockerRuntime, has_docker
from .host import Host, LocalHost, ServiceSpec
from .localhost import LOOPBACK, free_port
from .runtime import Deployment

WORKER_PORT, ORCHESTRATOR_PORT, ADMIN_PORT = 5000, 8000, 8001
MODEL_MOUNT, STATE_MOUNT = "/model", "/var/lib/mlcluster"
L_CLUSTER, L_PROVIDER = "mlcluster.cluster", "mlcluster.provider"


def connect(timeout: float = 600):
    """A docker SDK client for this machine's engine (what builds the images:
    mlcluster.images), or a MlclusterError."""
    try:
        import docker
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as exc:  # the SDK raises several kinds; all mean "no engine here"
        raise MlclusterError(f"no Docker engine answers on this machine ({type(exc).__name__})",
                             "start dockerd (as root: .ci/setup-docker.sh), or use --runtime process; "
                             + see_docs("no-docker-engine")) from None


def _labels(cluster: str, role: str) -> str:
    return "".join(f" --label {quote(label)}" for label in
                   (f"{L_CLUSTER}={cluster}", f"{L_PROVIDER}=local", f"mlcluster.role={role}"))


class LocalDockerDeployment:
    """See the module docstring."""

    @staticmethod
    def _on(cluster: str) -> tuple[Host, DockerRuntime]:
        """This machine (the services' env files in the cluster's directory) and the runtime on it."""
        return LocalHost(cluster_dir(cluster) / "docker"), DockerRuntime(None, cluster, provider="local",
                                                                          prefix="mlcluster")

    # -- up -----------------------------------------------------------------------
    def up(self, spec: ClusterSpec, state: ClusterState, ui: QuietUI) -> Deployment:
        try:
            return self._up(spec, state, ui)
        except CommandFailed as exc:
            raise MlclusterError(f"the Docker engine refused a step of `up`: {exc.result.tail(3)}",
                                 f"`mlcluster down --name {spec.name}` removes what was started") from None

    def _up(self, spec: ClusterSpec, state: ClusterState, ui: QuietUI) -> Deployment:
        host, runtime = self._on(spec.name)
        res = state.resources.docker = state.resources.docker or DockerSetup()
        client = connect()
        try:
            res.images = {"orchestrator": ensure_image(client, "orchestrator", ui),
                          "worker": ensure_image(client, worker_kind(spec.backend), ui)}
        finally:
            client.close()
        host.facts["images"] = res.images
        network = f"mlcluster-{spec.name}"
        res.network = host.run(f"docker network inspect --format '{{{{.Id}}}}' {network} 2>/dev/null || "
                               f"docker network create --driver bridge{_labels(spec.name, 'network')} {network}"
                               ).stdout.strip()
        state.save()
        wanted = self._services(spec, state, host, res, network, ui)
        names = {runtime.container_name(s.id) for s in wanted}
        listed = host.run(f"docker ps -a {runtime.label_filter()} --format '{{{{.Names}}}} "
                          "{{.Label \"mlcluster.role\"}}'").stdout.split("\n")
        for name, role in (line.split(" ", 1) for line in listed if " " in line):
            if name not in names and role in ("orchestrator", "worker"):
                ui.info(f"removing {name}: no longer part of the cluster")
                host.run(f"docker rm -f {quote(name)} >/dev/null")
                for sid in [s for s, r in state.resources.services.items() if r.container == name]:
                    del state.resources.services[sid]
        with ui.step(f"starting {len(wanted)} container(s)", total=len(wanted)) as step:
            for service in wanted:
                record = runtime.start(host, service, "", None)
                state.resources.services[service.id] = dataclasses.replace(
                    record, host=LOCAL_HOST, port=WORKER_PORT if service.kind == "worker" else 0,  # published: below
                    worker=service.labels.get("mlcluster.worker", ""))
                state.save()  # recorded the moment it exists, so `down` can always clean it
                step.advance()
        orchestrator = runtime.container_name("orchestrator")
        record = state.resources.services["orchestrator"]
        record.port, record.admin_port = (_published(host, orchestrator, p) or 0 for p in (ORCHESTRATOR_PORT, ADMIN_PORT))
        state.save()
        url = f"{security.scheme(state)}://{LOOPBACK}:{record.port}"
        services.wait_answering(
            url, what=f"the orchestrator container {orchestrator}", session=security.http_session(state),
            running=lambda: host.run(f"docker inspect --format '{{{{.State.Status}}}}' {orchestrator}",
                                     warn=True).stdout.strip() not in ("exited", "dead"),
            log_tail=lambda: host.run(f"docker logs --tail 15 {orchestrator} 2>&1", warn=True).stdout)
        containers = [ContainerRecord(id=s.id, host=runtime.container_name(s.id), port=WORKER_PORT,
                                      worker=s.labels["mlcluster.worker"]) for s in wanted if s.kind == "worker"]
        return Deployment(orchestrator_url=url, containers=containers)

    def _volume(self, host: Host, name: str, cluster: str, role: str, res: DockerSetup, state: ClusterState,
                extra: str = "") -> str:
        host.run(f"docker volume create{_labels(cluster, role)}{extra} {quote(name)} >/dev/null")
        if name not in res.volumes:
            res.volumes.append(name)
            state.save()
        return name

    def _services(self, spec: ClusterSpec, state: ClusterState, host: Host, res: DockerSetup, network: str,
                  ui: QuietUI) -> list[ServiceSpec]:
        """The orchestrator first, then every worker container."""
        state_volume = self._volume(host, f"mlcluster-{spec.name}-state", spec.name, "state", res, state)
        known = state.resources.services.get("orchestrator") or Service()
        port = int(spec.provider_options.get("local", {}).get("port") or known.port or free_port())
        admin_port = known.admin_port or free_port(avoid=port)
        env = services.orchestrator_env(
            port=ORCHESTRATOR_PORT, token=state.token, worker_token=state.worker_token, host="0.0.0.0",
            queue_limit=spec.queue_limit, queue_timeout_s=spec.queue_timeout_s,
            status_file=f"{STATE_MOUNT}/registry.json",
            admin_bind=f"0.0.0.0:{ADMIN_PORT}")  # inside; published on this machine's 127.0.0.1 only
        env.update(security.orchestrator_env(state, inline=True))  # TLS and API keys, when asked
        wanted = [ServiceSpec("orchestrator", "orchestrator", ORCHESTRATOR_PORT, env, network=network,
                              publish={ORCHESTRATOR_PORT: f"{LOOPBACK}:{port}", ADMIN_PORT: f"{LOOPBACK}:{admin_port}"},
                              mounts={state_volume: f"{STATE_MOUNT}:rw"})]
        model_ref, mounts = self._model(spec, state, host, res, ui)
        total = spec.workers * spec.containers_per_worker
        threads = max(1, int(host.run("docker info --format '{{.NCPU}}'").stdout.strip() or 1) // total)
        for w in range(1, spec.workers + 1):
            for c in range(1, spec.containers_per_worker + 1):
                cid = f"worker{w}-{c}"
                env = services.worker_env(model=model_ref, port=WORKER_PORT, host="0.0.0.0", torch_threads=threads,
                                          worker_id=cid, service_ms=spec.service_ms,
                                          **services.cluster_worker_settings(spec, state))
                if mounts:
                    env["HF_HUB_OFFLINE"] = "1"
                wanted.append(ServiceSpec(cid, "worker", WORKER_PORT, env, publish={WORKER_PORT: f"{LOOPBACK}:"},
                                          mounts=mounts, network=network, labels={"mlcluster.worker": f"worker{w}"}))
        return wanted

    def _model(self, spec: ClusterSpec, state: ClusterState, host: Host, res: DockerSetup, ui: QuietUI):
        """MODEL for the workers, and the mounts that bring it to them."""
        model = resolve_model(spec.model, ui)
        source = Path(model.ref) if model.local else hub_snapshot(model.ref)
        if source is None:
            return model.ref, {}  # overhead-test, or a hub id the containers fetch themselves
        if _world_readable(source):
            return MODEL_MOUNT, {str(source): f"{MODEL_MOUNT}:ro"}
        # One volume per source folder: a cluster moved to another model gets a new one.
        name = f"mlcluster-{spec.name}-model-{hashlib.sha256(str(source).encode()).hexdigest()[:8]}"
        if host.run(f"docker volume inspect {quote(name)} >/dev/null 2>&1", warn=True).ok:
            return MODEL_MOUNT, {name: f"{MODEL_MOUNT}:ro"}
        self._volume(host, name, spec.name, "model", res, state, f" --label {quote(f'mlcluster.model-source={source}')}")
        mount, sub = _copy_source(source)
        with ui.step(f"copying the model {source} into the volume {name} (its files are not world-readable)"):
            copied = host.run(f"docker run --rm --user 0 --network none{_labels(spec.name, 'model-copy')} --cap-drop ALL "
                              f"--cap-add DAC_READ_SEARCH --security-opt no-new-privileges "
                              f"-v {quote(f'{mount}:/src:ro')} -v {quote(f'{name}:/model:rw')} {res.images['worker']} "
                              f"sh -c {quote(f'cp -rL /src/{sub}/. /model/ && chmod -R a+rX /model')}",
                              timeout=600, warn=True)
            if not copied.ok:
                host.run(f"docker volume rm -f {quote(name)}", warn=True)
                raise MlclusterError(f"copying the model {source} into a volume failed: {copied.tail(3)}")
        return MODEL_MOUNT, {name: f"{MODEL_MOUNT}:ro"}

    # -- down ---------------------------------------------------------------------
    def down(self, name: str, state: Optional[ClusterState], ui: QuietUI) -> list[str]:
        host, runtime = self._on(name)
        if not has_docker(host):
            return ["the Docker engine does not answer: the cluster's containers may still exist"] \
                if state and state.resources.docker is not None else []
        recorded = {sid: r for sid, r in (state.resources.services if state else {}).items() if r.runtime == "docker"}
        with ui.step("removing the cluster's containers"):
            left = runtime.stop(host, recorded, "")
        filters = runtime.label_filter()
        for kind, remove in (("network", "network rm"), ("volume", "volume rm -f")):
            host.run(f"docker {kind} ls -q {filters} | xargs -r docker {remove} >/dev/null", warn=True)
            left += [f"{kind} {n} could not be removed"
                     for n in host.run(f"docker {kind} ls -q {filters}", warn=True).stdout.split()]
        return left

    # -- logs, details --------------------------------------------------------------
    def logs(self, state: ClusterState, target: Optional[str], follow: bool, tail: int) -> Iterator[str]:
        host, runtime = self._on(state.name)
        target = target or "orchestrator"
        found = host.run(f"docker ps -aq {runtime.label_filter()} --filter {quote(f'label=mlcluster.id={target}')}")
        if not found.stdout.split():
            known = host.run(f"docker ps -a {runtime.label_filter()} --format '{{{{.Label \"mlcluster.id\"}}}}'")
            raise MlclusterError(f"cluster {state.name!r} has no container {target!r}",
                                 f"known: {', '.join(sorted(k for k in known.stdout.split() if k))}")
        record = Service(runtime="docker", container=found.stdout.split()[0])
        yield from (line + "\n" for line in host.stream(runtime.log_command(host, record, follow, tail)))

    def details(self, state: ClusterState) -> dict[str, dict[str, str]]:
        host, runtime = self._on(state.name)
        ids = host.run(f"docker ps -aq {runtime.label_filter()} --filter label=mlcluster.role=worker").stdout.split()
        facts = {}
        for c in json.loads(host.run(f"docker inspect {' '.join(ids)}").stdout) if ids else []:
            labels = c["Config"]["Labels"]
            ports = [b for b in (c["NetworkSettings"].get("Ports") or {}).get(f"{WORKER_PORT}/tcp") or []
                     if b.get("HostIp") in (LOOPBACK, "") and b.get("HostPort")]
            facts[labels.get("mlcluster.id", c["Name"])] = {
                "worker": labels.get("mlcluster.worker", ""), "container": c["Name"].lstrip("/"),
                "docker_id": c["Id"][:12], "state": c["State"]["Status"],
                "health": (c["State"].get("Health") or {}).get("Status", ""),
                "published": f"{LOOPBACK}:{ports[0]['HostPort']}" if ports else "", "image": c["Config"]["Image"]}
        return facts


def stop_containers(cluster: str) -> None:
    """What a fired autostop watchdog runs: stop (not remove) the cluster's service containers."""
    host, runtime = LocalDockerDeployment._on(cluster)
    for role in ("orchestrator", "worker"):
        host.run(f"docker ps -q {runtime.label_filter()} --filter label=mlcluster.role={role} "
                 "| xargs -r docker stop -t 10 >/dev/null", timeout=120, warn=True)


def _published(host: Host, container: str, port: int) -> Optional[int]:
    """The 127.0.0.1 port `port` of the container is published on."""
    for line in host.run(f"docker port {quote(container)} {port}/tcp", warn=True).stdout.split():
        address, _, published = line.rpartition(":")
        if address in (LOOPBACK, "0.0.0.0") and published.isdigit():
            return int(published)
    return None


def _world_readable(root: Path) -> bool:
    """Whether a user with no relation to the files can read every one of them."""
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode  # follows links, as the container would
        need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
        if mode & need != need or path.is_symlink():
            return False  # a link may point out of the mounted folder
    return True


def _copy_source(source: Path) -> tuple[Path, str]:
    """What to mount to copy `source` with its links resolved: a hub cache's
    snapshot links to ../../blobs, so its repository folder; else itself."""
    if source.parent.name == "snapshots":
        return source.parent.parent, f"snapshots/{source.name}"
    return source, "."
