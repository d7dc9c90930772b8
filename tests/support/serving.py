"""A small cluster of real processes on loopback for the serving tests: worker
containers and one orchestrator, each a gunicorn process group of its own."""
from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from mlcluster import services

from .services import Service, free_port, start_worker
from .waiting import wait_for

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def error_of(r: requests.Response, status: int) -> str:
    """Assert a JSON error answer with this status (a worker's or the
    orchestrator's: {"error": sentence, "status": status}); return its sentence."""
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json"), r.headers["Content-Type"]
    body = r.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    return body["error"]


def stop_service(service: Service) -> None:
    """End the service's process group at once (SIGKILL: nothing of a test
    service needs a graceful end, and gunicorn's can linger for seconds)."""
    service.kill(signal.SIGKILL)
    service.stop()  # closes its log


class Cluster:
    """Workers and an orchestrator started by one test; `stop()` ends exactly them."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.services: list[Service] = []
        self.workers: dict[str, Service] = {}  # container id -> worker
        self.orchestrator: Service | None = None
        self.http = requests.Session()

    # -- processes --------------------------------------------------------
    def start_workers(self, ids: list[str], model: str = "overhead-test", port: int | None = None,
                      wait_path: str = "/ready", **kw) -> list[Service]:
        """Start one worker per id (WORKER_ID = the id) and wait until each
        answers `wait_path` (ready, by default)."""
        started = []
        for cid in ids:
            worker = start_worker(self.tmp_path, model, port=port, worker_id=cid, **kw)
            self.services.append(worker)
            self.workers[cid] = worker
            started.append(worker)
        for worker in started:
            worker.wait(wait_path, timeout=120)
        return started

    def start_orchestrator(self, extra_env: dict[str, str] | None = None, **kw) -> Service:
        port = free_port()
        kw.setdefault("health_interval_s", 0.25)
        env = services.orchestrator_env(port=port, token=TOKEN, **kw)
        env.update(extra_env or {})
        orch = Service(services.orchestrator_command(), env, f"http://127.0.0.1:{port}",
                       self.tmp_path / f"orchestrator-{port}.log")
        self.services.append(orch)
        self.orchestrator = orch.wait()
        return orch

    def stop_orchestrator(self) -> None:
        stop_service(self.orchestrator)
        self.services.remove(self.orchestrator)

    def stop(self) -> None:
        for service in reversed(self.services):
            stop_service(service)
        self.services.clear()
        self.http.close()

    # -- the orchestrator's API -----------------------------------------------
    @property
    def url(self) -> str:
        return self.orchestrator.url

    def register(self, ids: list[str] | None = None, wait: bool = True) -> list[dict]:
        """Register workers (all by default) under their ids; wait until they are free."""
        ids = list(self.workers) if ids is None else ids
        containers = [{"id": cid, "host": "127.0.0.1", "port": port_of(self.workers[cid])} for cid in ids]
        r = self.http.post(self.url + "/workers", json={"containers": containers}, headers=AUTH, timeout=10)
        assert r.status_code == 201, r.text
        if wait:
            wait_for(lambda: all(self.container(cid)["status"] == "free" for cid in ids),
                     f"containers {ids} to be free")
        return r.json()["registered"]

    def status(self) -> dict:
        r = self.http.get(self.url + "/status", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def container(self, cid: str) -> dict | None:
        return next((c for c in self.status()["containers"] if c["id"] == cid), None)

    def arrived(self) -> int:
        """Requests that reached the queue or a container (and were not refused)."""
        s = self.status()
        return s["served"] + s["failed"] + s["in_flight"] + s["queue"]["depth"]

    def new_request(self, body=None, session: requests.Session | None = None, **kw) -> requests.Response:
        kw.setdefault("timeout", 60)
        if body is not None:
            kw["json"] = body
        return (session or requests).post(self.url + "/new_request", **kw)

    def worker_stats(self, cid: str) -> dict:
        return requests.get(self.workers[cid].url + "/stats", timeout=10).json()


def port_of(service: Service) -> int:
    return int(service.url.rsplit(":", 1)[1])


class Background:
    """Requests sent from threads while the test does something else."""

    def __init__(self, threads: int):
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.futures = []
        self._local = threading.local()

    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def submit(self, fn, *args):
        future = self.pool.submit(lambda: fn(*args, session=self.session()))
        self.futures.append(future)
        return future

    def results(self, timeout: float = 120) -> list:
        return [f.result(timeout=timeout) for f in self.futures]

    def close(self) -> None:
        """Drop what has not started; requests still running end when the
        test's services are stopped (so a failing test never hangs here)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
