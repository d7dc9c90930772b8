"""This machine as a host: processes of a local cluster started in their own session, found again by
the marker in their environment, MLCLUSTER_MARKER=<name>@<state dir> (never by name patterns: `down`
finds them by it when the state is lost), stopped by group.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

from .. import services
from ..state import home

LOOPBACK = "127.0.0.1"


def marker(name: str) -> str:
    return f"{name}@{home().resolve()}"


def spawn(cmd: list[str], kind: str, env: dict[str, str], log_path: Path) -> int:
    """Start a `kind` service in its own session with only the environment it
    needs (services.process_env: never the caller's credentials); its pid."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=services.process_env(env, kind), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    return proc.pid


def environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def is_alive(pid: int, mark: str) -> bool:
    return f"{services.MARKER_VAR}={mark}".encode() in environ(pid).split(b"\0")


def find_marked(mark: str) -> list[int]:
    """Pids of every process (not a zombie) whose environment carries the marker."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid in pids if pid != os.getpid() and is_alive(pid, mark) and not is_zombie(pid)]


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def terminate(pids: set[int], grace_s: float = 10.0) -> None:
    """SIGTERM (the whole group where the pid leads one), then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                if os.getpgid(pid) == pid:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            reap()
            pids = {pid for pid in pids if Path(f"/proc/{pid}").exists() and not is_zombie(pid)}
            if not pids:
                return
            time.sleep(0.1)


def reap() -> None:
    """Collect exited children of this process (tests start clusters in-process)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def port_free(port: int) -> bool:
    """Nothing listens on the loopback port. SO_REUSEADDR, as the servers set it:
    the TIME-WAIT sockets a killed service leaves do not make its port "in use",
    so a restarted service keeps its address."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
            return True
        except OSError:
            return False


def free_port(avoid: int = 0) -> int:
    """A free loopback port, not `avoid` (one picked a moment ago, not bound yet)."""
    while True:
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port != avoid:
            return port


def read_log(path: Path, follow: bool, tail: int) -> Iterator[str]:
    if not path.exists():
        return
    with open(path, errors="replace") as f:
        lines = f.readlines()
        yield from lines[-tail:] if tail > 0 else lines
        while follow:
            line = f.readline()
            if line:
                yield line
            else:
                time.sleep(0.3)


def cmdline(pid: int) -> list[str]:
    """A process's argv ([] when it is gone)."""
    try:
        return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    except OSError:
        return []
