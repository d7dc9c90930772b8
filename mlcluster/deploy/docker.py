"""The Docker runtime over SSH: Docker on the host, the images there, the containers.

Host preparation: if `docker` is missing it is installed with the distribution's
package manager (apt for Debian/Ubuntu, dnf or yum for Amazon Linux/Fedora/RHEL),
started (systemctl, service, or dockerd in the background where there is no init
system), and the login user is added to the `docker` group; until that takes
effect (or when sudo is needed anyway) commands use `sudo -n docker`. Needs root
or password-less sudo on the host.

Images, `[ssh] images = ...`:
- `build` (default): the build context (mlcluster.images.prepare_context) is
  packed here once, uploaded to every host and built there, in parallel. The
  image tag carries the context's hash, so a host that has it skips the build
  and a changed source builds anew.
- `ship`: built once on this machine (its Docker engine), saved and gzipped
  once, uploaded to and loaded on every host whose image id differs.
- `pull`: `docker pull` of `worker_image` / `orchestrator_image`.

Containers: `mlc-<cluster>-<id>` (`mlcluster-<cluster>-<id>` on this machine:
deploy/local_docker.py runs this runtime on a LocalHost), labelled
mlcluster.cluster=<cluster> and mlcluster.provider (and role, id, and a digest
of their settings: a container whose settings changed is replaced, an identical
one is kept, started again if it stopped), `--restart unless-stopped`, the port
published on the host's `bind` address, settings in a 0600 env file, a local
model directory mounted read-only at /model. Hardened the same everywhere
(HARDENING_FLAGS): read-only root file system with a tmpfs at /tmp, every
capability dropped, no-new-privileges.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Optional

from .. import images
from ..errors import MlclusterError
from ..images import IMAGE_REPOS
from ..remote.results import quote
from ..resources import Service
from ..ui import QuietUI
from .host import Host, RemoteHost, ServiceSpec
from .options import RemoteOptions

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


class DockerRuntime:
    name = "docker"

    def __init__(self, options: Optional[RemoteOptions], cluster: str, worker_kind: str = "worker",
                 provider: str = "ssh", prefix: str = "mlc"):
        self.options, self.cluster = options, cluster
        # Its containers' label mlcluster.provider and name prefix: a cluster on this machine ("local",
        # "mlcluster") and one on remote hosts ("ssh", "mlc") never take each other's containers.
        self.provider, self.prefix = provider, prefix
        self.worker_kind = worker_kind  # worker or worker-onnx (images.worker_kind of the backend)
        # What was prepared here once for every host, by (what, kind); one lock
        # per kind, so the small orchestrator image need not wait for the worker's.
        self._locks = {kind: threading.Lock() for kind in IMAGE_REPOS}
        self._local: dict[tuple[str, str], tuple] = {}
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
        ensure_docker(host, step)
        host.facts["images"] = {}
        for role in sorted(host.facts.get("roles", ())):
            kind = self.worker_kind if role == "worker" else role
            step.update(f"{host.name}: getting the {kind} image ({self.options.images})")
            host.facts["images"][role] = self.get_image(host, kind)

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
                self._local[("saved", kind)] = (saved,)
            return self._local[("saved", kind)][0]

    def _context_options(self) -> dict:
        return {k: Path(v).expanduser() for k, v in (("wheelhouse", self.options.wheelhouse),
                                                      ("ca_bundle", self.options.ca_bundle)) if v}

    # -- containers ---------------------------------------------------------
    def container_name(self, service_id: str) -> str:
        return f"{self.prefix}-{self.cluster}-{service_id}"

    def label_filter(self) -> str:
        """`docker ps` filters for this cluster's containers."""
        return f"--filter {quote(f'label=mlcluster.cluster={self.cluster}')} --filter label=mlcluster.provider={self.provider}"

    def start(self, host: Host, service: ServiceSpec, marker: str, known: Optional[Service]) -> Service:
        """Run the service's container unless an identical one already runs (a
        stopped identical one is started again, keeping its id)."""
        name, image = self.container_name(service.id), host.facts["images"][service.kind]
        publish = service.publish or {service.port: f"{host.config.bind}:{service.port}",
                                      # the admin listener: on the host's loopback only, reached through SSH
                                      **({service.admin_port: f"127.0.0.1:{service.admin_port}"} if service.admin_port else {})}
        mounts = service.mounts or ({service.model_dir: "/model:ro"} if service.model_dir else {})
        local = (service.publish, service.mounts, service.network, service.labels)
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
        labels = {"mlcluster.cluster": self.cluster, "mlcluster.provider": self.provider, "mlcluster.role": service.kind,
                  "mlcluster.id": service.id, "mlcluster.config": digest, **service.labels}
        host.run(f"{docker(host)} rm -f {quote(name)} >/dev/null 2>&1; "
                 f"{docker(host)} run -d --name {quote(name)}{HARDENING_FLAGS}"
                 + "".join(f" --label {quote(f'{k}={v}')}" for k, v in labels.items())
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
        """Remove the recorded containers and (unless `only`) every container
        labelled with this cluster's name; returns what is left."""
        if not has_docker(host):
            return []
        names = [r.container for r in records.values() if r.container]
        label = self.label_filter()
        if names:
            host.run(f"{docker(host)} rm -f {' '.join(quote(n) for n in names)} >/dev/null 2>&1", warn=True, timeout=120)
        if only:
            return []
        host.run(f"{docker(host)} ps -aq {label} | xargs -r {docker(host)} rm -f >/dev/null", timeout=120)
        left = host.run(f"{docker(host)} ps -aq {label}", warn=True).stdout.split()
        host.run(f"rm -f {quote(host.workdir)}/*.env", warn=True)
        return [f"{host.name}: container {c} is still there" for c in left]

    def log_command(self, host: Host, record: Service, follow: bool, tail: int) -> str:
        lines = "all" if tail <= 0 else str(int(tail))
        return f"{docker(host)} logs --tail {lines} {'-f ' if follow else ''}{quote(record.container)} 2>&1"


# Every container of ours, on every host: the images' non-root user, a read-only root file
# system with a small tmpfs, no capability, no privilege gain, restarted unless stopped.
HARDENING_FLAGS = (" --read-only --tmpfs /tmp:rw,nosuid,nodev,size=256m --cap-drop ALL"
                   " --security-opt no-new-privileges --restart unless-stopped")


@contextlib.contextmanager
def _local_engine(kind: str):
    """This machine's Docker engine (docker SDK); its errors become one sentence."""
    import docker as docker_sdk
    try:
        client = docker_sdk.from_env(timeout=600)
        try:
            yield client
        finally:
            client.close()
    except docker_sdk.errors.DockerException as exc:
        raise MlclusterError(f"getting the {kind} image from this machine's Docker engine failed: {exc}",
                             "images = \"ship\" needs a Docker engine here; \"build\" builds on the hosts") from None


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
    """Docker installed, running and usable by the login user (or via sudo)."""
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
        raise MlclusterError(f"{host.name}: Docker runs but user {host.config.user!r} cannot use it, not even with sudo",
                             "give the user password-less sudo or membership of the docker group")
