"""Forwarding a request to a worker container, with retries elsewhere.

The scheduler decides who gets the request; this module does the HTTP (a
keep-alive pool per container, upstream.py) and sorts what comes back:

- 2xx: served.
- 4xx: the request itself was bad. Passed back to the caller with the same
  status (as JSON); no retry, and the container stays in rotation. Two
  exceptions, neither the caller's fault: a 401 means the worker refused our
  signature (signing.py: clock skew or another credential), so the container
  is marked down, kept out for `SIGNATURE_HOLD_S` (its open /ready would
  bring it back at once) and the request goes to another one; a 403 is a 502,
  logged, no retry.
- 5xx: the worker failed on this request. It is tried on another container
  (ahead of the queue, within `max_attempts`; never the same one while another
  healthy container exists), because the fault may be the container's; the container leaves rotation only after `MAX_5XX_IN_A_ROW`
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
from typing import Callable, Optional

from .scheduler import Container, NoContainers, QueueFull, QueueTimeout, Reservation, Scheduler
from .signing import Signer
from .upstream import Pool, UpstreamError, request_head, with_body

log = logging.getLogger("mlcluster.orchestrator")
MAX_5XX_IN_A_ROW = 3
SIGNATURE_HOLD_S = 30.0  # a container that refused our signature stays out this long


class Outcome:
    """What the caller gets: an HTTP status, a JSON body and extra headers.
    A served answer is built as bytes (`payload`: the worker's JSON spliced in
    unparsed-and-re-encoded); `body` decodes it on demand."""
    __slots__ = ("status", "_body", "headers", "_payload")

    def __init__(self, status: int, body: Optional[dict] = None, headers: Optional[dict] = None,
                 payload: Optional[bytes] = None):
        self.status, self._body, self.headers, self._payload = status, body, headers or {}, payload

    @property
    def body(self) -> dict:
        if self._body is None:
            self._body = json.loads(self._payload)
        return self._body

    @property
    def payload(self) -> bytes:
        if self._payload is None:
            self._payload = json.dumps(self._body).encode()
        return self._payload


class ContainerFailed(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind  # refused | timeout | disconnected | http_5xx | bad_answer | unauthorized


class _Forward:
    """One attempt at forwarding, with no event-loop hop on the way:
    `grant` runs the moment the scheduler grants a container (inside the
    callback of whichever answer freed it) and writes the request to an idle
    connection at once; `settle` runs inside the connection's callback the
    moment the answer is whole, sorts it and releases the container, which
    hands it to the next waiter's `grant`."""
    __slots__ = ("dispatcher", "body", "data", "pool", "reservation", "start", "settled", "sent")

    def __init__(self, dispatcher: "Dispatcher", body: bytes):
        self.dispatcher, self.body = dispatcher, body
        self.settled, self.sent, self.reservation = False, None, None

    def grant(self, reservation: Reservation) -> None:
        d = self.dispatcher
        self.reservation = reservation
        self.pool, head, _ = d._pool(reservation.container)
        signer = d.signer
        self.data = with_body(head, self.body, signer.line(self.body) if signer is not None else b"")
        self.start = d.clock()
        self.sent = self.pool.send_now(self.data, d.forward_timeout_s, self.settle)

    def settle(self, status: int, data: bytes):
        self.settled = True
        return self.dispatcher._settle(self.reservation, self.start, status, data)


