"""Shared helpers for tests: real service processes on loopback."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

from mlcluster import services


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A service started as its own process group; `stop()` ends exactly it."""

    def __init__(self, cmd: list[str], env: dict[str, str], url: str, log_path: Path):
        self.url, self.log_path = url, log_path
        self._log = open(log_path, "ab")
        full_env = dict(os.environ, HF_HUB_OFFLINE="1", **env)
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def wait(self, path: str = "/health_check", timeout: float = 60.0) -> "Service":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.url} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + path, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.url}{path} not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole process group (gunicorn's master and its worker)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=15)

    def stop(self) -> None:
        self.kill(signal.SIGTERM) if self.proc.poll() is None else None
        self._log.close()


def start_worker(tmp_path: Path, model: str, port: int | None = None, token: str = "", **kw) -> Service:
    """A worker on loopback; `token` "" leaves /run_model open (tests that call it directly)."""
    port = port or free_port()
    env = services.worker_env(model=model, port=port, token=token, **kw)
    return Service(services.worker_command(), env, f"http://127.0.0.1:{port}", tmp_path / f"worker-{port}.log")


def start_orchestrator(tmp_path: Path, token: str = "test-token", port: int | None = None, **kw) -> Service:
    port = port or free_port()
    env = services.orchestrator_env(port=port, token=token, **kw)
    return Service(services.orchestrator_command(), env, f"http://127.0.0.1:{port}", tmp_path / f"orchestrator-{port}.log")
