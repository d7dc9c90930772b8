"""Background health checks and the saved registry."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import urllib3

from .scheduler import Scheduler

log = logging.getLogger("mlcluster.orchestrator")
# Snapshot and write under one lock: two registrations saving at once must not
# let the older snapshot land last.
_save_lock = threading.Lock()


class HealthChecker:
    """Probes every container's /ready every `interval_s`; a failing one is taken
    out of rotation, a recovered one is brought back."""

    def __init__(self, scheduler: Scheduler, interval_s: float = 1.0, timeout_s: float = 2.0):
        self.scheduler = scheduler
        self.interval_s = interval_s
        self.timeout = urllib3.Timeout(connect=min(1.0, timeout_s), read=timeout_s)
        self.http = urllib3.PoolManager(num_pools=256, maxsize=2, retries=False)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="health")
        self._thread = threading.Thread(target=self._loop, name="health-checker", daemon=True)

    def start(self) -> "HealthChecker":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.check_all()
            self._stop.wait(self.interval_s)

    def probe_soon(self, containers) -> None:
        """Check these containers now, in the background (new registrations)."""
        for container in containers:
            self._pool.submit(self._check, container)

    def check_all(self) -> None:
        containers = [c for c in self.scheduler.containers() if not c.draining]
        list(self._pool.map(self._check, containers))

    def _check(self, container) -> None:
        try:
            response = self.http.request("GET", f"{container.url}/ready", timeout=self.timeout)
            healthy, why = response.status == 200, f"/ready answered {response.status}"
        except urllib3.exceptions.HTTPError as exc:
            healthy, why = False, f"unreachable ({type(exc).__name__})"
        if healthy != container.healthy:
            log.warning("container %s (%s) is %s%s", container.id, container.url,
                        "up" if healthy else "down", "" if healthy else f": {why}")
        self.scheduler.set_health(container.id, healthy)


def save_registry(path: str | os.PathLike, scheduler: Scheduler) -> None:
    """Write the registered containers to `path` atomically (temp file + rename)."""
    with _save_lock:
        _write_registry(Path(path), [{"id": c.id, "host": c.host, "port": c.port, "capacity": c.capacity}
                                     for c in scheduler.containers() if not c.draining])


def _write_registry(path: Path, entries: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".status-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"containers": entries}, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_registry(path: str | os.PathLike, scheduler: Scheduler) -> int:
    """Register the containers saved in `path`; returns how many. A missing
    file means a fresh start; an unreadable one is logged and ignored."""
    path = Path(path)
    if not path.exists():
        return 0
    try:
        entries = json.loads(path.read_text())["containers"]
        for e in entries:
            scheduler.add(e["host"], int(e["port"]), int(e.get("capacity", 1)), id=e.get("id"), healthy=False)
    except (ValueError, KeyError, TypeError) as exc:
        log.error("status file %s is unreadable (%s); starting with no containers", path, exc)
        return 0
    return len(entries)


def keep_registry_in(path: str | os.PathLike, scheduler: Scheduler) -> None:
    """Restore the registry from `path`, then save it there after every change.
    A failed save is logged: the registry in memory stays the truth."""
    restored = load_registry(path, scheduler)
    if restored:
        log.info("restored %d container(s) from %s", restored, path)

    def persist() -> None:
        try:
            save_registry(path, scheduler)
        except OSError as exc:
            log.error("could not save the registry to %s: %s", path, exc)
    scheduler.on_change = persist
