"""The Docker runtime, on a remote host or on this machine: Docker itself there
(`ensure_docker`), the images there, the containers.

Images, by the `images` mode (docs/providers.md#ssh-table): a `build` tag carries the
build context's hash, so a host that has it skips the build and a changed source
builds anew; `ship` loads the image saved here only where the host's image id differs.

Containers: `mlc-<cluster>-<id>`, labelled with the cluster, the provider (ssh),
role, id and a digest of their settings (see `start`), hardened the same everywhere
(HARDENING_FLAGS). On this machine (a local cluster's hosts, `local=True`): named
`mlcluster-<cluster>-<id>`, labelled mlcluster.provider=local, from images built on
its engine when missing (mlcluster.images; shared between clusters, never removed),
and different only in where they listen (`here`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

from .. import images
from ..errors import MlclusterError, see_docs
from ..images import IMAGE_REPOS
from ..remote.results import quote
from ..resources import Service
from ..ui import QuietUI
from .host import Host, RemoteHost, ServiceSpec
from .options import RemoteOptions

L_CLUSTER, L_PROVIDER = "mlcluster.cluster", "mlcluster.provider"
# A container on this machine: the ports it listens on inside, and where the orchestrator keeps its registry.
WORKER_PORT, ORCHESTRATOR_PORT, ADMIN_PORT = 5000, 8000, 8001
STATE_MOUNT = "/var/lib/mlcluster"
LOOPBACK = "127.0.0.1"


class DockerRuntime:
    name = "docker"

    def __init__(self, options: Optional[RemoteOptions], cluster: str, worker_kind: str = "worker",
                 local: bool = False):
        self.options, self.cluster = options, cluster
        # Its containers' label mlcluster.provider and name prefix: a cluster on this machine ("local",
        # "mlcluster") and one on remote hosts ("ssh", "mlc") never take each other's containers.
        self.provider, self.prefix = ("local", "mlcluster") if local else ("ssh", "mlc")
        self.network, self.state_volume = f"{self.prefix}-{cluster}", f"{self.prefix}-{cluster}-state"
        self.worker_kind = worker_kind  # worker or worker-onnx (images.worker_kind of the backend)
        # What was prepared here once for every host, by (what, kind); one lock
        # per kind, so the small orchestrator image need not wait for the worker's.
        self._locks = {kind: threading.Lock() for kind in IMAGE_REPOS}
        self._local: dict[tuple[str, str], Any] = {}
        self._tmp_dir: Optional[Path] = None

    @property
    def _tmp(self) -> Path:
        """Scratch space on this machine for build contexts and saved images, made when first needed."""
        if self._tmp_dir is None:
            self._tmp_dir = Path(tempfile.mkdtemp(prefix="mlcluster-images-"))
        return self._tmp_dir

    def close(self) -> None:
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)

    # -- host preparation ---------------------------------------------------
    def prepare(self, host: RemoteHost, step) -> None:
        """Docker and the images on the host; on this machine (a local cluster's hosts, prepared one
        after another) the images built on its engine when missing, the cluster's network, and the
        orchestrator's state volume."""
        here = host.config.local
        if not here:
            ensure_docker(host, step)
        elif not has_docker(host):
            raise MlclusterError("no Docker engine answers on this machine", "start dockerd, or use --runtime process")
        roles = sorted(host.facts.get("roles", ()))
        host.facts["images"] = {}
        for role in roles:
            kind = self.worker_kind if role == "worker" else role
            how = "built here when missing: minutes the first time" if here else self.options.images
            step.update(f"{host.name}: getting the {kind} image ({how})")
            host.facts["images"][role] = self._local_image(kind)[0] if here else self.get_image(host, kind)
        if here:
            host.run(f"docker network inspect {quote(self.network)} >/dev/null 2>&1 || docker network create "
                     f"--driver bridge{self._labels('network')} {quote(self.network)} >/dev/null")
        if here and "orchestrator" in roles:
            host.run(f"docker volume create{self._labels('state')} {quote(self.state_volume)} >/dev/null")

    def _labels(self, role: str, more: Optional[dict[str, str]] = None) -> str:
        """`--label` flags: the cluster's, the provider's, the role and `more`."""
        labels = {L_CLUSTER: self.cluster, L_PROVIDER: self.provider, "mlcluster.role": role, **(more or {})}
        return "".join(f" --label {quote(f'{k}={v}')}" for k, v in labels.items())

    def get_image(self, host: RemoteHost, kind: str) -> str:
        """`kind`'s image made present on `host` the way the images mode says (build, ship, pull); its tag."""
        get = {"pull": self._image_pull, "build": self._image_build, "ship": self._image_ship}[self.options.images]
        return get(host, kind)

    def _image_pull(self, host: RemoteHost, kind: str) -> str:
        ref = self.options.worker_image if kind.startswith("worker") else self.options.orchestrator_image
        host.run(f"{docker(host)} pull -q {quote(ref)}", timeout=1800)
        return ref

    def _image_build(self, host: RemoteHost, kind: str) -> str:
        tarball, tag = self._context_tarball(kind)
        if host.run(f"{docker(host)} image inspect {quote(tag)} >/dev/null 2>&1", warn=True).ok:
            return tag
        remote = host.path(f"context-{kind}.tar.gz")
        host.put(tarball, remote)
        build_args = {**images.BUILD_ARGS.get(kind, {}), **self.options.build_args}
        args = "".join(f" --build-arg {quote(f'{k}={v}')}" for k, v in sorted(build_args.items()))
        host.run(f"{docker(host)} build -q -t {quote(tag)}{args} "
                 f"--label mlcluster.context={quote(tag.split(':')[1])} - < {quote(remote)} && rm -f {quote(remote)}",
                 timeout=3600)
        return tag

    def _image_ship(self, host: RemoteHost, kind: str) -> str:
        tag, image_id = self._local_image(kind)
        have = host.run(f"{docker(host)} image inspect --format '{{{{.Id}}}}' {quote(tag)} 2>/dev/null", warn=True)
        if have.ok and have.stdout.strip() == image_id:
            return tag
        saved = self._saved_image(kind, tag)
        remote = host.path(f"image-{kind}.tar.gz")
        host.put(saved, remote)
        host.run(f"{docker(host)} load -q -i {quote(remote)} && rm -f {quote(remote)}", timeout=1800)
        return tag

    def _context_tarball(self, kind: str) -> tuple[Path, str]:
        """The build context for `kind`, packed once per command: (file, tag).
        Only what the config names goes in (wheelhouse, CA bundle): the hosts
        download the rest from the package index themselves."""
        with self._locks[kind]:
            if ("context", kind) not in self._local:
                context = images.prepare_context(kind, self._tmp / f"context-{kind}", **self._context_options())
                base = self.options.build_args.get("BASE_IMAGE", "")
                digest = hashlib.sha256(f"{images.context_hash(context)}\0{base}".encode()).hexdigest()
                tag = f"{IMAGE_REPOS[kind]}:{digest[:16]}"
                tarball = self._tmp / f"context-{kind}.tar.gz"
                with tarfile.open(tarball, "w:gz", compresslevel=6) as tar:
                    tar.add(context, arcname=".")
                shutil.rmtree(context, ignore_errors=True)
                self._local[("context", kind)] = (tarball, tag)
            return self._local[("context", kind)]

    def _local_image(self, kind: str) -> tuple[str, str]:
        """`kind`'s image on this machine's engine, built there if missing
        (mlcluster.images, fed as a local build is: BuildOptions.from_env): (tag, id)."""
        with self._locks[kind]:
            if ("image", kind) not in self._local:
                build = images.BuildOptions.from_env(kind)
                build.base_image = self.options.build_args.get("BASE_IMAGE") or build.base_image
                for key, value in self._context_options().items():
                    setattr(build, key, value)
                with _local_engine(kind) as client:
                    tag = images.ensure_image(client, kind, QuietUI(), build)
                    self._local[("image", kind)] = (tag, client.images.get(tag).id)
            return self._local[("image", kind)]

    def _saved_image(self, kind: str, tag: str) -> Path:
        """The image saved and gzipped, once per command, for the hosts that lack it."""
        with self._locks[kind]:
            if ("saved", kind) not in self._local:
                saved = self._tmp / f"image-{kind}.tar.gz"
                with _local_engine(kind) as client:
                    with gzip.open(saved, "wb", compresslevel=1) as out:
                        for chunk in client.images.get(tag).save(named=tag):
                            out.write(chunk)
                self._local[("saved", kind)] = saved
            return self._local[("saved", kind)]

    def _context_options(self) -> dict:
        return {k: Path(v).expanduser() for k, v in (("wheelhouse", self.options.wheelhouse),
                                                      ("ca_bundle", self.options.ca_bundle)) if v}

    # -- containers ---------------------------------------------------------
    def container_name(self, service_id: str) -> str:
        return f"{self.prefix}-{self.cluster}-{service_id}"

    def label_filter(self) -> str:
        """`docker ps` (network ls, volume ls) filters for this cluster's containers (networks, volumes)."""
        return f"--filter {quote(f'label={L_CLUSTER}={self.cluster}')} --filter label={L_PROVIDER}={self.provider}"

    def here(self, service: ServiceSpec, port: int = 0, admin_port: int = 0) -> ServiceSpec:
        """`service` (listening on ORCHESTRATOR_PORT and ADMIN_PORT, or WORKER_PORT) as a container
        on this machine: on the cluster's network (the orchestrator reaches each worker by its name),
        its ports published on 127.0.0.1 only (on `port` and `admin_port`; 0: any free one), the
        orchestrator's registry on the state volume (a restarted orchestrator keeps its containers)."""
        publish = {service.port: f"{LOOPBACK}:{port or ''}"}
        if service.admin_port:
            publish[service.admin_port] = f"{LOOPBACK}:{admin_port or ''}"
        mounts = {self.state_volume: f"{STATE_MOUNT}:rw"} if service.kind == "orchestrator" else {}
        return dataclasses.replace(service, publish=publish, mounts=mounts, network=self.network)

    def start(self, host: Host, service: ServiceSpec, marker: str, known: Optional[Service]) -> Service:
        """Run the service's container unless an identical one already runs (a
        stopped identical one is started again, keeping its id)."""
        name, image = self.container_name(service.id), host.facts["images"][service.kind]
        if service.publish:  # a container on this machine (`here`)
            publish = service.publish
        else:
            publish = {service.port: f"{host.config.bind}:{service.port}"}
            if service.admin_port:  # the admin listener: on the host's loopback only, reached through SSH
                publish[service.admin_port] = f"127.0.0.1:{service.admin_port}"
        mounts = service.mounts or ({service.model_dir: "/model:ro"} if service.model_dir else {})
        local = (service.publish, service.mounts, service.network)
        digest = hashlib.sha256(repr((image, sorted(service.env.items()), service.port, service.model_dir,
                                      host.config.bind, HARDENING_FLAGS, service.admin_port)
                                     + ((local,) if any(local) else ())).encode()).hexdigest()[:16]
        record = Service(runtime=self.name, container=name, image=image, kind=service.kind)
        current = host.run(f"{docker(host)} inspect --format '{{{{.State.Running}}}} "
                           f"{{{{index .Config.Labels \"mlcluster.config\"}}}}' {quote(name)} 2>/dev/null", warn=True)
        if current.ok and current.stdout.split()[1:] == [digest]:
            if current.stdout.split()[0] != "true":
                host.run(f"{docker(host)} start {quote(name)} >/dev/null", timeout=120)
            return record
        env_file = host.write_env(service, shell=False)
        host.run(f"{docker(host)} rm -f {quote(name)} >/dev/null 2>&1; "
                 f"{docker(host)} run -d --name {quote(name)}{HARDENING_FLAGS}"
                 + self._labels(service.kind, {"mlcluster.id": service.id, "mlcluster.config": digest})
                 + f" --env-file {quote(env_file)}"
                 + "".join(f" -p {quote(f'{at}:{port}')}" for port, at in publish.items())
                 + "".join(f" -v {quote(f'{source}:{target}')}" for source, target in mounts.items())
                 + (f" --network {quote(service.network)} --hostname {quote(service.id)}" if service.network else "")
                 + f" {quote(image)} >/dev/null", timeout=120)
        return record

    def verify(self, host: Host, marker: str) -> None:
        """Nothing to wait for: `docker run -d` failed loudly if the container
        could not start, and the restart policy handles later exits."""

    def stop(self, host: Host, records: dict[str, Service], marker: str, only: bool = False) -> list[str]:
        """Anything else of ours (unless `only`): every container, network and volume with this cluster's labels."""
        names = [r.container for r in records.values() if r.container]
        if not has_docker(host):
            return [f"{host.name}: Docker does not answer, so containers {', '.join(names)} may still exist"] \
                if names else []
        if names:
            host.run(f"{docker(host)} rm -f {' '.join(quote(n) for n in names)} >/dev/null 2>&1",
                     warn=True, timeout=120)
        if only:
            return []
        d, label = docker(host), self.label_filter()
        host.run(f"{d} ps -aq {label} | xargs -r {d} rm -f >/dev/null; {d} network ls -q {label} | xargs -r {d} "
                 f"network rm >/dev/null; {d} volume ls -q {label} | xargs -r {d} volume rm -f >/dev/null",
                 timeout=120, warn=True)
        left = [f"{host.name}: {kind} {c} is still there" for kind in ("container", "network", "volume")
                for c in host.run(f"{d} {'ps -a' if kind == 'container' else kind + ' ls'} -q {label}",
                                  warn=True).stdout.split()]
        host.run(f"rm -f {quote(host.workdir)}/*.env", warn=True)
        return left

    def running(self, host: Host, record: Service, marker: str) -> bool:
        state = host.run(f"{docker(host)} inspect --format '{{{{.State.Status}}}}' {quote(record.container)}",
                         warn=True)
        return state.ok and state.stdout.strip() not in ("exited", "dead")

    def facts(self, host: Host, records: dict[str, Service]) -> dict[str, dict[str, str]]:
        """What `status` shows of each recorded container: its name, id, state, health, image and
        where its port is published."""
        names = {r.container: (sid, r.port) for sid, r in records.items() if r.container}
        found = host.run(f"{docker(host)} inspect {' '.join(quote(n) for n in names)}", warn=True) if names else None
        facts = {}
        for c in json.loads(found.stdout or "[]") if found else []:
            sid, port = names.get(c["Name"].lstrip("/"), ("", 0))
            bound = [f"{b['HostIp']}:{b['HostPort']}" for b in
                     (c["NetworkSettings"].get("Ports") or {}).get(f"{port}/tcp") or [] if b.get("HostPort")]
            facts[sid] = {"container": c["Name"].lstrip("/"), "docker_id": c["Id"][:12],
                          "state": c["State"]["Status"], "health": (c["State"].get("Health") or {}).get("Status", ""),
                          "published": bound[0] if bound else "", "image": c["Config"]["Image"]}
        return facts

    def log_command(self, host: Host, record: Service, follow: bool, tail: int) -> str:
        lines = "all" if tail <= 0 else str(int(tail))
        return f"{docker(host)} logs --tail {lines} {'-f ' if follow else ''}{quote(record.container)} 2>&1"


