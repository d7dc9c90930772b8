"""One machine reached over SSH, as the ssh provider uses it: its config, its
connection, and what we learned about it (absolute working directory, CPUs),
plus the few file chores every runtime needs (env files, model upload).
"""
from __future__ import annotations

import hashlib
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import MlclusterError
from ..remote.connection import Connection, HostKeyStore, quote
from ..resources import HostConfig


@dataclass
class ServiceSpec:
    """One service to run on a host: the orchestrator or a worker container."""
    id: str                 # orchestrator, worker1-1, ...
    kind: str               # orchestrator | worker
    port: int
    env: dict[str, str]     # its environment (may hold the token: written to a 0600 file)
    model_dir: str = ""     # a model directory on the host (mounted read-only into a container)
    admin_port: int = 0     # the orchestrator's admin listener: on the host's 127.0.0.1 only


@dataclass
class RemoteHost:
    config: HostConfig
    conn: Connection
    workdir: str = ""       # absolute, once `prepare_workdir` ran
    cpus: int = 1
    facts: dict = field(default_factory=dict)

    @classmethod
    def connect(cls, config: HostConfig, store: HostKeyStore, connect_timeout: float) -> "RemoteHost":
        conn = Connection(config.address, config.user, config.port, key_path=config.key or None,
                          connect_timeout=connect_timeout, known_hosts=store, label=config.name)
        return cls(config, conn)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def sudo(self) -> str:
        """Prefix for commands that need root ("" when we log in as root)."""
        return "" if self.config.user == "root" else "sudo -n "

    def run(self, command: str, timeout: float = 60.0, warn: bool = False):
        return self.conn.run(command, timeout=timeout, warn=warn)

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
        digest = model_digest(local_dir, files)
        target = self.path(f"model-{digest}")
        if self.run(f"test -f {quote(target)}/.complete", warn=True).ok:
            return target
        staging = f"{target}.partial"
        dirs = sorted({str(p.parent.relative_to(local_dir)) for p in files} - {"."})
        self.run(f"rm -rf {quote(staging)} && mkdir -p {quote(staging)} "
                 + "".join(f" && mkdir -p {quote(staging + '/' + d)}" for d in dirs))
        for path in files:
            mode = stat.S_IMODE(path.stat().st_mode) | 0o444
            self.conn.put(path, f"{staging}/{path.relative_to(local_dir)}", mode=mode)
        self.run(f"chmod 755 {quote(staging)} && touch {quote(staging)}/.complete && rm -rf {quote(target)} "
                 f"&& mv {quote(staging)} {quote(target)}")
        return target

    def close(self) -> None:
        self.conn.close()


def model_digest(local_dir: Path, files: Optional[list[Path]] = None) -> str:
    """A short digest of a directory's file names and contents."""
    h = hashlib.sha256()
    for path in files if files is not None else sorted(p for p in local_dir.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(local_dir)).encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]
