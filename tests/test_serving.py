"""The whole serving path with real processes on loopback: an orchestrator and
worker containers (gunicorn), hundreds of requests above capacity, first-come
first-served, and a worker killed while requests are in flight."""
from __future__ import annotations

import threading

import pytest
import requests

from support.serving import Background, port_of
from support.waiting import wait_for


@pytest.fixture(scope="module")
def reference(tiny_model):
    """The tiny model run in this process, to check that answers are the model's."""
    from mlcluster_worker.model import Classifier
    return Classifier(tiny_model, torch_threads=1)


def body_for(i: int) -> dict:
    """A mix of single texts, small batches and the lab's empty request."""
    if i % 5 == 3:
        return {"texts": [f"request {i} part one", f"request {i} part two"]}
    if i % 5 == 4:
        return {}
    return {"text": f"request number {i}"}


def assert_model_answer(sent: dict, result: dict, reference) -> None:
    texts = sent.get("texts") or [sent.get("text") or result["text"]]
    expected = reference.classify(texts)
    got = result["results"] if "texts" in sent else [result]
    assert (result["texts"] if "texts" in sent else [result["text"]]) == texts
    for g, e in zip(got, expected, strict=True):
        assert g["label"] == e["label"]
        for label, p in e["probabilities"].items():
            assert g["probabilities"][label] == pytest.approx(p, abs=1e-4)


def test_hundreds_of_requests_above_capacity(cluster, tiny_model, reference):
    ids = ["w0", "w1", "w2", "w3"]
    cluster.start_workers(ids, model=tiny_model, torch_threads=1)
    cluster.start_orchestrator(queue_limit=500)
    cluster.register()
    total, clients = 400, 24  # 24 concurrent callers, 4 containers of capacity 1
    bg = Background(clients)
    try:
        for i in range(total):
            bg.submit(cluster.new_request, body_for(i))
        responses = bg.results(timeout=300)
    finally:
        bg.close()

    assert [r.status_code for r in responses] == [200] * total
    answers = [r.json() for r in responses]
    for i, answer in enumerate(answers):
        assert answer["container"]["id"] in ids and answer["attempts"] == 1
        assert answer["result"]["worker"] == answer["container"]["id"]  # the container named did answer
        assert "tiny-distilbert" in answer["result"]["model"]
        assert_model_answer(body_for(i), answer["result"], reference)
    assert any(a["queue_ms"] > 0 for a in answers), "no request ever waited: the test did not exceed capacity"

    status = cluster.status()
    by_id = {c["id"]: c for c in status["containers"]}
    for cid in ids:
        stats = cluster.worker_stats(cid)
        assert stats["max_in_flight"] == 1, f"{cid} served two requests at once"
        assert stats["in_flight"] == 0 and stats["served"] == by_id[cid]["served"] > 0
    assert status["served"] == total and status["failed"] == 0 and status["queue"]["depth"] == 0


def test_the_queue_is_served_in_arrival_order(cluster):
    """One container of capacity 1 serving 150 ms per request: the queue's
    order is the order in which answers come back. Each request is sent only
    once the orchestrator has counted the previous one as arrived, so the
    arrival order is known exactly, not guessed from timing."""
    cluster.start_workers(["only"], service_ms=150)
    cluster.start_orchestrator()
    cluster.register()
    names = [f"r{i:02d}" for i in range(12)]
    finished: list[str] = []
    lock = threading.Lock()

    def send(name: str, session: requests.Session) -> dict:
        answer = cluster.new_request({"text": name}, session=session).json()
        with lock:
            finished.append(answer["result"]["text"])
        return answer

    bg = Background(len(names))
    try:
        for i, name in enumerate(names):
            bg.submit(send, name)
            wait_for(lambda: cluster.arrived() == i + 1, f"{name} to arrive")
        answers = bg.results()
    finally:
        bg.close()
    assert finished == names
    assert sum(a["queue_ms"] > 0 for a in answers) >= len(names) // 2, "too few requests queued to show an order"


def test_a_killed_worker_is_routed_around_and_serves_again_when_back(cluster):
    cluster.start_workers(["victim"], service_ms=2000)  # long enough to be caught mid-request
    cluster.start_workers(["a", "b"], service_ms=50)
    cluster.start_orchestrator(health_interval_s=0.25)
    cluster.register()
    victim = cluster.workers["victim"]

    def send_many(thread: int, session: requests.Session) -> list[tuple[str, requests.Response]]:
        out = []
        for k in range(8):
            text = f"t{thread}-{k}"
            out.append((text, cluster.new_request({"text": text}, session=session)))
        return out

    bg = Background(6)
    try:
        for thread in range(6):
            bg.submit(send_many, thread)
        wait_for(lambda: cluster.container("victim")["in_flight"] == 1, "a request in flight on the victim")
        victim.kill()  # SIGKILL to gunicorn's whole process group
        wait_for(lambda: cluster.container("victim")["status"] == "down", "the victim to show as down", timeout=5)
        results = [pair for batch in bg.results() for pair in batch]
    finally:
        bg.close()

    assert len(results) == 48
    for text, r in results:
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["result"]["text"] == text and answer["container"]["id"] in {"a", "b"}
    retried = [r.json() for _, r in results if r.json()["attempts"] > 1]
    assert len(retried) == 1, "the request in flight on the victim should have been sent elsewhere once"
    assert cluster.container("victim")["failed"] == 1

    cluster.start_workers(["victim"], port=port_of(victim), service_ms=50)  # back on the same port
    wait_for(lambda: cluster.container("victim")["status"] == "free", "the victim to be back")
    served_by = [cluster.new_request({"text": f"after {i}"}).json()["container"]["id"] for i in range(6)]
    assert "victim" in served_by
    assert cluster.worker_stats("victim")["served"] >= 1
