"""A closed-loop load on an orchestrator: `clients` threads, each sending its
next request when its last one is answered, and (with `watch`) a thread
sampling the orchestrator's /status containers every 50 ms.

Every answer is kept in order as an `Answer`, so a test can count the failed
ones, see which container or model answered, and split the answers at a
moment (`count()` before and after an action)."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import requests


@dataclass(frozen=True)
class Answer:
    status: int          # the HTTP status; 0 when none came (connection error, timeout)
    container: str = ""  # the container that answered (the answer's container.id)
    model: str = ""      # the model directory the answer names ("tiny-distilbert (random ...)" -> "tiny-distilbert")
    error: str = ""      # otherwise what went wrong: the body, or the exception's name
    inference_ms: Optional[float] = None  # the worker's own figure, when the answer has one


def ask(http: requests.Session, url: str, text: str) -> Answer:
    try:
        r = http.post(url + "/new_request", json={"text": text}, timeout=60)
    except requests.RequestException as exc:
        return Answer(0, error=type(exc).__name__)
    if not r.ok:
        return Answer(r.status_code, error=r.text)
    body = r.json()
    result = body.get("result", {})
    return Answer(r.status_code, container=body.get("container", {}).get("id", ""),
                  model=result.get("model", "").split(" (")[0], inference_ms=result.get("inference_ms"))


class ClosedLoop:
    def __init__(self, url: str, clients: int, watch: bool = False):
        self.url, self.stop, self.lock = url, threading.Event(), threading.Lock()
        self.answers: list[Answer] = []
        self.samples: list[list[dict]] = []  # /status "containers", every 50 ms (with `watch`)
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(clients)]
        if watch:
            self.threads.append(threading.Thread(target=self.watch, daemon=True))
        for t in self.threads:
            t.start()

    def client(self, i: int) -> None:
        with requests.Session() as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                answer = ask(http, self.url, f"client {i} request {n}")
                with self.lock:
                    self.answers.append(answer)

    def watch(self) -> None:
        while not self.stop.wait(0.05):
            try:
                containers = requests.get(self.url + "/status", timeout=5).json()["containers"]
            except requests.RequestException:
                continue
            with self.lock:
                self.samples.append(containers)

    def count(self) -> int:
        with self.lock:
            return len(self.answers)

    def most(self) -> int:
        """The most containers the orchestrator held in any sample."""
        with self.lock:
            return max((len(s) for s in self.samples), default=0)

    def drained(self) -> set[str]:
        """The containers ever seen draining."""
        with self.lock:
            return {c["id"] for s in self.samples for c in s if c["status"] == "draining"}

    def finish(self) -> list[Answer]:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        with self.lock:
            return list(self.answers)


def failed(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.status != 200]


def served_by(answers: list[Answer], host: str) -> int:
    """How many of `answers` a container of `host` answered (its id starts with the host's name)."""
    return sum(1 for a in list(answers) if a.status == 200 and a.container.startswith(host))
