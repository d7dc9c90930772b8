"""A pool host made ready before the controller (elastic/pool.py) starts a
container there, the way `up` prepared the others (issue 20): on aws an
instance the controller launched (a replacement, or one to scale up) boots
with nothing of the cluster's on it.

Docker runtime: Docker installed and started when missing (deploy/docker.py's
`ensure_docker`, as `up` does), then the worker image `up` recorded for the
pool (its tag) made present: shipped from the orchestrator host's own engine
when it has it (`docker save | gzip` there, uploaded over the controller's SSH
connection, `docker load`), else pulled by the host itself. `up` leaves the
worker image in that engine for images = "ship" and "build" (the controller
has no build context: a fresh host gets the same image `up` built, shipped);
for "pull" the host pulls `worker_image`.

The model: `up`'s copy (uploaded into the workdir) at the same path, taken
from another pool host that has it (a scaled-up instance has it already: the
scaler brings it, elastic/poolscaler.py).

Process runtime: the interpreter `up` recorded; when it is the venv `up` made
in the workdir (no `python` configured), it is made there the same way
(deploy/process.py's `ensure_venv`) from the source tarball `up` left in the
controller's directory when it made the controller's own venv.

Once per connection: a host whose Docker answers and has the image costs one
`docker image inspect`.
"""
from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from shlex import quote
from typing import TYPE_CHECKING, Iterable

from ..deploy.docker import docker, ensure_docker
from ..deploy.process import CHECK_IMPORTS, ensure_venv
from ..errors import MlclusterError
from .poolscaler import copy_model

if TYPE_CHECKING:
    from .poolhosts import Member

log = logging.getLogger("mlcluster.elastic.pool")
READY = "ready"           # the host's facts: made ready on this connection
SOURCE = "src.tar.gz"     # deploy/process.py's ensure_venv leaves it in the controller's directory
SHIP_TIMEOUT_S = 1800


class LogStep:
    """What deploy/'s preparation says it does (a ui step's `update`), into the controller's log."""

    def __init__(self, name: str):
        self.name = name

    def update(self, text: str) -> None:
        log.info("%s", text)


def make_ready(member: "Member", docker_here: str, directory: Path, others: Iterable["Member"] = ()) -> str:
    """Make `member`'s host ready for its runtime; a sentence of what was done ("" when nothing was).
    `docker_here`: how docker is called on the controller's own host ("" without Docker);
    `directory`: the controller's; `others`: the pool's hosts, a copy of the model is taken from one
    that answers. Raises MlclusterError with the reason."""
    host = member.host
    if host.facts.get(READY):
        return ""
    started = time.monotonic()
    done = [ready_docker(member, docker_here, directory) if member.config.runtime == "docker"
            else ready_process(member, directory), ready_model(member, others)]
    host.facts[READY] = True
    said = ", ".join(d for d in done if d)
    return f"{said} in {time.monotonic() - started:.0f} s" if said else ""


def ready_model(member: "Member", others: Iterable["Member"]) -> str:
    """`up`'s model directory (one it uploaded into the workdir) at the same path on `member`'s host, copied
    from another pool host that has it (elastic/poolscaler.py's copy_model: through the controller)."""
    model, host = member.config.model, member.host
    if not model.startswith(host.workdir + "/") or host.run(f"test -f {quote(model)}/.complete", warn=True).ok:
        return ""
    name = model.rstrip("/").rsplit("/", 1)[1]
    for other in others:
        if other is member or other.host is None or other.config.model.rstrip("/").rsplit("/", 1)[-1] != name:
            continue
        if copy_model(other.host, other.config.model, host) != model:
            raise MlclusterError(f"{member.name}: the model was copied elsewhere than {model}")
        return f"the model copied from {other.name}"
    raise MlclusterError(f"{member.name}: no host of the pool answers with the model to copy ({name})")


def ready_docker(member: "Member", docker_here: str, directory: Path) -> str:
    host, step = member.host, LogStep(member.name)
    had_docker = host.run("command -v docker >/dev/null", warn=True).ok
    ensure_docker(host, step)
    tag = member.config.images.get("worker", "")
    if not tag:
        raise MlclusterError(f"{member.name}: `up` recorded no worker image for the pool")
    said = [] if had_docker else ["Docker installed"]
    if host.run(f"{docker(host)} image inspect {quote(tag)} >/dev/null 2>&1", warn=True).ok:
        return ", ".join(said)
    if docker_here and subprocess.run(f"{docker_here} image inspect {quote(tag)} >/dev/null 2>&1", shell=True,
                                      timeout=60).returncode == 0:
        ship(host, tag, docker_here, directory)
        return ", ".join(said + [f"image {tag} shipped from the orchestrator's host"])
    step.update(f"{member.name}: pulling {tag}")
    pulled = host.run(f"{docker(host)} pull -q {quote(tag)}", timeout=SHIP_TIMEOUT_S, warn=True)
    if not pulled.ok:
        raise MlclusterError(f"{member.name}: the worker image {tag} is neither in the orchestrator host's engine "
                             f"nor pullable there: {pulled.tail(2)}")
    return ", ".join(said + [f"image {tag} pulled"])


def ship(host, tag: str, docker_here: str, directory: Path) -> None:
    """`tag` from this host's engine into `host`'s: saved and gzipped here, uploaded, loaded there."""
    saved = directory / "worker-image.tar.gz"
    try:
        made = subprocess.run(f"set -o pipefail 2>/dev/null; {docker_here} save {quote(tag)} | gzip -1 >"
                              f"{quote(str(saved))}", shell=True, executable="/bin/bash", capture_output=True,
                              text=True, timeout=SHIP_TIMEOUT_S)
        if made.returncode != 0:
            raise MlclusterError(f"saving {tag} on the orchestrator's host failed: {made.stderr.strip()[-300:]}")
        remote = host.path("image-worker.tar.gz")
        host.put(saved, remote)
        loaded = host.run(f"{docker(host)} load -q -i {quote(remote)}; s=$?; rm -f {quote(remote)}; exit $s",
                          timeout=SHIP_TIMEOUT_S, warn=True)
        if not loaded.ok:
            raise MlclusterError(f"{host.name}: loading {tag} failed: {loaded.tail(2)}")
    finally:
        saved.unlink(missing_ok=True)


def ready_process(member: "Member", directory: Path) -> str:
    host = member.host
    python, made = member.config.python, ""
    if python == host.path("venv/bin/python"):  # `up`'s venv, no `python` configured: made as `up` makes it
        source = directory / SOURCE
        if not source.exists():
            raise MlclusterError(f"{member.name}: no source tarball ({source}) to make its venv from")
        python = ensure_venv(host, source.read_bytes())
        made = "its venv made"
    check = host.run(f"{quote(python)} -c {quote(CHECK_IMPORTS)}", timeout=120, warn=True)
    if not check.ok:
        raise MlclusterError(f"{member.name}: {python} cannot import mlcluster's services: {check.tail(2)}")
    host.facts["python"] = python
    return made
