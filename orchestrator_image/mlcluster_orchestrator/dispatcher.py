"""Forwarding a request to a worker container, with retries elsewhere.

The scheduler decides who gets the request; this module does the HTTP (one
aiohttp client session, kept-alive connections to every container) and sorts
what comes back:

- 2xx: served.
- 4xx: the request itself was bad. Passed back to the caller with the same
  status (as JSON); no retry, and the container stays in rotation. (401/403
  are the exception: the worker refused *our* credential, which is no fault of
  the caller: 502, logged, no retry.)
- 5xx: the worker failed on this request. It is tried on another container
  (ahead of the queue, within `max_attempts`), because the fault may be the
  container's; the container leaves rotation only after `MAX_5XX_IN_A_ROW`
  consecutive 5xx answers (as HAProxy's `observe layer7` + `error-limit`), so
  one bad request cannot take containers out.
- refused, timed out, broken connection, an answer that is not JSON: the
  container is marked down at once (the health checker brings it back) and the
  request goes to another one.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import aiohttp

from .scheduler import Container, NoContainers, QueueFull, QueueTimeout, Reservation, Scheduler

log = logging.getLogger("mlcluster.orchestrator")
MAX_5XX_IN_A_ROW = 3
# Workers close idle kept-alive connections after 30 s (gunicorn's keepalive);
# ours retire sooner, so a request never races that close.
CLIENT_KEEPALIVE_S = 15.0


@dataclass
class Outcome:
    """What the caller gets: an HTTP status, a JSON body and extra headers."""
    status: int
    body: dict
    headers: dict = field(default_factory=dict)


class ContainerFailed(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind  # refused | timeout | disconnected | http_5xx | bad_answer


class Dispatcher:
    """Use as `async with Dispatcher(...)` (or `await start()` / `await close()`):
    the client session belongs to the running event loop."""

    def __init__(self, scheduler: Scheduler, *, queue_timeout_s: float, forward_timeout_s: float,
                 max_attempts: int = 3, worker_token: str = "", connect_timeout_s: float = 2.0,
                 on_event: Callable[[str, dict], None] = lambda kind, data: None,
                 clock: Callable[[], float] = time.monotonic):
        self.scheduler = scheduler
        self.queue_timeout_s = queue_timeout_s
        self.max_attempts = max_attempts
        self.on_event = on_event  # metrics hook: ("served"|"failed"|"rejected", data)
        self.clock = clock
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=forward_timeout_s)
        self.headers = {"Content-Type": "application/json"}
        if worker_token:  # never logged: only ever sent to workers
            self.headers["Authorization"] = f"Bearer {worker_token}"
        self.session: Optional[aiohttp.ClientSession] = None
        self._5xx_in_a_row: dict[str, int] = {}

    async def start(self) -> "Dispatcher":
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=CLIENT_KEEPALIVE_S, use_dns_cache=True,
                                         ttl_dns_cache=60)
        # No cookies, no proxies from the environment: workers are on private addresses.
        self.session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                             timeout=self.timeout, trust_env=False, auto_decompress=False)
        return self

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def __aenter__(self) -> "Dispatcher":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def handle(self, body: bytes) -> Outcome:
        """Serve one request: wait for a container (first come, first served),
        forward the body, and on a container's failure try another one, ahead
        of the queue. Every outcome is an HTTP answer, never an exception."""
        arrived = self.clock()
        deadline = arrived + self.queue_timeout_s
        failures: list[ContainerFailed] = []
        for attempt in range(1, self.max_attempts + 1):
            try:
                reservation = await self.scheduler.acquire_async(
                    timeout=max(0.0, deadline - self.clock()), front=attempt > 1, queued_at=arrived)
            except (QueueFull, QueueTimeout, NoContainers) as refusal:
                return self._refused(refusal, failures)
            try:
                status, answer = await self._attempt(reservation, body)
            except ContainerFailed as failure:
                failures.append(failure)
                continue
            if status >= 400:
                return self._callers_error(reservation.container, status, answer)
            return self._served(reservation, answer, arrived, attempt)
        return self._gave_up(failures)

    async def _attempt(self, reservation: Reservation, body: bytes) -> tuple[int, dict]:
        """Forward once. The reservation is released whatever happens (also when
        the caller's task is cancelled); a container that failed at transport
        level is marked down first, so it is not handed out again."""
        container = reservation.container
        start = self.clock()
        ok, latency_ms = False, None
        try:
            status, answer = await self._forward(container, body)
            ok = status < 400
            if ok:
                latency_ms = (self.clock() - start) * 1000
                self._5xx_in_a_row.pop(container.id, None)
            return status, answer
        except ContainerFailed as failure:
            self.on_event("failed", {"container": container.id, "kind": failure.kind})
            if failure.kind != "http_5xx":
                log.warning("container %s (%s) failed: %s; marking it down and retrying elsewhere",
                            container.id, container.url, failure)
                self.scheduler.set_health(container.id, False)
            else:
                in_a_row = self._5xx_in_a_row.get(container.id, 0) + 1
                self._5xx_in_a_row[container.id] = in_a_row
                if in_a_row >= MAX_5XX_IN_A_ROW:
                    log.warning("container %s (%s) answered 5xx %d times in a row; marking it down",
                                container.id, container.url, in_a_row)
                    self.scheduler.set_health(container.id, False)
                    self._5xx_in_a_row.pop(container.id, None)
                else:
                    log.warning("%s; trying another container", failure)
            raise
        finally:
            self.scheduler.release(reservation, ok=ok, latency_ms=latency_ms)

    async def _forward(self, container: Container, body: bytes) -> tuple[int, dict]:
        try:
            async with self.session.post(f"{container.url}/run_model", data=body or b"{}",
                                         headers=self.headers) as response:
                status, data = response.status, await response.read()
        except aiohttp.ClientConnectorError as exc:
            kind = "timeout" if isinstance(exc.os_error, (TimeoutError, asyncio.TimeoutError)) else "refused"
            raise ContainerFailed(kind, f"{container.id} ({container.url}): connection {kind}") from None
        except (asyncio.TimeoutError, TimeoutError):  # ServerTimeoutError is one too
            raise ContainerFailed("timeout", f"{container.id} ({container.url}): no answer in time") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ContainerFailed("disconnected", f"{container.id} ({container.url}): connection broke: "
                                                  f"{type(exc).__name__}") from None
        if status >= 500:
            raise ContainerFailed("http_5xx", f"container {container.id} answered {status}")
        try:
            return status, json.loads(data)
        except (ValueError, RecursionError):
            if status >= 400:  # an error answer that is not JSON: still the caller's error
                return status, {"error": data[:200].decode("utf-8", "replace") or f"the worker answered {status}"}
            raise ContainerFailed("bad_answer", f"{container.id} answered something that is not JSON") from None

    def _callers_error(self, container: Container, status: int, answer: dict) -> Outcome:
        if status in (401, 403):
            log.error("container %s (%s) refused the orchestrator's worker credential (%d): "
                      "check ORCH_WORKER_TOKEN", container.id, container.url, status)
            return Outcome(502, {"error": f"worker {container.id} refused the orchestrator's credential",
                                 "status": 502})
        if not isinstance(answer, dict):
            answer = {"error": str(answer)[:200]}
        answer.setdefault("error", f"the worker refused the request ({status})")
        answer["status"] = status
        return Outcome(status, answer)

    def _served(self, reservation: Reservation, answer: dict, arrived: float, attempts: int) -> Outcome:
        container = reservation.container
        queue_s, total_s = reservation.queue_wait_s, self.clock() - arrived
        self.on_event("served", {"container": container.id, "queue_s": queue_s, "total_s": total_s})
        return Outcome(200, {
            "result": answer,
            "container": {"id": container.id, "host": container.host, "port": container.port},
            "queue_ms": round(queue_s * 1000, 3),
            "total_ms": round(total_s * 1000, 3),
            "attempts": attempts,
        })

    def _refused(self, refusal: Exception, failures: list[ContainerFailed]) -> Outcome:
        if isinstance(refusal, QueueFull):
            self.on_event("rejected", {"reason": "queue_full"})
            return Outcome(503, {"error": "all containers are busy and the queue is full; retry later",
                                 "status": 503}, {"Retry-After": "1"})
        if isinstance(refusal, NoContainers):
            self.on_event("rejected", {"reason": "no_containers"})
            return Outcome(503, {"error": "no worker containers are registered", "status": 503}, {"Retry-After": "5"})
        self.on_event("rejected", {"reason": "queue_timeout"})
        if failures:
            return self._gave_up(failures)
        return Outcome(504, {"error": f"no container became free within {self.queue_timeout_s:g} s", "status": 504})

    def _gave_up(self, failures: list[ContainerFailed]) -> Outcome:
        return Outcome(502, {"error": f"{len(failures)} container(s) failed this request; last: {failures[-1]}",
                             "status": 502})
