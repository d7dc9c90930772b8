"""The load side of benchmarks/elastic.py, the same for mlcluster and Ray Serve: closed-loop clients sending the
same body to `<url>/new_request`, each answer's container (or replica) id, and the figures of a load step."""
from __future__ import annotations

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
