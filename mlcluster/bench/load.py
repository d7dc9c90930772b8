"""Load generators: closed loop (C slots, each sends its next request when the
last one answered) and open loop (requests due at a rate, constant or Poisson,
sent whether or not earlier ones have answered, with at most `concurrency`
in flight: the rest wait, and their wait counts in their latency).

Both run as callbacks on the target's event loop (see `wire`): a slot's next
request leaves from the callback that completed its last one; the open
loop's schedule is one timer that sends whatever is due. Times are read with
`time.perf_counter_ns` and kept as seconds from the run's origin.
"""
from __future__ import annotations

import collections
import json
import math
import random
import string
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import MlclusterError
from .engine import CHUNK_S, engine_for
from .stats import Recorder
from .wire import Connection, Target, now_ns

__all__ = ["LoadRun", "LoadStep", "Target", "random_bodies", "start_run", "text_bodies"]


def random_bodies(count: int = 1024, length: int = 50, seed: Optional[int] = None) -> list[bytes]:
    """Request bodies with random lowercase text, as the lab sent."""
    rng = random.Random(seed)
    return [json.dumps({"text": "".join(rng.choices(string.ascii_lowercase, k=length))}).encode()
            for _ in range(count)]


def text_bodies(path: Path) -> list[bytes]:
    """One request body per non-blank line of `path`."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MlclusterError(f"the texts file {path} does not exist", "give a file with one text a line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MlclusterError(f"the texts file {path} cannot be read: {exc}") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise MlclusterError(f"the texts file {path} holds no text", "give a file with one text a line")
    return [json.dumps({"text": text}).encode() for text in texts]


@dataclass
class LoadStep:
    """One measurement's load. Open loop when `rate` is set."""
    concurrency: int = 15                # closed: slots; open: the most requests in flight
    rate: Optional[float] = None         # requests per second (open loop)
    arrivals: str = "constant"           # constant | poisson
    requests: Optional[int] = None       # stop after this many...
    duration_s: Optional[float] = None   # ...or after this long (whichever is set)
    step: int = 0
    seed: Optional[int] = None

    @property
    def open_loop(self) -> bool:
        return self.rate is not None


def start_run(target: Target, bodies: Sequence[bytes], plan: LoadStep, recorder: Recorder, origin_ns: int):
    """`plan` running on `target`: a closed loop on the compiled engine where it
    serves (see `engine`), anything else on the Python loop (`LoadRun`)."""
    compiled = None if plan.open_loop else engine_for(target)
    if compiled is not None:
        return EngineRun(compiled, target, bodies, plan, recorder, origin_ns).start()
    return LoadRun(target, bodies, plan, recorder, origin_ns).start()


