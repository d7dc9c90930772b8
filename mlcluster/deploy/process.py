"""The process runtime: services as background processes on a host, this
machine (the local provider's processes) or a remote one over SSH.

Each service (mlcluster.services' command line) starts in its own session
(`setsid`: the SSH channel closes at once and `kill -- -PID` ends the whole
service) under `env -i`: of the login environment (SSH_CONNECTION, whatever
the user's profile or sshd's SetEnv put there) it keeps only the basics
services.PASSED_VARS names (a worker also the proxy and Hugging Face ones it may
need); its own settings come from the 0600 env file. Every process carries
MLCLUSTER_MARKER=<marker>, checked before any signal is sent (a recycled pid is
never killed), which lets `down` find strays when the state is lost.

The interpreter: the host's `python` option, or by default a venv made in the
workdir (`ensure_venv`; what it needs: docs/providers.md#ssh-table).
"""
from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Optional

from ..errors import MlclusterError
from ..remote.results import quote
from ..resources import Service
from ..services import MARKER_VAR, PASSED_VARS, WORKER_PASSED_VARS, orchestrator_command, worker_command
from .host import Host, RemoteHost, ServiceSpec

CHECK_IMPORTS = ("import mlcluster_contract, mlcluster_worker, mlcluster_orchestrator, "
                 "gunicorn, flask, httptools, orjson")
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
STARTUP_CHECK_S = 1.5


