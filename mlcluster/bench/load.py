"""Load generators: closed loop (C slots, each sends its next request when the
last one answered) and open loop (requests due at a rate, constant or Poisson,
sent whether or not earlier ones have answered).

Every slot is a thread with a keep-alive connection from one urllib3 pool:
simple, and measured fast enough (see benchmarks/bench_client.py) that the
client is not what limits a cluster of a few hundred requests per second.
"""
from __future__ import annotations

import json
import random
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import urllib3

from ..errors import MlclusterError
from .stats import Answer, Recorder, RequestRecord

Clock = Callable[[], float]


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


class Target:
    """The orchestrator's /new_request, reached through one keep-alive pool."""

    def __init__(self, url: str, timeout_s: float = 60.0, pool_size: int = 64):
        self.url = url.rstrip("/")
        self.pool = urllib3.connection_from_url(
            self.url, maxsize=pool_size, block=False, retries=False,
            timeout=urllib3.Timeout(connect=min(5.0, timeout_s), read=timeout_s),
            headers={"Content-Type": "application/json"})
        self.path = urllib3.util.parse_url(self.url).path or ""
        self.model: Optional[str] = None  # from the first good answer

    def send(self, body: bytes) -> Answer:
        """POST one request; returns what came back (never raises for a
        failed request: the failure is its `error`)."""
        try:
            response = self.pool.urlopen("POST", self.path + "/new_request", body=body,
                                         preload_content=True, redirect=False)
        except urllib3.exceptions.TimeoutError:
            return Answer(None, "timeout")
        except urllib3.exceptions.HTTPError:
            return Answer(None, "connection")
        if response.status != 200:
            return Answer(response.status, f"http_{response.status}")
        try:
            answer = json.loads(response.data)
            result = answer.get("result") or {}
            fields = Answer(200, container=str(answer["container"]["id"]), queue_ms=answer.get("queue_ms"),
                            server_ms=answer.get("total_ms"), inference_ms=result.get("inference_ms"),
                            attempts=answer.get("attempts"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return Answer(200, "bad_answer")
        if self.model is None and result.get("model"):
            self.model = str(result["model"])
        return fields

    def close(self) -> None:
        self.pool.close()


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


class LoadRun:
    """Runs one `LoadStep` in background threads, recording into `recorder`.
    `stop()` sends nothing new; requests in flight still finish."""

    def __init__(self, target: Target, bodies: Sequence[bytes], plan: LoadStep, recorder: Recorder,
                 origin: float, clock: Clock = time.perf_counter):
        self.target, self.bodies, self.plan, self.recorder = target, bodies, plan, recorder
        self.origin, self.clock = origin, clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._issued = 0
        self.sent = 0  # requests that left the client (issued ones may be cancelled by stop())
        self._threads: list[threading.Thread] = []
        self.start_s = self.end_s = 0.0

    def now(self) -> float:
        return self.clock() - self.origin

    @property
    def issued(self) -> int:
        return self._issued

    def start(self) -> "LoadRun":
        self.start_s = self.end_s = self.now()
        if self.plan.open_loop:
            self._threads = [threading.Thread(target=self._open_loop, name="bench-schedule", daemon=True)]
        else:
            self._threads = [threading.Thread(target=self._slot, name=f"bench-slot-{i}", daemon=True)
                             for i in range(self.plan.concurrency)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def stopped(self) -> bool:
        return self._stop.is_set()

    def finished(self) -> bool:
        return not any(t.is_alive() for t in self._threads)

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.finished()

    # -- the two loops ------------------------------------------------------
    def _claim(self, at: float) -> Optional[int]:
        """The index of the request due at `at`, or None when the plan is done."""
        plan = self.plan
        with self._lock:
            if self._stop.is_set() or (plan.requests is not None and self._issued >= plan.requests):
                return None
            if plan.duration_s is not None and at - self.start_s >= plan.duration_s:
                return None
            self._issued += 1
            return self._issued - 1

    def _slot(self) -> None:
        while (index := self._claim(self.now())) is not None:
            self._send(index, self.now())

    def _open_loop(self) -> None:
        plan = self.plan
        rng = random.Random(plan.seed)
        pool = ThreadPoolExecutor(max_workers=plan.concurrency, thread_name_prefix="bench-open")
        due = self.start_s
        try:
            while (index := self._claim(due)) is not None:
                wait = due - self.now()
                if wait > 0 and self._stop.wait(wait):
                    break
                pool.submit(self._send, index, due)
                if plan.arrivals == "poisson":
                    due += rng.expovariate(plan.rate)
                else:  # from the index, so rounding does not accumulate
                    due = self.start_s + (index + 1) / plan.rate
        finally:
            pool.shutdown(wait=True, cancel_futures=self._stop.is_set())

    def _send(self, index: int, scheduled: float) -> None:
        sent = self.now()
        with self._lock:
            self.sent += 1
        answer = self.target.send(self.bodies[index % len(self.bodies)])
        done = self.now()
        self.recorder.add(RequestRecord.of(answer, index=index, step=self.plan.step, scheduled_s=scheduled,
                                           sent_s=sent, done_s=done))
        with self._lock:
            self.end_s = max(self.end_s, done)