class Dispatcher:
    """Use as `async with Dispatcher(...)` (or `await start()` / `await close()`):
    the connection pools belong to the running event loop."""

    def __init__(self, scheduler: Scheduler, *, queue_timeout_s: float, forward_timeout_s: float,
                 max_attempts: int = 3, worker_token: str = "", connect_timeout_s: float = 2.0,
                 on_event: Callable[[str, dict], None] = lambda kind, data: None,
                 clock: Callable[[], float] = time.monotonic):
        self.scheduler = scheduler
        self.queue_timeout_s = queue_timeout_s
        self.max_attempts = max_attempts
        self.on_event = on_event  # metrics hook: ("served"|"failed"|"rejected", data)
        self.clock = clock
        self.forward_timeout_s = forward_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.headers = {"Content-Type": "application/json"}
        # The token signs each request (never sent, never logged); without one, requests go unsigned.
        self.signer = Signer(worker_token) if worker_token else None
        self._refused_signature: dict[str, float] = {}  # container id -> when it refused (clock())
        self._pools: dict[tuple[str, int], tuple[Pool, bytes, bytes]] = {}  # pool, /run_model head, /ready
        self._5xx_in_a_row: dict[str, int] = {}

    async def start(self) -> "Dispatcher":
        return self

    async def close(self) -> None:
        for pool, _, _ in self._pools.values():
            pool.close()
        self._pools.clear()

    def _pool(self, container: Container) -> tuple[Pool, bytes, bytes]:
        key = (container.host, container.port)
        entry = self._pools.get(key)
        if entry is None:
            pool = Pool(container.host, container.port, self.connect_timeout_s)
            run = request_head("POST", "/run_model", container.host, container.port, self.headers)
            ready = with_body(request_head("GET", "/ready", container.host, container.port, {}), b"")
            entry = self._pools[key] = (pool, run, ready)
        return entry

    async def probe_ready(self, container: Container, timeout_s: float) -> tuple[bool, str]:
        """The health check: (healthy, why) from GET /ready on a pooled connection."""
        refused_at = self._refused_signature.get(container.id)
        if refused_at is not None:
            if self.clock() - refused_at < SIGNATURE_HOLD_S:
                return False, f"it refused our signature; kept out for {SIGNATURE_HOLD_S:g} s"
            del self._refused_signature[container.id]
        pool, _, ready = self._pool(container)
        try:
            status, _ = await pool.request(ready, timeout_s)
        except UpstreamError as exc:
            return False, f"unreachable ({exc.kind})"
        return status == 200, f"/ready answered {status}"

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
        tried: list[Container] = []  # a retry goes to another container while one is healthy
        body = body or b"{}"
        for attempt in range(1, self.max_attempts + 1):
            forward = _Forward(self, body)
            try:
                reservation = await self.scheduler.acquire_async(
                    timeout=max(0.0, deadline - self.clock()), front=attempt > 1, queued_at=arrived,
                    avoid=tried, on_grant=forward.grant)
            except (QueueFull, QueueTimeout, NoContainers) as refusal:
                return self._refused(refusal, failures)
            except asyncio.CancelledError:  # granted (maybe sent), then cancelled: give it back
                if forward.sent is not None:
                    forward.sent[0].transport.close()  # its answer would be out of step
                if forward.reservation is not None and not forward.settled:
                    self.scheduler.release(forward.reservation, ok=False)
                raise
            try:
                status, answer = await self._attempt(forward)
            except ContainerFailed as failure:
                failures.append(failure)
                tried.append(reservation.container)
                continue
            if status >= 400:
                return self._callers_error(reservation.container, status, answer)
            return self._served(reservation, answer, arrived, attempt)
        return self._gave_up(failures)

    async def _attempt(self, forward: "_Forward") -> tuple[int, "dict | bytes"]:
        """Forward once: (status, the worker's JSON bytes) for a 2xx, (status,
        parsed answer) for a 4xx, ContainerFailed otherwise. The reservation is
        released whatever happens (also when the caller's task is cancelled); a
        container that failed is marked down first, so it is not handed out again."""
        container = forward.reservation.container
        try:
            return await forward.pool.request(forward.data, self.forward_timeout_s, forward.settle, forward.sent)
        except UpstreamError as exc:
            failure = ContainerFailed(exc.kind, f"{container.id} ({container.url}): {exc}")
            self._blame(container, failure)
            raise failure from None
        finally:
            if not forward.settled:
                self.scheduler.release(forward.reservation, ok=False)

    def _settle(self, reservation: Reservation, start: float, status: int, data: bytes) -> tuple[int, "dict | bytes"]:
        """Sort a whole answer (see the module's docstring) and release the reservation."""
        container = reservation.container
        ok = False
        try:
            if status >= 500:
                failure = ContainerFailed("http_5xx", f"container {container.id} answered {status}")
                self._blame(container, failure)
                raise failure
            if status == 401:
                failure = ContainerFailed("unauthorized", f"container {container.id} refused our signature")
                self._blame(container, failure)
                raise failure
            try:
                answer = json.loads(data)  # checked, not re-encoded: a 2xx is passed on as these bytes
            except (ValueError, RecursionError):
                if status >= 400:  # an error answer that is not JSON: still the caller's error
                    return status, {"error": data[:200].decode("utf-8", "replace") or f"the worker answered {status}"}
                failure = ContainerFailed("bad_answer", f"{container.id} answered something that is not JSON")
                self._blame(container, failure)
                raise failure from None
            if status >= 400:
                return status, answer
            ok = True
            self._5xx_in_a_row.pop(container.id, None)
            return status, data
        finally:
            self.scheduler.release(reservation, ok=ok,
                                   latency_ms=(self.clock() - start) * 1000 if ok else None)

    def _blame(self, container: Container, failure: ContainerFailed) -> None:
        """Count a container's failure; mark it down at once for a transport
        failure, after MAX_5XX_IN_A_ROW for 5xx answers."""
        self.on_event("failed", {"container": container.id, "kind": failure.kind})
        if failure.kind == "unauthorized":
            log.error("container %s (%s) refused our signature: clock skew or wrong credential; "
                      "marking it down for %g s and retrying elsewhere", container.id, container.url,
                      SIGNATURE_HOLD_S)
            self._refused_signature[container.id] = self.clock()
            self.scheduler.set_health(container.id, False)
            return
        if failure.kind != "http_5xx":
            log.warning("container %s (%s) failed: %s; marking it down and retrying elsewhere",
                        container.id, container.url, failure)
            self.scheduler.set_health(container.id, False)
            return
        in_a_row = self._5xx_in_a_row.get(container.id, 0) + 1
        self._5xx_in_a_row[container.id] = in_a_row
        if in_a_row >= MAX_5XX_IN_A_ROW:
            log.warning("container %s (%s) answered 5xx %d times in a row; marking it down",
                        container.id, container.url, in_a_row)
            self.scheduler.set_health(container.id, False)
            self._5xx_in_a_row.pop(container.id, None)
        else:
            log.warning("%s; trying another container", failure)

    def _callers_error(self, container: Container, status: int, answer: dict) -> Outcome:
        if status == 403:
            log.error("container %s (%s) refused the orchestrator's worker credential (%d): "
                      "check ORCH_WORKER_TOKEN", container.id, container.url, status)
            return Outcome(502, {"error": f"worker {container.id} refused the orchestrator's credential",
                                 "status": 502})
        if not isinstance(answer, dict):
            answer = {"error": str(answer)[:200]}
        answer.setdefault("error", f"the worker refused the request ({status})")
        answer["status"] = status
        return Outcome(status, answer)

    def _served(self, reservation: Reservation, answer: bytes, arrived: float, attempts: int) -> Outcome:
        """{"result": <the worker's answer as it came>, "container": {...}, "queue_ms",
        "total_ms", "attempts"}, built as bytes."""
        container = reservation.container
        queue_s, total_s = reservation.queue_wait_s, self.clock() - arrived
        self.on_event("served", {"container": container.id, "queue_s": queue_s, "total_s": total_s})
        return Outcome(200, payload=b'{"result": %b, "container": %b, "queue_ms": %.3f, "total_ms": %.3f, '
                                    b'"attempts": %d}' % (answer, container.reference_json, queue_s * 1000,
                                                          total_s * 1000, attempts))

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
