"""The Docker runtime on this machine: the cluster as containers on the local engine, through
the docker SDK.

The local provider delegates here when `spec.runtime == "docker"`.

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
Containers run as the images' non-root user, with a read-only root file
system, no capabilities and `--restart unless-stopped`. A container whose
settings (a digest in the label `mlcluster.config`) differ from what is wanted
is replaced; an identical one is kept, so `up` is idempotent. `down` removes
exactly what carries the labels, with or without state.
"""
from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from .. import security, services
from ..errors import MlclusterError, see_docs
from ..images import ensure_image, worker_kind
from ..models import hub_snapshot, resolve_model
from ..resources import LocalDocker
from ..state import ClusterSpec, ClusterState, ContainerRecord
from ..ui import QuietUI
from .docker import HARDENING
from .localhost import LOOPBACK, free_port
from .runtime import Deployment

WORKER_PORT, ORCHESTRATOR_PORT, ADMIN_PORT = 5000, 8000, 8001
MODEL_MOUNT, STATE_MOUNT = "/model", "/var/lib/mlcluster"
L_CLUSTER, L_PROVIDER, L_ROLE, L_ID, L_WORKER, L_CONFIG = (
    "mlcluster.cluster", "mlcluster.provider", "mlcluster.role", "mlcluster.id", "mlcluster.worker", "mlcluster.config")


def connect(timeout: float = 600):
    """A docker SDK client for this machine's engine, or a MlclusterError."""
    try:
        import docker
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as exc:  # the SDK raises several kinds; all mean "no engine here"
        raise MlclusterError(f"no Docker engine answers on this machine ({type(exc).__name__})",
                             "start dockerd (as root: .ci/setup-docker.sh), or use --runtime process; "
                             + see_docs("no-docker-engine")) from None


def labels_for(cluster: str, role: str = "", cid: str = "") -> dict[str, str]:
    labels = {L_CLUSTER: cluster, L_PROVIDER: "local"}
    if role:
        labels[L_ROLE] = role
    if cid:
        labels[L_ID] = cid
    return labels


def label_filters(cluster: str, **extra: str) -> dict:
    return {"label": [f"{L_CLUSTER}={cluster}", f"{L_PROVIDER}=local"] + [f"{k}={v}" for k, v in extra.items()]}


