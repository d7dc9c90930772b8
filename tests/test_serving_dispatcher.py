"""The dispatcher and its connection pool against small real HTTP servers on
loopback that misbehave on purpose (answer 500, garbage, nothing, too late),
which real workers cannot be made to do on demand."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from support.services import free_port
from mlcluster_orchestrator.connections import ConnectionPool, ForwardError
from mlcluster_orchestrator.dispatcher import Dispatcher
from mlcluster_orchestrator.scheduler import Scheduler


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        server = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server.requests += 1
        mode = server.mode
        if mode == "close":  # drop the connection without an answer
            self.close_connection = True
            return
        if mode == "hang":
            time.sleep(server.hang_s)
        status, data = {"ok": (200, json.dumps({"echo": body.decode(), "port": server.server_port})),
                        "hang": (200, "{}"), "500": (500, "boom"), "garbage": (200, "<html>not json"),
                        "400": (400, json.dumps({"error": "bad text", "status": 400})),
                        "ok-then-drop": (200, "{}")}[mode]
        payload = data.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        if mode == "ok-then-drop":  # close while the client believes the connection is kept alive
            self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up on a hanging answer closed the socket: expected here


@pytest.fixture
def servers():
    started: list[Server] = []

    def start(mode: str, hang_s: float = 2.0) -> Server:
        server = Server(("127.0.0.1", 0), Handler)
        server.mode, server.hang_s, server.requests = mode, hang_s, 0
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def make_dispatcher(ports: dict[str, int], forward_timeout_s: float = 5.0, max_attempts: int = 3):
    """Containers registered in id order; ties in the policy go to the smallest id."""
    scheduler = Scheduler(queue_limit=10)
    for cid, port in ports.items():
        scheduler.add("127.0.0.1", port, id=cid)
    events: list[tuple[str, dict]] = []
    dispatcher = Dispatcher(scheduler, queue_timeout_s=2.0, forward_timeout_s=forward_timeout_s,
                            max_attempts=max_attempts, on_event=lambda kind, data: events.append((kind, data)))
    return dispatcher, scheduler, events


@pytest.mark.parametrize("mode,kind", [("500", "http_5xx"), ("garbage", "bad_answer"), ("close", "disconnected"),
                                       ("hang", "timeout"), ("refused", "refused")])
def test_a_failing_container_is_marked_down_and_the_request_goes_elsewhere(servers, mode, kind):
    good = servers("ok")
    bad_port = free_port() if mode == "refused" else servers(mode, hang_s=1.0).server_port
    dispatcher, scheduler, events = make_dispatcher({"a-bad": bad_port, "b-good": good.server_port},
                                                    forward_timeout_s=0.2)
    outcome = dispatcher.handle(b'{"text": "hi"}')
    assert outcome.status == 200, outcome.body
    assert outcome.body["result"] == {"echo": '{"text": "hi"}', "port": good.server_port}
    assert outcome.body["container"]["id"] == "b-good" and outcome.body["attempts"] == 2
    bad = scheduler.get("a-bad")
    assert bad.status == "down" and bad.failed == 1 and bad.in_flight == 0
    assert ("failed", {"container": "a-bad", "kind": kind}) in events
    assert scheduler.get("b-good").served == 1 and scheduler.get("b-good").in_flight == 0


def test_when_every_attempt_fails_the_caller_gets_502_and_nothing_stays_reserved(servers):
    ports = {f"c{i}": servers("500").server_port for i in range(4)}
    dispatcher, scheduler, _ = make_dispatcher(ports, max_attempts=3)
    outcome = dispatcher.handle(b"{}")
    assert outcome.status == 502 and "3 container(s) failed" in outcome.body["error"]
    assert sorted(c.failed for c in scheduler.containers()) == [0, 1, 1, 1]
    assert all(c.in_flight == 0 for c in scheduler.containers())


def test_when_all_are_down_a_request_that_failed_once_gets_502_not_504(servers):
    dispatcher, scheduler, _ = make_dispatcher({"only": servers("500").server_port})
    dispatcher.queue_timeout_s = 0.1
    outcome = dispatcher.handle(b"{}")
    assert outcome.status == 502 and "1 container(s) failed" in outcome.body["error"]


def test_a_4xx_from_the_worker_is_passed_on_without_blame(servers):
    dispatcher, scheduler, events = make_dispatcher({"w": servers("400").server_port})
    outcome = dispatcher.handle(b'{"text": "x"}')
    assert outcome.status == 400 and outcome.body == {"error": "bad text", "status": 400}
    assert scheduler.get("w").status == "free" and scheduler.get("w").in_flight == 0
    assert not [e for e in events if e[0] == "failed"]


def test_the_pool_reuses_a_connection_and_replaces_one_the_worker_closed(servers):
    server = servers("ok")
    pool = ConnectionPool(connect_timeout_s=1, read_timeout_s=1)
    address = ("127.0.0.1", server.server_port)
    pool.post(*address, "/run_model", b"{}")
    (_, first), = pool._idle[address]
    pool.post(*address, "/run_model", b"{}")
    (_, second), = pool._idle[address]
    assert second is first  # kept alive and reused

    server.mode = "ok-then-drop"
    pool.post(*address, "/run_model", b"{}")  # the server closes this connection afterwards
    time.sleep(0.05)
    server.mode = "ok"
    status, data = pool.post(*address, "/run_model", b'{"after": 1}')  # must not fail on the dead one
    assert status == 200 and json.loads(data)["echo"] == '{"after": 1}'
    (_, third), = pool._idle[address]
    assert third is not first
    assert server.requests == 4


def test_the_pool_sorts_failures_into_kinds(servers):
    pool = ConnectionPool(connect_timeout_s=1, read_timeout_s=0.2)
    with pytest.raises(ForwardError) as refused:
        pool.post("127.0.0.1", free_port(), "/run_model", b"{}")
    assert refused.value.kind == "refused"
    with pytest.raises(ForwardError) as slow:
        pool.post("127.0.0.1", servers("hang", hang_s=1.0).server_port, "/run_model", b"{}")
    assert slow.value.kind == "timeout"
    with pytest.raises(ForwardError) as dropped:
        pool.post("127.0.0.1", servers("close").server_port, "/run_model", b"{}")
    assert dropped.value.kind == "disconnected"
