"""Draining a container on a real orchestrator with real worker processes
(overhead-test workers: a fixed service time, no model): under a closed-loop
load no request fails because of the drain, and the container leaves."""
from __future__ import annotations

import pytest
import requests

from support.load import ClosedLoop, failed
from support.serving import AUTH, Cluster, error_of
from support.waiting import wait_for


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


def test_a_drain_under_load_fails_no_request_and_removes_the_container(cluster):
    cluster.start_workers(["w1", "w2", "w3"], service_ms=40)
    cluster.start_orchestrator(queue_limit=1000)
    cluster.register()
    load = ClosedLoop(cluster.url, clients=8)  # more clients than containers: requests queue
    try:
        wait_for(lambda: cluster.status()["queue"]["depth"] > 0 and cluster.container("w1")["in_flight"],
                 "requests queued and one in flight on w1")
        r = requests.post(f"{cluster.url}/workers/w1/drain", headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["draining"] == "w1"
        drained_at = load.count()
        wait_for(lambda: cluster.container("w1") is None, "w1 to leave the registry")
        wait_for(lambda: load.count() > drained_at + 60, "requests served after the drain", timeout=30)
        assert cluster.status()["draining"] == 0
    finally:
        answers = load.finish()
    assert failed(answers) == [] and len(answers) > 60
    assert {a.container for a in answers[-30:]} <= {"w2", "w3"}  # nothing more went to w1
    served = cluster.worker_stats("w1")["served"]
    assert served == sum(1 for a in answers if a.container == "w1") and served > 0


def test_status_shows_a_container_draining(cluster):
    cluster.start_workers(["w1", "w2"], service_ms=1500)
    cluster.start_orchestrator()
    cluster.register()
    load = ClosedLoop(cluster.url, clients=1)
    try:
        busy = wait_for(lambda: next((c["id"] for c in cluster.status()["containers"] if c["in_flight"]), None),
                        "a request in flight")
        r = requests.post(f"{cluster.url}/workers/{busy}/drain", headers=AUTH, timeout=10)
        assert r.json() == {"draining": busy, "in_flight": 1, "removed": False}
        status = cluster.status()
        assert status["draining"] == 1 and cluster.container(busy)["status"] == "draining"
        wait_for(lambda: cluster.container(busy) is None, "the drained container to leave")
    finally:
        assert failed(load.finish()) == []


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}], ids=["none", "wrong"])
def test_a_drain_needs_the_token(cluster, headers):
    cluster.start_workers(["w1"], service_ms=0)
    cluster.start_orchestrator()
    cluster.register()
    r = requests.post(f"{cluster.url}/workers/w1/drain", headers=headers, timeout=10)
    assert "Bearer" in error_of(r, 401)
    assert cluster.container("w1")["status"] == "free"


def test_draining_an_unknown_container_is_a_json_404(cluster):
    cluster.start_workers(["w1"], service_ms=0)
    cluster.start_orchestrator()
    cluster.register()
    r = requests.post(f"{cluster.url}/workers/nope/drain", headers=AUTH, timeout=10)
    assert "nope" in error_of(r, 404)
    r = requests.get(f"{cluster.url}/workers/w1/drain", headers=AUTH, timeout=10)
    error_of(r, 405)
    assert cluster.container("w1")["status"] == "free"
