"""The load agent started on a cluster host over its pinned SSH connection.

Nothing for the user to install: the orchestrator's host already has the
orchestrator's Python (the host's `python`, or the venv `up` made), which
holds everything the load generator imports (httptools, orjson, uvloop,
rich). This package's bench modules are uploaded beside it, once per
content digest, and run from there, so the agent is always this machine's
version. The compiled engine (`_engine*.so`) is uploaded too when the host's
interpreter takes the same extension suffix (same Python version, machine
and ABI); otherwise the agent runs closed loops on the Python loop, and the
report says which engine each host used.
"""
from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path
from typing import Optional

import paramiko

import mlcluster

from ..errors import MlclusterError
from ..remote.connection import Connection, HostKeyStore, quote
from ..resources import HostConfig
from ..state import ClusterState

PACKAGE = Path(mlcluster.__file__).parent
# The modules the agent imports: the bench's load generator and what it needs of mlcluster.
AGENT_FILES = ["__init__.py", "errors.py"] + [f"bench/{n}.py" for n in (
    "__init__", "agent", "engine", "load", "runner", "stats", "sweep", "wire")]
CONNECT_S = 10.0


def pinned_keys(state: ClusterState) -> HostKeyStore:
    """The host keys `up` pinned (a copy: nothing the bench sees is saved)."""
    return HostKeyStore(dict(state.resources.host_keys))


def agent_digest() -> str:
    digest = hashlib.sha256()
    for name in AGENT_FILES:
        digest.update(name.encode() + b"\0" + (PACKAGE / name).read_bytes())
    return digest.hexdigest()[:16]


def _engine_file() -> Optional[Path]:
    found = sorted(PACKAGE.glob("bench/_engine*" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")))
    return found[0] if found else None


class SSHAgent:
    """An agent started over SSH on one host: its channel's stdin and stdout."""

    def __init__(self, conn: Connection, command: str):
        self.conn = conn
        try:
            self.channel = conn.open().get_transport().open_session(timeout=CONNECT_S)
            self.channel.exec_command(command)
        except (paramiko.SSHException, OSError) as exc:
            conn.close()
            raise MlclusterError(f"could not start the load agent on {conn.label}: {exc}") from None
        self.stdin = self.channel.makefile_stdin("wb")
        self.stdout = self.channel.makefile("rb")

    def error_text(self) -> str:
        stderr = bytearray()
        while self.channel.recv_stderr_ready():
            stderr += self.channel.recv_stderr(65536)
        return stderr.decode(errors="replace")

    def close(self) -> None:
        self.channel.close()
        self.conn.close()


class SSHAgentStarter:
    """Starts an agent on a cluster host (uploading it there first if needed),
    over a connection checked against the host key `up` pinned.

    Where the host runs its orchestrator in Docker (`image`), the agent runs in
    a container of that image (Python, httptools, orjson, uvloop), on the
    host's network, the uploaded modules mounted read-only, as a non-root user
    with no capabilities; `--rm`, and `-i` so that the end of the SSH session
    ends it. Otherwise with the host's Python (its `python`, or the venv `up`
    made)."""

    def __init__(self, config: HostConfig, store: HostKeyStore, image: str = "", cluster: str = ""):
        self.config, self.store, self.image, self.cluster = config, store, image, cluster

    def __call__(self) -> SSHAgent:
        config = self.config
        if self.store.get(config.address, config.port) is None:
            raise MlclusterError(f"no host key of {config.name} is pinned in the cluster's state",
                                 "`mlcluster up` records it; load from there after it")
        conn = Connection(config.address, config.user, config.port, key_path=config.key or None,
                          connect_timeout=CONNECT_S, known_hosts=self.store, label=config.name)
        if self.image:
            docker = "docker" if config.user == "root" else "sudo -n docker"
            python = f"{docker} run --rm --entrypoint python {quote(self.image)}"
            directory = self.upload(conn, python)
            command = (f"exec {docker} run --rm -i --network host --cap-drop ALL --security-opt no-new-privileges "
                       f"--label mlcluster.cluster={quote(self.cluster)} --label mlcluster.role=bench-agent "
                       f"-v {quote(directory)}:/agent:ro -e PYTHONPATH=/agent -w /agent --entrypoint python "
                       f"{quote(self.image)} -m mlcluster.bench.agent")
        else:
            python = quote(config.python or f"{config.workdir}/venv/bin/python")
            directory = self.upload(conn, python)
            command = f"cd {quote(directory)} && PYTHONPATH=. exec {python} -m mlcluster.bench.agent"
        return SSHAgent(conn, command)

    def upload(self, conn: Connection, python: str) -> str:
        """This package's agent modules on the host (once per digest); returns
        their absolute directory. `python` is the command line of the
        interpreter that will run them, asked for its extension suffix."""
        directory = f"{self.config.workdir}/bench-agent-{agent_digest()}"
        probe = conn.run(f"mkdir -p {quote(directory)} && cd {quote(directory)} && pwd && "
                         f"(test -f .complete && echo present || true) && {python} -c "
                         + quote("import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))"), warn=True)
        lines = probe.stdout.split()
        if not probe.ok:
            raise MlclusterError(f"{self.config.name}: no Python to run the load agent with ({probe.tail(2)})",
                                 "set `python` for this host in the [ssh] config, or load from the orchestrator")
        directory = lines[0]
        if "present" in lines:
            return directory
        conn.run(f"mkdir -p {quote(directory)}/mlcluster/bench")
        for name in AGENT_FILES:
            conn.put(PACKAGE / name, f"{directory}/mlcluster/{name}")
        engine = _engine_file()
        if engine is not None and lines[-1] == sysconfig.get_config_var("EXT_SUFFIX"):
            conn.put(engine, f"{directory}/mlcluster/bench/{engine.name}")
        # readable by the image's non-root user (the workdir above it stays 0700)
        conn.run(f"chmod -R a+rX {quote(directory)} && touch {quote(directory)}/.complete")
        return directory