class ProcessRuntime:
    name = "process"

    def close(self) -> None:
        pass  # holds nothing on this machine

    def prepare(self, host: RemoteHost, step) -> None:
        """Find (or make) the interpreter the services run with."""
        if host.config.local:  # this machine: the interpreter running mlcluster now
            host.facts["python"] = host.config.python
            return
        if host.config.python:
            python = host.config.python
        else:
            step.update(f"{host.name}: making a Python environment (pip install; minutes the first time)")
            python = ensure_venv(host)
        check = host.run(f"{quote(python)} -c {quote(CHECK_IMPORTS)}", timeout=120, warn=True)
        if not check.ok:
            raise MlclusterError(f"{host.name}: {python} cannot import mlcluster's services: {check.tail(2)}",
                                 "set `python` for this host to an interpreter with mlcluster installed, "
                                 "or leave it out to have a venv made")
        host.facts["python"] = python

    def start(self, host: Host, service: ServiceSpec, marker: str, known: Optional[Service]) -> Service:
        if known and self.alive(host, known.pid, marker):
            return known
        python = host.facts["python"]
        self._check_port_free(host, python, service)
        env_file = host.write_env(service, shell=True)
        command = " ".join(quote(a) for a in (worker_command(python) if service.kind == "worker"
                                              else orchestrator_command(python)))
        passed = PASSED_VARS + (WORKER_PASSED_VARS if service.kind == "worker" else ())
        pid, log = launch(host, service.id, command, env_file, passed)
        host.facts.setdefault("just_started", []).append((service.id, pid, log, time.monotonic()))
        return Service(runtime=self.name, pid=pid, log=log, kind=service.kind)

    def verify(self, host: Host, marker: str) -> None:
        """A wrong interpreter or a broken environment fails at once."""
        started = host.facts.pop("just_started", [])
        if not started or host.config.local:  # this machine: `up` watches the orchestrator die while it waits
            return
        time.sleep(max(0.0, started[-1][3] + STARTUP_CHECK_S - time.monotonic()))
        for sid, pid, log, _ in started:
            if not self.alive(host, pid, marker):
                tail = host.run(f"tail -n 15 {quote(log)}", warn=True).stdout
                raise MlclusterError(f"{host.name}: {sid} exited right after starting; its log ends:\n{tail}")

    @staticmethod
    def _check_port_free(host: Host, python: str, service: ServiceSpec) -> None:
        bind = service.env.get("BIND", f"0.0.0.0:{service.port}").rsplit(":", 1)[0]
        wanted = [(bind, service.port)] + ([("127.0.0.1", service.admin_port)] if service.admin_port else [])
        for address, port in wanted:
            probe = ("import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                     f"s.bind(({address!r}, {int(port)}))")
            if not host.run(f"{quote(python)} -c {quote(probe)}", warn=True).ok:
                raise MlclusterError(f"{host.name}: port {port} is already taken, so {service.id} cannot start",
                                     "stop what listens there (another cluster?) or set worker_port / "
                                     "orchestrator_port / admin_port")

    def stop(self, host: Host, records: dict[str, Service], marker: str, only: bool = False) -> list[str]:
        pids = [r.pid for r in records.values() if r.pid]
        found = [] if only else host.run(find_by_marker(marker), warn=True).stdout.split()
        targets = sorted({int(p) for p in [*pids, *found]})
        if targets:
            host.run(_signal_script(targets, marker, "TERM"), timeout=30, warn=True)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self._any_alive(host, targets, marker):
                time.sleep(0.5)
            host.run(_signal_script(targets, marker, "KILL"), timeout=30, warn=True)
        left = [p for p in targets if self.alive(host, p, marker)]
        if not only:
            host.run(f"rm -f {quote(host.workdir)}/*.env {quote(host.workdir)}/*.pid", warn=True)
        return [f"{host.name}: process {p} is still running" for p in left]

    def log_command(self, host: Host, record: Service, follow: bool, tail: int) -> str:
        lines = "+1" if tail <= 0 else str(int(tail))  # 0: the whole log
        return f"tail -n {lines} {'-F ' if follow else ''}{quote(record.log)} 2>&1"

    def running(self, host: Host, record: Service, marker: str) -> bool:
        return self.alive(host, record.pid, marker)

    def alive(self, host: Host, pid: int, marker: str) -> bool:
        return bool(pid) and host.run(_has_marker(pid, marker), warn=True).ok

    def _any_alive(self, host: Host, pids: list[int], marker: str) -> bool:
        return host.run(" || ".join(f"({_has_marker(p, marker)})" for p in pids), warn=True).ok


def launch(host: Host, name: str, command: str, env_file: str, passed: tuple[str, ...]) -> tuple[int, str]:
    """Start `command` (shell words) in the background on `host`, from its workdir, in a session of its
    own, under `env -i` with only `passed` of the login environment and the variables of `env_file`
    (0600, written by Host.write_env); its output appended to NAME.log. (Its pid, its log.)"""
    load = quote('set -a && . "$0" && set +a && exec setsid "$@"')
    log, pidfile = host.path(f"{name}.log"), host.path(f"{name}.pid")
    host.run(f"( cd {quote(host.workdir)} && exec {clean_env(passed)} /bin/sh -c {load} {quote(env_file)} "
             f"{command} >>{quote(log)} 2>&1 </dev/null & echo $! >{quote(pidfile)} )", timeout=30)
    return int(host.run(f"cat {quote(pidfile)}").stdout.strip()), log


def clean_env(passed: tuple[str, ...]) -> str:
    """`env -i` and those of `passed` the login shell has, as shell words
    (expanded on the host: `${PATH+"PATH=$PATH"}` is nothing when PATH is unset)."""
    return "env -i " + " ".join(f'${{{name}+"{name}=${name}"}}' for name in passed)


def _has_marker(pid: int, marker: str) -> str:
    return (f"kill -0 {int(pid)} 2>/dev/null && tr '\\0' '\\n' </proc/{int(pid)}/environ 2>/dev/null "
            f"| grep -qxF {quote(f'{MARKER_VAR}={marker}')}")


def find_by_marker(marker: str) -> str:
    """Session leaders (our services) whose environment holds the marker."""
    needle = quote(f"{MARKER_VAR}={marker}")
    return (f"for f in $(grep -lzxF {needle} /proc/[0-9]*/environ 2>/dev/null); do p=${{f#/proc/}}; p=${{p%/environ}}; "
            f"[ \"$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f4)\" = \"$p\" ] && echo $p; done; true")


def _signal_script(pids: list[int], marker: str, sig: str) -> str:
    """Signal each service's whole process group, only if it carries the marker."""
    return "; ".join(f"({_has_marker(p, marker)}) && kill -{sig} -- -{int(p)} 2>/dev/null" for p in pids) + "; true"


# -- the default interpreter: a venv with this project -----------------------------
def project_root() -> Path:
    root = Path(__file__).resolve().parents[2]  # mlcluster/deploy/process.py -> the checkout
    if not (root / "pyproject.toml").exists():
        raise MlclusterError("this mlcluster is installed without its source tree, so no venv can be made on hosts",
                             "set `python` in the [ssh] config to an interpreter on the hosts with mlcluster installed")
    return root


def source_tarball() -> tuple[bytes, str]:
    """This project's source (what `pip install` needs) as a .tar.gz, and its digest."""
    root = project_root()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for name in ("pyproject.toml", "README.md", "mlcluster", "contract", "worker_image", "orchestrator_image"):
            if (root / name).exists():
                tar.add(root / name, arcname=f"src/{name}",
                        filter=lambda t: None if "__pycache__" in t.name or t.name.endswith(".pyc") else _clean(t))
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()[:16]


def _clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def ensure_venv(host: RemoteHost, source: Optional[bytes] = None) -> str:
    """The venv in the host's workdir, made from this project's source (or `source`, a
    tarball `source_tarball` made: the controller's copy on an orchestrator host); its python."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        torch_version = version("torch").split("+")[0]  # the same torch as here, CPU build
    except PackageNotFoundError:
        torch_version = "2.13.0"
    data, digest = (source, hashlib.sha256(source).hexdigest()[:16]) if source else source_tarball()
    venv, stamp = host.path("venv"), host.path(f"venv/.mlcluster-{digest}")
    python = f"{venv}/bin/python"
    if host.run(f"test -f {quote(stamp)}", warn=True).ok:
        return python
    with tempfile.NamedTemporaryFile(suffix=".tar.gz") as f:
        f.write(data)
        f.flush()
        host.put(f.name, host.path("src.tar.gz"))
    host.run(f"cd {quote(host.workdir)} && rm -rf src && tar xzf src.tar.gz && "
             f"(test -x {quote(python)} || python3 -m venv {quote(venv)}) && "
             f"{quote(python)} -m pip install -q --upgrade pip && "
             f"{quote(python)} -m pip install -q --extra-index-url {TORCH_INDEX} torch=={torch_version} && "
             f"{quote(python)} -m pip install -q './src[local]' && touch {quote(stamp)}", timeout=1800)
    return python