@dataclass
class ContainerPlan:
    """One container as it should be."""
    cid: str                  # the cluster's id for it: "orchestrator" or "worker<w>-<c>"
    role: str
    worker: str
    image: str
    env: dict[str, str]
    port: int                 # inside the container
    host_port: Optional[int]  # published on 127.0.0.1 (None: any free port)
    volumes: dict = field(default_factory=dict)
    extra_ports: dict = field(default_factory=dict)  # more container ports -> their 127.0.0.1 port (None: any)

    def name(self, cluster: str) -> str:
        return f"mlcluster-{cluster}-{self.cid}"

    def digest(self, image_id: str) -> str:
        text = json.dumps([image_id, self.env, self.port, self.host_port, self.volumes]
                          + ([self.extra_ports] if self.extra_ports else []), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class LocalDockerRuntime:
    name = "docker"

    def __init__(self, client=None):
        self._client = client

    @property
    def client(self):
        if self._client is None:
            self._client = connect()
        return self._client

    # -- up -----------------------------------------------------------------------
    def up(self, spec: ClusterSpec, state: ClusterState, ui: QuietUI) -> Deployment:
        import docker
        try:
            return self._up(spec, state, ui)
        except docker.errors.DockerException as exc:
            raise MlclusterError(f"the Docker engine refused a step of `up`: {exc}",
                                 f"`mlcluster down --name {spec.name}` removes what was started") from None

    def _up(self, spec: ClusterSpec, state: ClusterState, ui: QuietUI) -> Deployment:
        client = self.client
        if state.resources.docker is None:
            state.resources.docker = LocalDocker()
        res = state.resources.docker
        tags = {"orchestrator": ensure_image(client, "orchestrator", ui),
                "worker": ensure_image(client, worker_kind(spec.backend), ui)}
        res.images = tags
        network = self._network(spec.name, res, state)
        plans = self._plans(spec, state, tags, res, ui)
        wanted = {p.name(spec.name) for p in plans}
        for container in client.containers.list(all=True, filters=label_filters(spec.name)):
            if container.name not in wanted and container.labels.get(L_ROLE) in ("orchestrator", "worker"):
                ui.info(f"removing {container.name}: no longer part of the cluster")
                container.remove(force=True)
                res.containers.pop(container.name, None)
        with ui.step(f"starting {len(plans)} container(s)", total=len(plans)) as step:
            for plan in plans:
                self._ensure_container(plan, spec.name, network, res, state)
                step.advance()
        orchestrator = client.containers.get(plans[0].name(spec.name))
        res.orchestrator_port = _published_port(orchestrator, ORCHESTRATOR_PORT)
        res.admin_port = _published_port(orchestrator, ADMIN_PORT)
        state.save()
        url = f"{security.scheme(state)}://{LOOPBACK}:{res.orchestrator_port}"
        services.wait_answering(url, what=f"the orchestrator container {orchestrator.name}",
                                session=security.http_session(state),
                                running=lambda: _still_running(orchestrator),
                                log_tail=lambda: orchestrator.logs(tail=15).decode(errors="replace"))
        containers = [ContainerRecord(id=p.cid, host=p.name(spec.name), port=WORKER_PORT, worker=p.worker)
                      for p in plans if p.role == "worker"]
        return Deployment(orchestrator_url=url, containers=containers)

    def _network(self, cluster: str, res: LocalDocker, state: ClusterState):
        found = self.client.networks.list(names=[f"mlcluster-{cluster}"], filters=label_filters(cluster))
        network = found[0] if found else self.client.networks.create(
            f"mlcluster-{cluster}", driver="bridge", labels=labels_for(cluster, "network"))
        res.network = network.id
        state.save()
        return network

    def _volume(self, name: str, cluster: str, role: str, res: LocalDocker, state: ClusterState,
                extra_labels: Optional[dict] = None):
        import docker
        try:
            volume = self.client.volumes.get(name)
        except docker.errors.NotFound:
            volume = self.client.volumes.create(name, labels={**labels_for(cluster, role), **(extra_labels or {})})
        if name not in res.volumes:
            res.volumes.append(name)
            state.save()
        return volume

    def _plans(self, spec: ClusterSpec, state: ClusterState, tags: dict, res: LocalDocker,
               ui: QuietUI) -> list[ContainerPlan]:
        """The orchestrator first, then every worker container."""
        state_volume = self._volume(f"mlcluster-{spec.name}-state", spec.name, "state", res, state)
        port = spec.provider_options.get("local", {}).get("port") or res.orchestrator_port or free_port()
        orchestrator_env = services.orchestrator_env(
            port=ORCHESTRATOR_PORT, token=state.token, worker_token=state.worker_token, host="0.0.0.0",
            queue_limit=spec.queue_limit,
            queue_timeout_s=spec.queue_timeout_s, status_file=f"{STATE_MOUNT}/registry.json",
            admin_bind=f"0.0.0.0:{ADMIN_PORT}")  # inside; published on this machine's 127.0.0.1 only
        orchestrator_env.update(security.orchestrator_env(state, inline=True))  # TLS and API keys, when asked
        plans = [ContainerPlan("orchestrator", "orchestrator", "", tags["orchestrator"], orchestrator_env,
                               ORCHESTRATOR_PORT, int(port), {state_volume.name: {"bind": STATE_MOUNT, "mode": "rw"}},
                               {ADMIN_PORT: res.admin_port or free_port(avoid=int(port))})]
        model_ref, model_volumes = self._model(spec, res, state, tags["worker"], ui)
        total = spec.workers * spec.containers_per_worker
        threads = max(1, int(self.client.info().get("NCPU") or 1) // total)
        for w in range(1, spec.workers + 1):
            for c in range(1, spec.containers_per_worker + 1):
                cid = f"worker{w}-{c}"
                env = services.worker_env(model=model_ref, port=WORKER_PORT, host="0.0.0.0", torch_threads=threads,
                                          worker_id=cid, service_ms=spec.service_ms,
                                          **services.cluster_worker_settings(spec, state))
                if model_volumes:
                    env["HF_HUB_OFFLINE"] = "1"
                plans.append(ContainerPlan(cid, "worker", f"worker{w}", tags["worker"], env, WORKER_PORT, None, model_volumes))
        return plans

    def _model(self, spec: ClusterSpec, res: LocalDocker, state: ClusterState, image: str, ui: QuietUI):
        """MODEL for the workers, and the volumes that bring it to them."""
        model = resolve_model(spec.model, ui)
        source = Path(model.ref) if model.local else hub_snapshot(model.ref)
        if source is None:
            return model.ref, {}  # overhead-test, or a hub id the containers fetch themselves
        if _world_readable(source):
            return MODEL_MOUNT, {str(source): {"bind": MODEL_MOUNT, "mode": "ro"}}
        # One volume per source folder: a cluster moved to another model gets a new one.
        name = f"mlcluster-{spec.name}-model-{hashlib.sha256(str(source).encode()).hexdigest()[:8]}"
        if name not in {v.name for v in self.client.volumes.list(filters=label_filters(spec.name))}:
            self._copy_model(source, name, spec.name, image, res, state, ui)
        return MODEL_MOUNT, {name: {"bind": MODEL_MOUNT, "mode": "ro"}}

    def _copy_model(self, source: Path, volume: str, cluster: str, image: str, res: LocalDocker, state: ClusterState,
                    ui: QuietUI) -> None:
        """Fill a new volume with the model, readable by the containers' user."""
        import docker
        self._volume(volume, cluster, "model", res, state, {"mlcluster.model-source": str(source)})
        mount, sub = _copy_source(source)
        with ui.step(f"copying the model {source} into the volume {volume} (its files are not world-readable)"):
            try:
                self.client.containers.run(
                    image, ["sh", "-c", f"cp -rL '/src/{sub}/.' /model/ && chmod -R a+rX /model"], user="0",
                    remove=True, network_disabled=True, labels=labels_for(cluster, "model-copy"),
                    cap_drop=["ALL"], cap_add=["DAC_READ_SEARCH"], security_opt=["no-new-privileges"],
                    volumes={str(mount): {"bind": "/src", "mode": "ro"}, volume: {"bind": "/model", "mode": "rw"}})
            except docker.errors.ContainerError as exc:
                self.client.volumes.get(volume).remove(force=True)
                raise MlclusterError(f"copying the model {source} into a volume failed: {exc}") from None

    def _ensure_container(self, plan: ContainerPlan, cluster: str, network, res: LocalDocker,
                          state: ClusterState) -> None:
        import docker
        name = plan.name(cluster)
        digest = plan.digest(self.client.images.get(plan.image).id)
        try:
            current = self.client.containers.get(name)
        except docker.errors.NotFound:
            current = None
        if current is not None and current.labels.get(L_CONFIG) == digest:
            if current.status != "running":
                current.start()
            res.containers[name] = current.id
            return
        if current is not None:
            current.remove(force=True)
        labels = {**labels_for(cluster, plan.role, plan.cid), L_CONFIG: digest}
        if plan.worker:
            labels[L_WORKER] = plan.worker
        container = self.client.containers.create(
            plan.image, name=name, hostname=plan.cid, environment=plan.env, labels=labels, volumes=plan.volumes,
            ports={f"{p}/tcp": (LOOPBACK, h) if h else (LOOPBACK,)
                   for p, h in {plan.port: plan.host_port, **plan.extra_ports}.items()},
            network=network.name, **HARDENING)
        res.containers[name] = container.id
        state.save()  # recorded the moment it exists, so `down` can always clean it
        container.start()

    # -- down ---------------------------------------------------------------------
    def down(self, name: str, state: Optional[ClusterState], ui: QuietUI) -> list[str]:
        import docker
        res = state.resources.docker if state else None
        try:
            client = self.client
        except MlclusterError:
            return ["the Docker engine does not answer: the cluster's containers may still exist"] if res is not None else []
        left: list[str] = []
        containers = {c.id: c for c in client.containers.list(all=True, filters=label_filters(name))}
        for cid in (res.containers if res else {}).values():
            try:
                containers.setdefault(cid, client.containers.get(cid))
            except docker.errors.NotFound:
                pass
        with ui.step(f"removing {len(containers)} container(s)", total=len(containers) or None) as step:
            for container in containers.values():
                _remove(container, left, "container", force=True)
                step.advance()
        for network in client.networks.list(filters=label_filters(name)):
            _remove(network, left, "network")
        for volume in client.volumes.list(filters=label_filters(name)):
            _remove(volume, left, "volume", force=True)
        left += [f"container {c.name} is still there" for c in client.containers.list(all=True, filters=label_filters(name))]
        return left

    # -- logs, details --------------------------------------------------------------
    def logs(self, state: ClusterState, target: Optional[str], follow: bool, tail: int) -> Iterator[str]:
        target = target or "orchestrator"
        found = self.client.containers.list(all=True, filters=label_filters(state.name, **{L_ID: target}))
        if not found:
            known = sorted(c.labels.get(L_ID, "") for c in self.client.containers.list(all=True, filters=label_filters(state.name)))
            raise MlclusterError(f"cluster {state.name!r} has no container {target!r}",
                                 f"known: {', '.join(k for k in known if k)}")
        stream = found[0].logs(stream=True, follow=follow, tail=tail if tail > 0 else "all")
        pending = ""
        for chunk in stream:
            pending += chunk.decode(errors="replace")
            *lines, pending = pending.split("\n")
            yield from (line + "\n" for line in lines)
        if pending:
            yield pending

    def details(self, state: ClusterState) -> dict[str, dict[str, str]]:
        facts = {}
        for c in self.client.containers.list(all=True, filters=label_filters(state.name, **{L_ROLE: "worker"})):
            health = (c.attrs.get("State", {}).get("Health") or {}).get("Status", "")
            port = _published_port(c, WORKER_PORT)
            facts[c.labels.get(L_ID, c.name)] = {
                "worker": c.labels.get(L_WORKER, ""), "container": c.name, "docker_id": c.short_id, "state": c.status, "health": health,
                "published": f"{LOOPBACK}:{port}" if port else "", "image": ",".join(c.image.tags[:1])}
        return facts


# -- helpers ------------------------------------------------------------------------
def _remove(thing, left: list[str], kind: str, **kwargs) -> None:
    import docker
    try:
        thing.remove(**kwargs)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        left.append(f"{kind} {getattr(thing, 'name', thing.id)} could not be removed: {exc.explanation or exc}")


def _published_port(container, port: int) -> Optional[int]:
    container.reload()
    bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(f"{port}/tcp") or []
    for binding in bindings:
        if binding.get("HostIp") in (LOOPBACK, "") and binding.get("HostPort"):
            return int(binding["HostPort"])
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


def _still_running(container) -> bool:
    container.reload()
    return container.status not in ("exited", "dead")
