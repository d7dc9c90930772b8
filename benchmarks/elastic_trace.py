"""The load side of benchmarks/elastic.py and elastic_diurnal.py, the same for mlcluster and Ray Serve: clients
sending the same body to `<url>/new_request` (closed-loop for the step, an open loop at given times for the day),
each answer's container (or replica) id, the figures of a load step, and the day's sampling and windows."""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import requests

BODY = {"text": "elastic"}


class Trace:
    """Closed-loop clients whose number can change, and every answer: (sent at, latency s, status, container)."""

    def __init__(self, url: str):
        self.url, self.wanted, self.stop = url, 0, threading.Event()
        self.answers: list[tuple[float, float, int, str]] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def clients(self, n: int) -> None:
        self.wanted = n
        while len(self.threads) < n:
            t = threading.Thread(target=self.client, args=(len(self.threads),), daemon=True)
            self.threads.append(t)
            t.start()

    def client(self, i: int) -> None:
        with requests.Session() as http:
            while not self.stop.is_set():
                if i >= self.wanted:
                    time.sleep(0.01)
                    continue
                start = time.monotonic()
                try:
                    r = http.post(self.url + "/new_request", json=BODY, timeout=60)
                    outcome = (r.status_code, r.json()["container"]["id"] if r.ok else "")
                except (requests.RequestException, ValueError, KeyError, TypeError):
                    outcome = (0, "")
                with self.lock:
                    self.answers.append((start, time.monotonic() - start, *outcome))

    def since(self, t: float) -> list[tuple[float, float, int, str]]:
        with self.lock:
            return [a for a in self.answers if a[0] >= t]

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=65)


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("inf")


@dataclass(frozen=True)
class StepFigures:
    """A load step's figures, in seconds from the step (None: not within the window measured)."""
    system: str
    window_s: float
    first_new: float | None
    all_serving: float | None
    back_in_slo: float | None
    sent: int
    failed: int
    most_serving: int  # distinct containers (replicas) answering after the step


def step_figures(system: str, trace: Trace, began: float, step: float, window_s: float, slo_s: float,
                 want: int) -> StepFigures:
    """The step's figures from the trace: a container is new if it had not answered before the step; p99 is of
    2-s windows sliding by 0.5 s over the `window_s` seconds after the step; requests counted from `began`."""
    before = {a[3] for a in trace.since(began) if a[0] < step and a[2] == 200}
    after = [a for a in trace.since(step) if a[0] < step + window_s]
    served_by: dict[str, float] = {}
    for start, latency, status, cid in after:
        if status == 200:
            served_by.setdefault(cid, start + latency - step)
    new = [t for cid, t in served_by.items() if cid not in before]
    ready = sorted(served_by.values())
    back_in_slo = None
    for t0 in [step + 0.5 * i for i in range(int(2 * (window_s - 2)) + 1)]:
        window = [a[1] for a in after if t0 <= a[0] < t0 + 2]
        if window and all(a[2] == 200 for a in after if t0 <= a[0] < t0 + 2) and p99(window) <= slo_s:
            back_in_slo = t0 + 2 - step
            break
    answers = [a for a in trace.since(began) if a[0] < step + window_s]
    return StepFigures(system, window_s, min(new, default=None), ready[want - 1] if len(ready) >= want else None,
                       back_in_slo, len(answers), sum(1 for a in answers if a[2] != 200), len(served_by))


def secs(x: float | None, window_s: float) -> str:
    return f"> {window_s:.0f} s" if x is None else f"{x:.1f} s"


class OpenLoop:
    """An open loop: requests sent at given times (seconds from `start()`) whatever the answers, by a pool of
    threads; each answer is (scheduled at, latency s from the scheduled time, status, container). Latency
    counts from the schedule, not from the send, so a request that waited for a free client thread shows it
    (no coordinated omission)."""

    def __init__(self, url: str, at: list[float], threads: int = 96, timeout_s: float = 30.0):
        self.url, self.at, self.timeout_s = url, at, timeout_s
        self.todo: queue.Queue[float | None] = queue.Queue()
        self.answers: list[tuple[float, float, int, str]] = []
        self.lock = threading.Lock()
        self.pool = [threading.Thread(target=self.client, daemon=True) for _ in range(threads)]
        self.pacer = threading.Thread(target=self.pace, daemon=True)
        self.began = 0.0
        self.late = threading.Event()  # set past the grace after the last send time: what is left is not sent

    def start(self) -> float:
        for t in self.pool:
            t.start()
        self.began = time.monotonic()
        self.pacer.start()
        return self.began

    def pace(self) -> None:
        for offset in self.at:
            due = self.began + offset
            while (ahead := due - time.monotonic()) > 0:
                time.sleep(ahead)
            self.todo.put(due)
        for _ in self.pool:
            self.todo.put(None)

    def client(self) -> None:
        with requests.Session() as http:
            while (due := self.todo.get()) is not None:
                if self.late.is_set():  # still waiting for a client thread when the run ended: unanswered
                    with self.lock:
                        self.answers.append((due, time.monotonic() - due, 0, ""))
                    continue
                try:
                    r = http.post(self.url + "/new_request", json=BODY, timeout=self.timeout_s)
                    outcome = (r.status_code, r.json()["container"]["id"] if r.ok else "")
                except (requests.RequestException, ValueError, KeyError, TypeError):
                    outcome = (0, "")
                with self.lock:
                    self.answers.append((due, time.monotonic() - due, *outcome))

    def wait(self, grace_s: float = 120.0) -> None:
        """Until every request is answered (or timed out), or `grace_s` after the last send time; requests that
        have not left by then count as failed (status 0): a backlog cannot stretch the run without bound."""
        self.pacer.join()
        deadline = time.monotonic() + grace_s
        for t in self.pool:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self.late.set()
        for t in self.pool:
            t.join()


def windows_within(answers: list[tuple[float, float, int, str]], began: float, duration_s: float, slo_s: float,
                   width_s: float = 10.0) -> tuple[int, int]:
    """(windows whose p99 is within the SLO, windows): consecutive `width_s` windows by scheduled time; a failed
    request counts as an infinite latency; a window with no request is left out."""
    by_window: dict[int, list[float]] = {}
    for due, latency, status, _ in answers:
        i = int((due - began) // width_s)
        if 0 <= i < int(duration_s // width_s):
            by_window.setdefault(i, []).append(latency if status == 200 else float("inf"))
    return sum(1 for lat in by_window.values() if p99(lat) <= slo_s), len(by_window)


def integrate(counts: list[tuple[float, int]], began: float, ended: float) -> float:
    """Container-seconds between `began` and `ended` from samples (time, count), each count held until the next."""
    total = 0.0
    for (t0, n), (t1, _) in zip(counts, counts[1:] + [(ended, 0)]):
        lo, hi = max(t0, began), min(t1, ended)
        if hi > lo:
            total += n * (hi - lo)
    return total


class Sampler:
    """`with Sampler(count, samples):` appends (time, count()) every `every_s` seconds while inside; a failed
    look is skipped (the count before it holds)."""

    def __init__(self, count, samples: list[tuple[float, int]], every_s: float = 0.5):
        self.count, self.samples, self.every_s = count, samples, every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while True:
            try:
                self.samples.append((time.monotonic(), self.count()))
            except Exception:  # noqa: BLE001 - a status call that failed once: the next look counts
                pass
            if self.stop.wait(self.every_s):
                return

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