# Every container of ours, on every host: the images' non-root user, a read-only root file
# system with a small tmpfs, no capability, no privilege gain, restarted unless stopped.
HARDENING_FLAGS = (" --read-only --tmpfs /tmp:rw,nosuid,nodev,size=256m --cap-drop ALL"
                   " --security-opt no-new-privileges --restart unless-stopped")


def connect(timeout: float = 600):
    """A docker SDK client for this machine's engine (what builds the images:
    mlcluster.images), or a MlclusterError."""
    try:
        import docker as docker_sdk
        client = docker_sdk.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as exc:  # the SDK raises several kinds; all mean "no engine here"
        raise MlclusterError(f"no Docker engine answers on this machine ({type(exc).__name__})",
                             "start dockerd (as root: .ci/setup-docker.sh), or use --runtime process; "
                             + see_docs("no-docker-engine")) from None


@contextlib.contextmanager
def _local_engine(kind: str):
    """This machine's Docker engine (docker SDK); its errors become one sentence."""
    import docker as docker_sdk
    try:
        with contextlib.closing(docker_sdk.from_env(timeout=600)) as client:
            yield client
    except docker_sdk.errors.DockerException as exc:
        raise MlclusterError(f"getting the {kind} image from this machine's Docker engine failed: {exc}",
                             "a local cluster and images = \"ship\" need a Docker engine here; "
                             "\"build\" builds on the hosts") from None