class Run:
    """What both kinds of run share: one `LoadStep` against `target`, recorded
    into `recorder`, `origin_ns` its time zero (`time.perf_counter_ns()`);
    `start()`, `stop()` (sends nothing new; requests in flight still finish),
    `stopped()`, `finished()`, `join(timeout)`, from any thread."""

    def __init__(self, target: Target, bodies: Sequence[bytes], plan: LoadStep, recorder: Recorder, origin_ns: int):
        self.target, self.plan, self.recorder, self.origin_ns = target, plan, recorder, origin_ns
        self.requests = target.encode(bodies)
        self._done = threading.Event()
        self._stopped = False
        self.sent = 0          # requests that left the client (issued ones may be dropped by stop())
        self.in_flight = 0     # sent (or connecting) and not yet answered
        self.start_s = self.end_s = 0.0
        self.error: Optional[BaseException] = None

    def now(self) -> float:
        return (now_ns() - self.origin_ns) * 1e-9

    def stopped(self) -> bool:
        return self._stopped

    def finished(self) -> bool:
        return self._done.is_set()

    def join(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def _failed(self, exc: BaseException) -> None:
        self.error = exc
        self._stopped = True
        self._done.set()
        print(f"mlcluster bench: the load generator failed: {exc!r}", file=sys.stderr)


class LoadRun(Run):
    """Runs one `LoadStep` on `target`'s event loop, recording into `recorder`.
    `origin_ns` is the run's time zero (`time.perf_counter_ns()`). `stop()`
    sends nothing new; requests in flight still finish. Every method but the
    ones marked "on the loop" may be called from any thread."""

    def __init__(self, target: Target, bodies: Sequence[bytes], plan: LoadStep, recorder: Recorder, origin_ns: int):
        super().__init__(target, bodies, plan, recorder, origin_ns)
        self._issued = 0
        self._slots = 0                            # closed loop: slots still sending
        self._waiting: collections.deque = collections.deque()  # open loop: (index, due_s) not yet sent
        self._timer = None
        self._scheduling = False                   # open loop: the schedule has more to send
        self._rng = random.Random(plan.seed)
        self._due = 0.0
        # Read once per request on the loop: kept as plain attributes, not looked up through plan/recorder.
        self._open_loop, self._step, self._record = plan.open_loop, plan.step, recorder.add_raw

    @property
    def issued(self) -> int:
        return self._issued

    def start(self) -> "LoadRun":
        self.start_s = self.end_s = self.now()
        self.target.call(self._begin)
        return self

    def stop(self) -> None:
        self._stopped = True  # read on the loop; a plain flag is enough (and cheap to read per request)
        self.target.call(self._halt)

    # -- on the loop ------------------------------------------------------------
    def _begin(self) -> None:
        try:
            if self.plan.open_loop:
                self._scheduling, self._due = True, self.start_s
                self._tick()
            else:
                self._slots = self.plan.concurrency
                for _ in range(self.plan.concurrency):
                    self._next_in_slot(None)
        except BaseException as exc:  # never leave the caller waiting for a run that died
            self._failed(exc)

    def _claim(self, at: float) -> Optional[int]:
        """The index of the request due at `at`, or None when the plan is done."""
        plan = self.plan
        if self._stopped or self.target.closing or (plan.requests is not None and self._issued >= plan.requests):
            return None
        # Within a nanosecond counts as the end: an open loop's due times are start + i / rate,
        # and that sum, less start, may round to just below the duration.
        if plan.duration_s is not None and at - self.start_s >= plan.duration_s - 1e-9:
            return None
        self._issued += 1
        return self._issued - 1

    def _next_in_slot(self, conn: Optional[Connection], at: Optional[float] = None) -> None:
        """Closed loop: the slot holding `conn` (None: no connection yet) sends again,
        or ends; `at` is now (None: read the clock)."""
        index = self._claim(self.now() if at is None else at)
        if index is None:
            self.target.give_back(conn)
            self._slots -= 1
            self._maybe_done()
        else:
            self._send(conn, index, None)

    def _tick(self) -> None:
        """Open loop: send every request now due, then sleep until the next one."""
        self._timer = None
        now = self.now()
        while self._scheduling and self._due <= now:
            index = self._claim(self._due)
            if index is None:
                self._scheduling = False
                break
            if self.in_flight < self.plan.concurrency:
                self._send(self.target.take(), index, self._due)
            else:
                self._waiting.append((index, self._due))
            if self.plan.arrivals == "poisson":
                self._due += self._rng.expovariate(self.plan.rate)
            else:  # from the index, so rounding does not accumulate
                self._due = self.start_s + (index + 1) / self.plan.rate
        if self._scheduling:
            # Whole milliseconds, rounded up: the loop's timers count in ms, and a
            # shorter wait would wake it early, again and again, until due.
            wait_ms = math.ceil((self._due - self.now()) * 1000.0)
            self._timer = self.target.loop.call_later(max(0, wait_ms) / 1000.0, self._tick)
        else:
            self._maybe_done()

    def _send(self, conn: Optional[Connection], index: int, scheduled_s: Optional[float]) -> None:
        """Send request `index`, due at `scheduled_s` (None: now, the closed loop's case)."""
        self.sent += 1
        self.in_flight += 1
        sent = now_ns()
        sent_s = (sent - self.origin_ns) * 1e-9
        # The record's first fields; `answered` appends the rest (see stats.RawRecord).
        slot = (self._step, index, sent_s if scheduled_s is None else scheduled_s, sent_s)
        data = self.requests[index % len(self.requests)]
        if conn is None or not conn.open:
            conn = self.target.take()
        if conn is not None:
            conn.owner, conn.slot, conn.sent_ns = self, slot, sent  # Connection.send, inlined (once a request)
            conn.transport.write(data)
        else:
            self.target.loop.create_task(self._connect_and_send(slot, data, sent))

    async def _connect_and_send(self, slot: tuple, data: bytes, sent: int) -> None:
        try:
            conn = await self.target.connect()
        except (OSError, TimeoutError, ValueError) as exc:
            self.answered(None, slot, None, "timeout" if isinstance(exc, TimeoutError) else "connection", b"")
            return
        except BaseException as exc:
            self._failed(exc)
            raise
        conn.send(self, slot, data, sent)

    def answered(self, conn: Optional[Connection], slot: tuple, status: Optional[int], error: str,
                 body: bytes) -> None:
        """A request ended (answer, error or time-out): record it, then reuse its slot."""
        done = (now_ns() - self.origin_ns) * 1e-9
        self._record(slot + (done, status, error, body))
        if done > self.end_s:
            self.end_s = done
        self.in_flight -= 1
        try:
            if not self._open_loop:
                self._next_in_slot(conn, done)  # its last answer's time is now, near enough
            elif self._waiting and not self._stopped:
                self._send(conn, *self._waiting.popleft())
            else:
                self.target.give_back(conn)
                self._maybe_done()
        except BaseException as exc:
            self._failed(exc)

    def _halt(self) -> None:
        self._scheduling = False
        self._waiting.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.in_flight == 0 and self._slots <= 0 and not self._scheduling and not self._waiting:
            self._done.set()


class EngineRun(Run):
    """A closed-loop `LoadStep` on `engine` (see `engine`): it runs on the
    engine's own thread; this one's hands the records finished meanwhile to
    the recorder every `CHUNK_S`."""

    def __init__(self, engine, target: Target, bodies: Sequence[bytes], plan: LoadStep, recorder: Recorder,
                 origin_ns: int):
        super().__init__(target, bodies, plan, recorder, origin_ns)
        self.engine = engine

    def start(self) -> "EngineRun":
        plan = self.plan
        self.start_s = self.end_s = self.now()
        end_ns = 0 if plan.duration_s is None else self.origin_ns + int((self.start_s + plan.duration_s) * 1e9)
        self.engine.begin(tuple(self.requests), plan.concurrency, -1 if plan.requests is None else plan.requests,
                          end_ns, plan.step, self.origin_ns)
        threading.Thread(target=self._hand_over, name="bench-engine", daemon=True).start()
        return self

    def _hand_over(self) -> None:
        add = self.recorder.add_many
        try:
            finished = False
            while not finished:
                records, finished, self.sent, self.in_flight = self.engine.take(CHUNK_S)
                if records:
                    add(records)
                    self.end_s = max(self.end_s, records[-1][4])  # in the order they ended
            self._done.set()
        except BaseException as exc:  # never leave the caller waiting for a run that died
            self._failed(exc)

    def stop(self) -> None:
        self._stopped = True
        self.engine.stop()
