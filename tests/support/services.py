"""Shared helpers for tests: real service processes on loopback."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

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
    return Service(services.orchestrator_command(), env, f"http://127.0.0.1:{port}",
                   tmp_path / f"orchestrator-{port}.log")


@contextlib.contextmanager
def overhead_cluster(tmp_path: Path, containers: int, service_ms: float, queue_limit: int,
                     token: str = "bench-test-token") -> Iterator[str]:
    """An orchestrator with `containers` overhead-test workers of `service_ms`
    each (capacity 1), registered and all free: yields its URL; stops them all."""
    from support.waiting import wait_for
    services_started = []
    try:
        orchestrator = start_orchestrator(tmp_path, token=token, queue_limit=queue_limit)
        services_started.append(orchestrator)
        workers = [start_worker(tmp_path, "overhead-test", service_ms=service_ms) for _ in range(containers)]
        services_started += workers
        orchestrator.wait()
        for worker in workers:
            worker.wait("/ready")
        body = {"containers": [{"host": "127.0.0.1", "port": int(w.url.rsplit(":", 1)[1])} for w in workers]}
        response = requests.post(orchestrator.url + "/workers", json=body, timeout=10,
                                 headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 201, response.text

        def statuses() -> list[str]:
            return [c["status"] for c in requests.get(orchestrator.url + "/status", timeout=5).json()["containers"]]
        wait_for(lambda: statuses() == ["free"] * containers, "every container to be free", timeout=30)
        yield orchestrator.url
    finally:
        for service in services_started:
            service.stop()