# -- Docker itself on a host ---------------------------------------------------
INSTALL_SCRIPT = r"""
set -e
. /etc/os-release
case " $ID $ID_LIKE " in
  *" debian "*|*" ubuntu "*)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io ;;
  *" amzn "*|*" fedora "*|*" rhel "*|*" centos "*)
    if command -v dnf >/dev/null; then dnf install -y -q docker; else yum install -y -q docker; fi ;;
  *) echo "no known way to install Docker on $ID ($PRETTY_NAME)" >&2; exit 3 ;;
esac
"""
START_SCRIPT = r"""
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl enable --now docker
elif command -v service >/dev/null && service docker start; then :
else setsid dockerd >/var/log/mlcluster-dockerd.log 2>&1 </dev/null & fi
for i in $(seq 1 60); do docker info >/dev/null 2>&1 && exit 0; sleep 1; done
echo "dockerd did not answer within 60 s" >&2; exit 1
"""


def docker(host: Host) -> str:
    """How to call docker on this host ("docker" or "sudo -n docker")."""
    return host.facts.get("docker", "docker")


def has_docker(host: Host) -> bool:
    if "docker" in host.facts:
        return True
    for command in ("docker", f"{host.sudo}docker"):
        if host.run(f"{command} info >/dev/null 2>&1", warn=True, timeout=30).ok:
            host.facts["docker"] = command
            return True
    return False


