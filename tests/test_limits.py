"""Bounded request heads on the real orchestrator and worker processes: a
request target over the limit is a 414, a header block over its bytes or
field count a 431 (then a close); 2,000 connections each sending 1 MB of
header bytes leave the process's RSS within 64 MB of where it was, and a
normal request is answered within a second meanwhile."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from support.flood import PeakRss, header_flood, rss_bytes
from support.serving import Cluster, port_of
from test_slow_clients import closed_by_peer, read_answer

MB = 1 << 20


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def ask(port: int, head: bytes) -> bytes:
    """Send a head; what the server answered before closing (None if it kept the connection)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        try:
            s.sendall(head)
        except OSError:
            pass
        answer = closed_by_peer(s, within_s=5)
        assert answer is not None, "the server kept the connection open"
        return answer
    finally:
        s.close()


def fields(n: int, size: int = 10) -> bytes:
    return b"".join(b"X-F%d: %b\r\n" % (i, b"v" * size) for i in range(n))


def normal_requests_during(url: str, stop: threading.Event, latencies: list[float]) -> None:
    with requests.Session() as http:
        while not stop.is_set():
            started = time.monotonic()
            try:
                ok = http.get(url, timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            latencies.append(time.monotonic() - started if ok else float("inf"))
            stop.wait(0.05)


def flood_and_measure(pid: int, port: int, url: str) -> tuple[int, list[float], dict]:
    before = rss_bytes(pid)
    peak = PeakRss(pid)
    stop, latencies = threading.Event(), []
    prober = threading.Thread(target=normal_requests_during, args=(url, stop, latencies))
    prober.start()
    try:
        flood = header_flood(port, connections=2000, per_connection=MB, time_limit_s=20)
    finally:
        stop.set()
        prober.join()
    return peak.stop() - before, latencies, flood


def test_the_orchestrator_answers_414_and_431_and_closes(cluster):
    cluster.start_orchestrator()
    port = port_of(cluster.orchestrator)
    assert ask(port, b"GET /health_check?" + b"q" * 8300 + b" HTTP/1.1\r\nHost: o\r\n\r\n").startswith(b"HTTP/1.1 414")
    answer = ask(port, b"GET /health_check HTTP/1.1\r\nHost: o\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431") and b"16384-byte" in answer
    answer = ask(port, b"GET /health_check HTTP/1.1\r\nHost: o\r\n" + fields(101) + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431") and b"100 header fields" in answer
    # Just within the limits: answered, and the connection stays open.
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /health_check?" + b"q" * 8000 + b" HTTP/1.1\r\nHost: o\r\n" + fields(99, 100) + b"\r\n")
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    assert closed_by_peer(s, within_s=0.3) is None
    s.close()


def test_the_orchestrator_head_limits_are_settings(cluster):
    cluster.start_orchestrator(extra_env={"ORCH_MAX_REQUEST_LINE": "100", "ORCH_MAX_HEADER_BYTES": "1000",
                                          "ORCH_MAX_HEADER_FIELDS": "5"})
    port = port_of(cluster.orchestrator)
    assert ask(port, b"GET /health_check?" + b"q" * 100 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 414")
    assert ask(port, b"GET /health_check HTTP/1.1\r\n" + fields(6) + b"\r\n").startswith(b"HTTP/1.1 431")
    assert ask(port, b"GET /health_check HTTP/1.1\r\n" + fields(2, 600) + b"\r\n").startswith(b"HTTP/1.1 431")
    assert requests.get(cluster.url + "/health_check", timeout=5).status_code == 200


def test_a_header_sent_a_byte_at_a_time_past_the_limit_is_refused(cluster):
    """A field that never ends, in small reads, is held by the parser until it ends: the raw count stops it."""
    cluster.start_orchestrator(extra_env={"ORCH_MAX_REQUEST_LINE": "100", "ORCH_MAX_HEADER_BYTES": "200"})
    s = socket.create_connection(("127.0.0.1", port_of(cluster.orchestrator)), timeout=10)
    s.sendall(b"GET /health_check HTTP/1.1\r\nX-Endless: ")
    answer = b""
    for _ in range(200):
        try:
            s.sendall(b"e" * 64)
        except OSError:
            break
        time.sleep(0.002)  # separate reads on the server's side
    answer = closed_by_peer(s, within_s=5)
    s.close()
    assert answer is not None and answer.startswith(b"HTTP/1.1 431"), answer


def test_2000_connections_of_1mb_headers_do_not_grow_the_orchestrator_or_delay_it(cluster):
    cluster.start_orchestrator()
    orch = cluster.orchestrator
    growth, latencies, flood = flood_and_measure(orch.proc.pid, port_of(orch), orch.url + "/health_check")
    assert flood["ended"] == 2000 and flood["open"] == 0, flood  # each one answered and closed
    print(f"RSS +{growth / MB:.1f} MB, {flood}, slowest normal request {max(latencies):.3f} s of {len(latencies)}")
    assert growth < 64 * MB, f"RSS grew by {growth / MB:.1f} MB"
    assert latencies and max(latencies) < 1.0, latencies


def test_the_worker_answers_414_and_431(cluster):
    worker, = cluster.start_workers(["w"], service_ms=0)
    port = port_of(worker)
    assert ask(port, b"GET /ready?" + b"q" * 8300 + b" HTTP/1.1\r\nHost: o\r\n\r\n").startswith(b"HTTP/1.1 414")
    assert ask(port, b"GET /ready HTTP/1.1\r\nHost: o\r\n" + fields(101) + b"\r\n").startswith(b"HTTP/1.1 431")
    assert ask(port, b"GET /ready HTTP/1.1\r\nHost: o\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n").startswith(
        b"HTTP/1.1 431")
    # 100 fields of 160 bytes, gunicorn's whole buffer for a head (gunicorn_conf.py), pass; a longer field is a 431.
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /ready HTTP/1.1\r\n" + fields(99, 150) + b"\r\n")
    assert read_answer(s).startswith(b"HTTP/1.1 200")
    s.close()
    with_long_field = b"GET /ready HTTP/1.1\r\nHost: o\r\nX-Long: " + b"b" * 200 + b"\r\n\r\n"
    assert ask(port, with_long_field).startswith(b"HTTP/1.1 431")


def test_2000_connections_of_1mb_headers_do_not_grow_the_worker_or_delay_it(cluster):
    worker, = cluster.start_workers(["w"], service_ms=0)
    pids = [int(p) for p in open(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children").read().split()]
    assert len(pids) == 1  # gunicorn's one worker process, which reads the requests
    growth, latencies, flood = flood_and_measure(pids[0], port_of(worker), worker.url + "/ready")
    print(f"RSS +{growth / MB:.1f} MB, {flood}, slowest normal request {max(latencies):.3f} s of {len(latencies)}")
    assert growth < 64 * MB, f"RSS grew by {growth / MB:.1f} MB"
    assert latencies and max(latencies) < 1.0, latencies
    assert flood["open"] == 0, flood
