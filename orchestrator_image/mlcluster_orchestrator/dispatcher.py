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
  healthy container exists), because the fault may be the container's; the
  container leaves rotation only after `MAX_5XX_IN_A_ROW` consecutive 5xx
  answers (as HAProxy's `observe layer7` + `error-limit`), so one bad request
  cannot take containers out.
- refused, timed out, broken connection, an answer that is not JSON: the
  container is marked down at once (the health checker brings it back) and the
  request goes to another one.

How (`_Job`): callbacks end to end, no task, future or timer per request. At
several thousand requests a second on one core, each of those cost as much as
the rest of a request's Python; the queue's deadlines and the forwards'
time-outs are swept a few times a second instead (`QUEUE_TICK_S`,
upstream.TICK_S). A caller that disconnects while its request waits takes it
out of the queue (`_Job.cancel`); a container that leaves the registry has its
connections closed (`forget`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Callable, Optional

import orjson

from .containers import Container, Reservation
from .scheduler import NoContainers, QueueFull, QueueTimeout, Scheduler
from .signing import Signer
from .sweep import Sweep
from .upstream import Dropped, Pool, UpstreamError, request_head, with_body

log = logging.getLogger("mlcluster.orchestrator")
MAX_5XX_IN_A_ROW = 3
QUEUE_TICK_S = 0.05  # how often waiting requests are checked against their deadline (sweep.py)
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


class _Job:
    """One request through its attempts, as callbacks with no event-loop hop
    and no future: `_attempt` asks the scheduler for a container; `_granted`
    runs the moment one is granted (perhaps inside the callback of the answer
    that freed it) and writes the request on an idle connection at once;
    `_answered` runs inside the connection's callback the moment the answer
    is whole, releases the container (which grants it to the next waiter)
    and answers the caller; `_broke` blames the container and tries another.
    `done(outcome)` is called exactly once, unless `cancel()` came first."""
    __slots__ = ("d", "body", "done", "arrived", "deadline", "attempt", "failures", "tried", "waiter",
                 "reservation", "start", "resent", "ended")

    def __init__(self, dispatcher: "Dispatcher", body: bytes, done: Callable[[Outcome], None]):
        self.d, self.body, self.done = dispatcher, body, done
        self.arrived = dispatcher.clock()
        self.deadline = self.arrived + dispatcher.queue_timeout_s
        self.attempt = 0
        self.failures: list[ContainerFailed] = []
        self.tried: list[Container] = []  # a retry goes to another container while one is healthy
        self.waiter = self.reservation = None
        self.start = 0.0
        self.resent = False
        self.ended = False  # done() was called, or the caller left: nothing more is sent or answered

    def _attempt(self) -> None:
        d = self.d
        if self.ended:
            return
        self.attempt += 1
        if self.attempt > d.max_attempts:
            return self._finish(d._gave_up(self.failures))
        self.reservation, self.resent = None, False
        try:
            waiter = d.scheduler.request(self._granted, front=self.attempt > 1, queued_at=self.arrived,
                                         avoid=self.tried)
        except (QueueFull, NoContainers) as refusal:
            return self._finish(d._refused(refusal, self.failures))
        if waiter is not None and self.reservation is None:  # it waits: until its deadline at most
            self.waiter = waiter
            d._waiting.add(self)

    def _granted(self, reservation: Reservation) -> None:
        """Under the scheduler's lock, maybe: writes, never calls the scheduler."""
        d = self.d
        if self.waiter is not None:
            self.waiter = None
            d._waiting.discard(self)
        self.reservation = reservation
        self.start = d.clock()
        d._send(reservation.container, self.body, self._answered, self._broke)

    def _expired(self) -> None:
        waiter, self.waiter = self.waiter, None
        self.d._waiting.discard(self)
        if waiter is not None and self.d.scheduler.withdraw(waiter):
            self._finish(self.d._refused(QueueTimeout(), self.failures))

    def _answered(self, status: int, data: bytes) -> None:
        d, reservation = self.d, self.reservation
        try:
            try:
                status, answer = d._settle(reservation, self.start, status, data)
            except ContainerFailed as failure:
                self.failures.append(failure)
                self.tried.append(reservation.container)
                return self._attempt()
            if status >= 400:
                return self._finish(d._callers_error(reservation.container, status, answer))
            self._finish(d._served(reservation, answer, self.arrived, self.attempt))
        except Exception:  # a bug (the reservation is released already): logged, and the caller is answered
            log.exception("error while sorting an answer of %s", reservation.container.id)
            self._finish(Outcome(500, {"error": "internal error (see the orchestrator's log)", "status": 500}))

    def _broke(self, exc: UpstreamError) -> None:
        d, container = self.d, self.reservation.container
        if isinstance(exc, Dropped) and not self.resent:  # the worker never saw it: send it again
            self.resent = True
            return d._send(container, self.body, self._answered, self._broke, fresh=True)
        failure = ContainerFailed(exc.kind, f"{container.id} ({container.url}): {exc}")
        d._blame(container, failure)  # marked down first, so it is not handed out again
        d.scheduler.release(self.reservation, ok=False)
        self.failures.append(failure)
        self.tried.append(container)
        self._attempt()

    def _finish(self, outcome: Outcome) -> None:
        if not self.ended:
            self.ended = True
            done, self.done = self.done, None  # no reference cycle left for the garbage collector
            done(outcome)

    def cancel(self) -> None:
        """The caller is gone: leave the queue if still in it. A request
        already with a container runs to its end (the container stays in
        step and is released as usual); its answer is dropped."""
        if self.ended:
            return
        self.ended = True
        waiter, self.waiter = self.waiter, None
        self.d._waiting.discard(self)
        if waiter is not None and self.d.scheduler.withdraw(waiter):
            self.d.on_event("rejected", {"reason": "caller_gone"})


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
        self._waiting: Sweep[_Job] = Sweep(QUEUE_TICK_S, clock, _Job._expired)  # jobs in the scheduler's queue
        scheduler.on_forget = self.forget

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

    def _send(self, container: Container, body: bytes, on_answer, on_error, fresh: bool = False) -> None:
        """/run_model with `body` to `container`, signed anew (every attempt and resend)."""
        pool, head, _ = self._pool(container)
        signer = self.signer
        pool.send(with_body(head, body, signer.line(body) if signer is not None else b""),
                  self.forward_timeout_s, on_answer, on_error, fresh=fresh)

    def forget(self, container: Container) -> None:
        """A container left the registry: close its connections (busy ones as their answers come back)."""
        entry = self._pools.pop((container.host, container.port), None)
        if entry is not None:
            entry[0].close()
        self._5xx_in_a_row.pop(container.id, None)
        self._refused_signature.pop(container.id, None)

    async def probe_ready(self, container: Container, timeout_s: float) -> tuple[bool, str]:
        """The health check: (healthy, why) from GET /ready on a pooled connection."""
        if self.scheduler.get(container.id) is not container:  # it left: make no new pool for it
            return False, "it is no longer registered"
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

    def submit(self, body: bytes, done: Callable[[Outcome], None]) -> _Job:
        """Serve one request: wait for a container (first come, first served),
        forward the body, and on a container's failure try another one, ahead
        of the queue. `done(outcome)` gets every outcome as an HTTP answer
        (never an exception), maybe before this returns; `cancel()` what this
        returns when the caller is gone."""
        job = _Job(self, body or b"{}", done)
        job._attempt()
        return job

    async def handle(self, body: bytes) -> Outcome:
        """`submit` as a coroutine."""
        outcome = asyncio.get_running_loop().create_future()
        job = self.submit(body, outcome.set_result)
        try:
            return await outcome
        except asyncio.CancelledError:
            job.cancel()
            raise

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
                answer = orjson.loads(data)  # checked, not re-encoded: a 2xx is passed on as these bytes
            except orjson.JSONDecodeError:
                if status >= 400:  # an error answer that is not JSON: still the caller's error
                    return status, {"error": data[:200].decode("utf-8", "replace") or f"the worker answered {status}"}
                failure = ContainerFailed("bad_answer", f"{container.id} answered something that is not JSON")
                self._blame(container, failure)
                raise failure from None
            if status >= 400:
                return status, answer
            ok = True
            if self._5xx_in_a_row:
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
