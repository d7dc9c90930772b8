"""Dynamic batching: concurrent requests share one forward pass.

A `Batcher(classify, max_requests, wait_s)` is called from many request
threads: `run(texts) -> Batched`. The first request waiting starts a window of
`wait_s`; the forward pass runs as soon as `max_requests` requests wait or the
oldest has waited `wait_s` (counted from when the previous forward pass ended,
if it arrived during one: so the clients that pass freed do not split into
alternating half batches), whichever comes first, with the texts of every
request taken (tokenizers pad to the longest text of that batch only). With
`max_requests == 1` there is no window and no extra thread: each call runs at
once, one at a time (the classifiers hold a lock around their forward pass).
An exception in the forward pass is raised in every request of that batch.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

Classify = Callable[[list[str]], list[dict]]


@dataclass
class Batched:
    """One request's results, and the forward pass it was part of."""
    results: list[dict]
    batch_texts: int  # texts in the forward pass (this request's and the others')
    batch_requests: int  # requests that shared it
    inference_s: float  # time of the forward pass


@dataclass
class _Pending:
    texts: list[str]
    arrived: float
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(self, classify: Classify, max_requests: int, wait_s: float, clock=time.monotonic):
        if max_requests < 1 or wait_s < 0:
            raise ValueError("max_requests must be >= 1 and wait_s >= 0")
        self.classify, self.max_requests, self.wait_s, self.clock = classify, max_requests, wait_s, clock
        self._queue: deque[_Pending] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._free_since = clock()  # when the last forward pass ended
        self._thread = None
        if max_requests > 1:
            self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
            self._thread.start()

    def run(self, texts: list[str]) -> Batched:
        if self._thread is None:
            start = time.perf_counter()
            results = self.classify(texts)
            return Batched(results, len(texts), 1, time.perf_counter() - start)
        pending = _Pending(texts, self.clock())
        with self._ready:
            self._queue.append(pending)
            self._ready.notify()
        return pending.future.result()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()

    def _take(self) -> list[_Pending] | None:
        """Block until a batch is due; take it (None once closed)."""
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            deadline = max(self._queue[0].arrived, self._free_since) + self.wait_s
            while len(self._queue) < self.max_requests:
                left = deadline - self.clock()
                if left <= 0:
                    break
                self._ready.wait(left)
            count = min(len(self._queue), self.max_requests)
            return [self._queue.popleft() for _ in range(count)]

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            texts = [t for p in batch for t in p.texts]
            start = time.perf_counter()
            try:
                results = self.classify(texts)
            except BaseException as exc:  # every waiting request gets the error, none hangs
                for p in batch:
                    p.future.set_exception(exc)
                with self._ready:
                    self._free_since = self.clock()
                continue
            elapsed = time.perf_counter() - start
            with self._ready:
                self._free_since = self.clock()
            offset = 0
            for p in batch:
                p.future.set_result(Batched(results[offset:offset + len(p.texts)], len(texts), len(batch), elapsed))
                offset += len(p.texts)
