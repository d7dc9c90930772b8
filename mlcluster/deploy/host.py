"""A machine services run on, whoever provided it: a `Host` is a host record
(HostConfig) and a connection that runs shell lines and receives files; the
file chores every runtime needs are built on those, so the runtimes
(process.py, docker.py) work on any host.
"""
from __future__ import annotations

import dataclasses
import getpass
import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from ..errors import MlclusterError
from ..remote.results import CommandTimedOut, Result, UnexpectedExit, quote
from ..resources import HostConfig

if TYPE_CHECKING:  # paramiko only where a remote host is used: a local `list` or `status` never loads it
    from ..remote.connection import Connection, HostKeyStore


@dataclass
class ServiceSpec:
    """One service to run on a host: the orchestrator or a worker container."""
    id: str                 # orchestrator, worker1-1, ...
    kind: str               # orchestrator | worker
    port: int
    env: dict[str, str]     # its environment (may hold the token: written to a 0600 file)
    model_dir: str = ""     # a model directory on the host (mounted read-only into a container)
    admin_port: int = 0     # the orchestrator's admin listener: on the host's 127.0.0.1 only
    # Docker on this machine only (empty elsewhere: DockerRuntime.here): container port -> "address:host
    # port" (an empty host port: any free one), mounts (volume or directory -> "/path:ro|rw"), the network.
    publish: dict[int, str] = field(default_factory=dict)
    mounts: dict[str, str] = field(default_factory=dict)
    network: str = ""


