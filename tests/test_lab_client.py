"""The lab's own client flow and poison inputs, through the real orchestrator
and real tiny-model workers on loopback.

Two checks here depend on the worker (worker_image/): that it classifies a
random text for the lab's `{"payload": ...}` body, and that it answers 4xx for
a text it cannot classify. Where the worker running here does not do that
yet, the test says so as an expected failure (after checking everything the
orchestrator itself is responsible for)."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from mlcluster_orchestrator import validation
from support.serving import Cluster

LAB_BODY = {"payload": "dummy payload"}
POISON = b'{"text": "\\ud800 poison"}'  # valid JSON; a lone surrogate no tokenizer can encode


@pytest.fixture
def cluster(tmp_path, tiny_model):
    c = Cluster(tmp_path)
    c.start_workers([f"worker{w}-{i}" for w in (1, 2) for i in (1, 2)], model=tiny_model, torch_threads=1)
    c.start_orchestrator()
    c.register()
    yield c
    c.stop()


def worker_answers(c: Cluster, body: bytes) -> int:
    """What one worker answers to `body` directly (bypassing the orchestrator)."""
    worker = next(iter(c.workers.values()))
    return requests.post(worker.url + "/run_model", data=body, headers={"Content-Type": "application/json"},
                         timeout=30).status_code


def test_the_orchestrator_accepts_the_lab_body_and_nothing_beside_it():
    validation.inference_request(json.dumps(LAB_BODY).encode(), 64)
    validation.inference_request(b'{"payload": {"anything": [1, 2]}}', 64)
    with pytest.raises(validation.BadRequest, match="unknown field"):
        validation.inference_request(b'{"payload": "x", "temperature": 1}', 64)
    with pytest.raises(validation.BadRequest, match="unknown field"):
        validation.inference_request(b'{"payload": "x", "text": "y"}', 64)


def test_the_lab_client_flow(cluster):
    """15 posts of the lab's body at once, then /workers_info ten times."""
    with ThreadPoolExecutor(15) as pool:
        answers = list(pool.map(lambda _: requests.post(cluster.url + "/new_request", json=LAB_BODY, timeout=60),
                                range(15)))
    statuses = [a.status_code for a in answers]
    assert statuses == [200] * 15, [a.text for a in answers if a.status_code != 200]
    for a in answers:
        result = a.json()["result"]
        assert len(result["text"]) == 50 and result["label"]
    ports = {cid: int(w.url.rsplit(":", 1)[1]) for cid, w in cluster.workers.items()}
    for _ in range(10):
        info = requests.get(cluster.url + "/workers_info", timeout=10).json()
        assert list(info) == ["workers info"]
        assert {cid: (v["ip"], v["port"]) for cid, v in info["workers info"].items()} == {
            cid: ("127.0.0.1", port) for cid, port in ports.items()}
        assert all(v["status"] in ("free", "busy") for v in info["workers info"].values())
        time.sleep(0.2)


def test_poison_texts_among_normal_load_are_the_callers_errors(cluster):
    """10 texts the tokenizer cannot take, among steady normal requests: no
    container leaves rotation, normal requests are all served, and each poison
    answer is the caller's error."""
    assert worker_answers(cluster, POISON) == 400  # the worker itself calls it the caller's error
    stop = threading.Event()
    normal: list[int] = []
    seen_down: list[str] = []

    def load() -> None:
        with requests.Session() as s:
            i = 0
            while not stop.is_set():
                answer = s.post(cluster.url + "/new_request", json={"text": f"normal {i}"}, timeout=60)
                normal.append(answer.status_code)
                i += 1

    def watch() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                status = s.get(cluster.url + "/status", timeout=10).json()
                seen_down.extend(c["id"] for c in status["containers"] if c["status"] == "down")
                time.sleep(0.01)

    threads = [threading.Thread(target=load) for _ in range(3)] + [threading.Thread(target=watch)]
    for t in threads:
        t.start()
    try:
        poison = []
        for _ in range(10):
            poison.append(requests.post(cluster.url + "/new_request", data=POISON,
                                        headers={"Content-Type": "application/json"}, timeout=60))
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not seen_down, f"containers left rotation: {sorted(set(seen_down))}"
    assert normal and set(normal) == {200}
    assert all(c["status"] == "free" for c in cluster.status()["containers"])
    assert all(400 <= p.status_code < 500 for p in poison), [p.text for p in poison]
    assert all(p.json()["status"] == p.status_code and p.json()["error"] for p in poison)
