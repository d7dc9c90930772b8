"""Background health checks and the saved registry."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Awaitable, Callable, Optional

from .containers import Container
from .scheduler import Scheduler

log = logging.getLogger("mlcluster.orchestrator")
# Snapshot and write under one lock: two registrations saving at once must not
# let the older snapshot land last.
_save_lock = threading.Lock()


class HealthChecker:
    """Probes every container's /ready every `interval_s` on the event loop; a
    failing one is taken out of rotation, a recovered one is brought back.
    `probe(container, timeout_s)` -> (healthy, why) does the HTTP (the
    dispatcher's `probe_ready`, on its kept-alive pools)."""

    def __init__(self, scheduler: Scheduler,
                 probe: Callable[[Container, float], Awaitable[tuple[bool, str]]],
                 interval_s: float = 1.0, timeout_s: float = 2.0):
        self.scheduler = scheduler
        self.probe = probe
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._task: Optional[asyncio.Task] = None
        self._probes: set[asyncio.Task] = set()

    def start(self) -> "HealthChecker":
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    async def stop(self) -> None:
        for task in [self._task, *self._probes]:
            if task is not None:
                task.cancel()

    async def _loop(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self.interval_s)

    def probe_soon(self, containers) -> None:
        """Check these containers now, in the background (new registrations)."""
        for container in containers:
            task = asyncio.get_running_loop().create_task(self._check(container))
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)

    async def check_all(self) -> None:
        containers = [c for c in self.scheduler.containers() if not c.draining]
        await asyncio.gather(*(self._check(c) for c in containers))

    async def _check(self, container) -> None:
        healthy, why = await self.probe(container, self.timeout_s)
        if healthy != container.healthy:
            log.warning("container %s (%s) is %s%s", container.id, container.url,
                        "up" if healthy else "down", "" if healthy else f": {why}")
        self.scheduler.set_health(container.id, healthy)


def save_registry(path: str | os.PathLike, scheduler: Scheduler) -> None:
    """Write the registered containers to `path` atomically (temp file + rename)."""
    with _save_lock:
        _write_registry(Path(path), [{"id": c.id, "host": c.host, "port": c.port, "capacity": c.capacity,
                                      "version": c.version} for c in scheduler.containers() if not c.draining])


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
            scheduler.add(e["host"], int(e["port"]), int(e.get("capacity", 1)), id=e.get("id"), healthy=False,
                          version=str(e.get("version", "")))
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
