"""The orchestrator's own HTTP/1.1 listener (fastserver.py, httptools on raw
asyncio protocols) on real sockets: pipelined requests answered in order,
HTTP/1.0 keep-alive and close, bad HTTP, the body time-out, and a listener
without the admin routes."""
from __future__ import annotations

import asyncio
import socket
import threading

import pytest
import requests

from mlcluster_orchestrator.fastserver import serve
from mlcluster_orchestrator.routes import Orchestrator, Routes
from support.services import free_port
from support.serving import AUTH, TOKEN, Cluster, port_of
from support.waiting import wait_for
from test_slow_clients import closed_by_peer, read_answer


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("fastserver"))
    try:
        c.start_workers(["w1", "w2"], service_ms=0)
        c.start_orchestrator(extra_env={"ORCH_BODY_TIMEOUT_S": "0.5"})
        c.register()
        yield c
    finally:
        c.stop()


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST %b HTTP/1.1\r\nHost: o\r\nContent-Type: application/json\r\n%bContent-Length: %d\r\n\r\n%b"
            % (path.encode(), extra, len(body), body))


def read_answers(s: socket.socket, n: int) -> list[bytes]:
    """`n` whole answers from one connection (several may come in one read)."""
    data, answers = b"", []
    while len(answers) < n:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].lower()
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(data) >= head_end + 4 + length:
                answers.append(data[:head_end + 4 + length])
                data = data[head_end + 4 + length:]
                continue
        chunk = s.recv(65536)
        assert chunk, f"closed after {len(answers)} answers"
        data += chunk
    return answers


def test_pipelined_requests_are_answered_in_order(cluster):
    s = socket.create_connection(("127.0.0.1", port_of(cluster.orchestrator)), timeout=10)
    texts = [f"pipelined {i}" for i in range(6)]
    # Slow (forwarded) and instant (local) routes interleaved on one connection, sent at once.
    wire = b""
    for text in texts:
        wire += post("/new_request", b'{"text": "%b"}' % text.encode())
        wire += b"GET /health_check HTTP/1.1\r\nHost: o\r\n\r\n"
    s.sendall(wire)
    answers = read_answers(s, 2 * len(texts))
    s.close()
    for i, text in enumerate(texts):
        assert answers[2 * i].startswith(b"HTTP/1.1 200") and text.encode() in answers[2 * i]
        assert answers[2 * i + 1].endswith(b'{"status": "alive"}')


def test_answers_held_to_the_end_of_a_pass_keep_their_order_and_come_before_the_close(cluster):
    """Answers are written at the end of the event loop's pass (outbox.py): instant answers made in
    one pass, a forwarded one made later, then a 400 for bad HTTP and the close, in that order."""
    s = socket.create_connection(("127.0.0.1", port_of(cluster.orchestrator)), timeout=10)
    health = b"GET /health_check HTTP/1.1\r\nHost: o\r\n\r\n"
    s.sendall(health * 3 + post("/new_request", b'{"text": "before the close"}') + health + b"NOT HTTP\r\n\r\n")
    data = closed_by_peer(s, within_s=5)
    assert data is not None, "the connection stayed open after bad HTTP"
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"200", b"200", b"200", b"200", b"400"]
    assert b"before the close" in answers[3] and all(answers[i].endswith(b'{"status": "alive"}') for i in (0, 1, 2, 4))


def test_http_1_0_keep_alive_and_close(cluster):
    s = socket.create_connection(("127.0.0.1", port_of(cluster.orchestrator)), timeout=10)
    s.sendall(b"GET /health_check HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    answer = read_answer(s)
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: keep-alive" in answer
    s.sendall(b"GET /health_check HTTP/1.0\r\n\r\n")  # no keep-alive: answered, then closed
    answer = closed_by_peer(s, within_s=5)
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer


def test_bad_http_is_a_400_and_a_close(cluster):
    s = socket.create_connection(("127.0.0.1", port_of(cluster.orchestrator)), timeout=10)
    s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    answer = closed_by_peer(s, within_s=5)
    assert answer.startswith(b"HTTP/1.1 400") and b'"status": 400' in answer


def test_a_body_that_stops_coming_is_a_408(cluster):
    s = socket.create_connection(("127.0.0.1", port_of(cluster.orchestrator)), timeout=10)
    s.sendall(post("/new_request", b'{"text": "the whole body"}')[:-5])
    answer = closed_by_peer(s, within_s=5)
    assert answer.startswith(b"HTTP/1.1 408") and b"body did not arrive" in answer
    assert 'orchestrator_requests_total{status="408"}' in requests.get(cluster.url + "/metrics", timeout=5).text


def test_a_listener_without_admin_routes_answers_them_404(cluster, monkeypatch):
    """A second listener in this process, as an admin-less public port would be."""
    monkeypatch.setenv("ORCH_TOKEN", TOKEN)
    port, ready, held = free_port(), threading.Event(), {}

    def run() -> None:
        async def main() -> None:
            stop = asyncio.Event()
            held.update(loop=asyncio.get_running_loop(), stop=stop)
            state = Orchestrator({"ORCH_HEALTH_INTERVAL_S": 0.0})
            ready.set()
            await serve(Routes(state, admin=False), f"127.0.0.1:{port}", header_timeout_s=5, body_timeout_s=5,
                        idle_timeout_s=5, max_connections=100, stop=stop)
        asyncio.run(main())
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(url + "/health_check", timeout=5).status_code == 200,
                 "the server answering", timeout=10, interval=0.05)
        assert requests.post(url + "/workers", json={"host": "127.0.0.1", "port": 9}, headers=AUTH,
                             timeout=5).status_code == 404
        assert requests.delete(url + "/workers/w1", headers=AUTH, timeout=5).status_code == 404
        assert requests.get(url + "/status", timeout=5).json()["containers"] == []
        # the orchestrator's own listener still serves them
        assert requests.delete(cluster.url + "/workers/nope", headers=AUTH, timeout=5).status_code == 404
        r = requests.post(cluster.url + "/workers", json={"host": "127.0.0.1", "port": 9}, timeout=5)
        assert r.status_code == 401
    finally:
        held["loop"].call_soon_threadsafe(held["stop"].set)
        thread.join(5)


def test_expect_100_continue_is_answered_before_the_body(cluster):
    s = socket.create_connection(("127.0.0.1", port_of(cluster.orchestrator)), timeout=10)
    body = b'{"text": "after continue"}'
    s.sendall(b"POST /new_request HTTP/1.1\r\nHost: o\r\nContent-Type: application/json\r\n"
              b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
    assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.sendall(body)
    answer = read_answer(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 200") and b"after continue" in answer