class LocalShell:
    """This machine behind a Connection's interface: shell lines through bash
    (as a login shell over SSH runs them; dash's `kill` refuses `--`), files
    copied in place."""
    label = "this machine"
    shell = shutil.which("bash") or "/bin/sh"

    def run(self, command: str, timeout: float = 60.0, warn: bool = False) -> Result:
        try:
            done = subprocess.run([self.shell, "-c", command], capture_output=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            partial = Result(self.label, command, _text(exc.stdout), _text(exc.stderr), -1)
            raise CommandTimedOut(partial, timeout) from None
        result = Result(self.label, command, _text(done.stdout), _text(done.stderr), done.returncode)
        if not result.ok and not warn:
            raise UnexpectedExit(result)
        return result

    def stream(self, command: str) -> Iterator[str]:
        with subprocess.Popen([self.shell, "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL) as proc:
            try:
                for line in proc.stdout:
                    yield line.decode(errors="replace").rstrip("\n")
            finally:
                proc.kill()

    def put(self, local: str | Path, remote: str, mode: Optional[int] = None) -> None:
        shutil.copyfile(local, remote)
        if mode is not None:
            os.chmod(remote, mode)

    def put_text(self, text: str, remote: str, mode: int = 0o600) -> None:
        Path(remote).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(remote + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(remote + ".tmp", remote)

    def close(self) -> None:
        pass  # nothing held


def _text(data: Optional[bytes]) -> str:
    return (data or b"").decode(errors="replace")


@dataclass
class Host:
    """A machine services run on: its record (a HostConfig), how to reach it
    (`conn`: a remote.Connection, or a LocalShell for this machine), and what we
    learned about it (absolute working directory, CPUs, facts the runtimes keep)."""
    config: HostConfig
    conn: "Connection | LocalShell"
    workdir: str = ""       # absolute, once `prepare_workdir` ran
    cpus: int = 1
    facts: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def sudo(self) -> str:
        """Prefix for commands that need root ("" when we log in as root; this machine's
        Docker engine is used as the caller can, never through sudo)."""
        return "" if self.config.user == "root" or self.config.local else "sudo -n "

    def run(self, command: str, timeout: float = 60.0, warn: bool = False) -> Result:
        return self.conn.run(command, timeout=timeout, warn=warn)

    def stream(self, command: str) -> Iterator[str]:
        return self.conn.stream(command)

    def put(self, local: str | Path, remote: str, mode: Optional[int] = None) -> None:
        self.conn.put(local, remote, mode=mode)

    def prepare_workdir(self) -> None:
        """Create this cluster's directory (0700: env files hold the token) and
        learn the host's CPU count."""
        result = self.run(f"mkdir -p {quote(self.config.workdir)} && chmod 700 {quote(self.config.workdir)} "
                          f"&& cd {quote(self.config.workdir)} && pwd && (nproc 2>/dev/null || echo 1)")
        lines = result.stdout.split()
        self.workdir, self.cpus = lines[0], max(1, int(lines[1]))

    def path(self, name: str) -> str:
        return f"{self.workdir}/{name}"

    def write_env(self, service: ServiceSpec, shell: bool) -> str:
        """Write the service's environment to a 0600 file on the host; returns
        its path. `shell`: quoted for `. file`; otherwise Docker's --env-file
        format (KEY=value, taken literally)."""
        for key, value in service.env.items():
            if "\n" in value or "=" in key:
                raise MlclusterError(f"environment variable {key} of {service.id} has a newline in its value")
        lines = [f"{k}={shlex.quote(v) if shell else v}" for k, v in sorted(service.env.items())]
        path = self.path(f"{service.id}.env")
        self.conn.put_text("\n".join(lines) + "\n", path, mode=0o600)
        return path

    def upload_model(self, local_dir: Path) -> str:
        """Copy a model directory to the host once (keyed by its content digest);
        returns the directory's path there. A re-run finds it and uploads nothing."""
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        target = self.path(f"model-{model_digest(local_dir, files)}")
        if self.run(f"test -f {quote(target)}/.complete", warn=True).ok:
            return target
        staging = f"{target}.partial"
        dirs = sorted({str(p.parent.relative_to(local_dir)) for p in files} - {"."})
        self.run(f"rm -rf {quote(staging)} && mkdir -p {quote(staging)} "
                 + "".join(f" && mkdir -p {quote(staging + '/' + d)}" for d in dirs))
        for path in files:
            mode = stat.S_IMODE(path.stat().st_mode) | 0o444
            self.put(path, f"{staging}/{path.relative_to(local_dir)}", mode=mode)
        self.run(f"chmod -R a+rX {quote(staging)} && touch {quote(staging)}/.complete && rm -rf {quote(target)} "
                 f"&& mv {quote(staging)} {quote(target)}")
        return target

    def close(self) -> None:
        self.conn.close()


def local_config(name: str, workdir: Path, runtime: str = "process") -> HostConfig:
    """This machine as a host record called `name`: a local cluster's orchestrator host, or one of
    the machines its workers stand for (worker1..N, all here), its services on 127.0.0.1."""
    return HostConfig(name=name, address="127.0.0.1", private_address="127.0.0.1", user=getpass.getuser(), port=0,
                      key="", runtime=runtime, python=sys.executable, workdir=str(workdir), bind="127.0.0.1",
                      local=True)


class LocalHost(Host):
    """This machine as a Host: services listen on 127.0.0.1, files go to `workdir`."""

    def __init__(self, workdir: Path, config: Optional[HostConfig] = None):
        config = config or dataclasses.replace(local_config("this machine", workdir), runtime="", python="")
        super().__init__(config, LocalShell(), workdir=str(workdir.resolve()), cpus=os.cpu_count() or 1)


class RemoteHost(Host):
    """A machine reached over SSH: its conn is a remote.Connection."""

    @classmethod
    def connect(cls, config: HostConfig, store: "HostKeyStore", connect_timeout: float) -> "RemoteHost":
        from ..remote.connection import Connection
        conn = Connection(config.address, config.user, config.port, key_path=config.key or None,
                          connect_timeout=connect_timeout, known_hosts=store, label=config.name)
        return cls(config, conn)


def readable_by_all(root: Path) -> bool:
    """Whether a user with no relation to the files (a container's) can read every one of
    them; a link among them may point out of the folder mounted, so it counts as unreadable."""
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode  # follows links, as the container would
        need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
        if mode & need != need or path.is_symlink():
            return False
    return True


def model_digest(local_dir: Path, files: list[Path]) -> str:
    """A short digest of the names (in `local_dir`) and contents of its `files`."""
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(local_dir)).encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]