def ensure_docker(host: RemoteHost, step) -> None:
    """Docker installed where missing (with the distribution's package manager), running (with or
    without an init system) and usable by the login user, through `sudo -n docker` until its new
    `docker` group membership takes effect. Needs root or password-less sudo on the host."""
    if has_docker(host):
        return
    sudo = host.sudo
    if not host.run("command -v docker >/dev/null", warn=True).ok:
        step.update(f"{host.name}: installing Docker")
        result = host.run(f"{sudo}sh -c {quote(INSTALL_SCRIPT)}", timeout=900, warn=True)
        if not result.ok:
            raise MlclusterError(f"{host.name}: installing Docker failed: {result.tail(3)}",
                                 "install Docker on the host yourself, or use runtime = \"process\"")
    step.update(f"{host.name}: starting Docker")
    result = host.run(f"{sudo}sh -c {quote(START_SCRIPT)}", timeout=120, warn=True)
    if not result.ok:
        raise MlclusterError(f"{host.name}: Docker is installed but does not start: {result.tail(3)}")
    if sudo:
        # The group applies to new logins: reconnect so later commands have it.
        host.run(f"{sudo}usermod -aG docker {quote(host.config.user)}", warn=True)
        host.conn.close()
        host.facts.pop("docker", None)
    if not has_docker(host):
        raise MlclusterError(f"{host.name}: Docker runs but user {host.config.user!r} cannot use it, "
                             "not even with sudo",
                             "give the user password-less sudo or membership of the docker group")
