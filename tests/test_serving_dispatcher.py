"""The dispatcher (raw asyncio connections, upstream.py) against small real HTTP servers on loopback
that misbehave on purpose (answer 500, garbage, nothing, too late, 4xx), which
real workers cannot be made to do on demand."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlcluster_orchestrator.dispatcher import MAX_5XX_IN_A_ROW, Dispatcher
from mlcluster_orchestrator.scheduler import Scheduler
from support.services import free_port
from support.signing import sign


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        server = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server.requests += 1
        server.last_client_port = self.client_address[1]
        server.authorization.append(self.headers.get("Authorization"))
        server.signatures.append((self.headers.get("X-Mlcluster-Signature"), body))
        mode = server.mode
        if mode == "close":  # drop the connection without an answer
            self.close_connection = True
            return
        if mode == "hang":
            time.sleep(server.hang_s)
        status, data = {"ok": (200, json.dumps({"echo": body.decode(), "port": server.server_port})),
                        "hang": (200, "{}"), "500": (500, "boom"), "garbage": (200, "<html>not json"),
                        "400": (400, json.dumps({"error": "bad text", "status": 400})),
                        "422-text": (422, "not json"), "401": (401, json.dumps({"error": "no token"})),
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
        server.mode, server.hang_s, server.requests, server.authorization = mode, hang_s, 0, []
        server.signatures = []
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def make_dispatcher(ports: dict[str, int], forward_timeout_s: float = 5.0, max_attempts: int = 3,
                    worker_token: str = ""):
    """Containers registered in id order; ties in the policy go to the smallest id."""
    scheduler = Scheduler(queue_limit=10)
    for cid, port in ports.items():
        scheduler.add("127.0.0.1", port, id=cid)
    events: list[tuple[str, dict]] = []
    dispatcher = Dispatcher(scheduler, queue_timeout_s=2.0, forward_timeout_s=forward_timeout_s,
                            max_attempts=max_attempts, worker_token=worker_token,
                            on_event=lambda kind, data: events.append((kind, data)))
    return dispatcher, scheduler, events


def handle(dispatcher: Dispatcher, *bodies: bytes):
    """Each body through the dispatcher in turn, on a fresh event loop (its own session)."""
    async def run():
        async with dispatcher:
            return [await dispatcher.handle(body) for body in bodies]
    outcomes = asyncio.run(run())
    return outcomes[0] if len(outcomes) == 1 else outcomes


@pytest.mark.parametrize("mode,kind", [("garbage", "bad_answer"), ("close", "disconnected"),
                                       ("hang", "timeout"), ("refused", "refused")])
def test_a_failing_container_is_marked_down_and_the_request_goes_elsewhere(servers, mode, kind):
    good = servers("ok")
    bad_port = free_port() if mode == "refused" else servers(mode, hang_s=1.0).server_port
    dispatcher, scheduler, events = make_dispatcher({"a-bad": bad_port, "b-good": good.server_port},
                                                    forward_timeout_s=0.2)
    outcome = handle(dispatcher, b'{"text": "hi"}')
    assert outcome.status == 200, outcome.body
    assert outcome.body["result"] == {"echo": '{"text": "hi"}', "port": good.server_port}
    assert outcome.body["container"]["id"] == "b-good" and outcome.body["attempts"] == 2
    bad = scheduler.get("a-bad")
    assert bad.status == "down" and bad.failed == 1 and bad.in_flight == 0
    assert ("failed", {"container": "a-bad", "kind": kind}) in events
    assert scheduler.get("b-good").served == 1 and scheduler.get("b-good").in_flight == 0


def test_a_5xx_is_retried_elsewhere_and_marks_down_only_when_consecutive(servers):
    bad, good = servers("500"), servers("ok")
    dispatcher, scheduler, events = make_dispatcher({"a-bad": bad.server_port, "b-good": good.server_port})
    first = handle(dispatcher, b'{"text": "one"}')
    assert first.status == 200 and first.body["container"]["id"] == "b-good" and first.body["attempts"] == 2
    assert scheduler.get("a-bad").status == "free" and scheduler.get("a-bad").failed == 1  # one 5xx: still in rotation
    assert ("failed", {"container": "a-bad", "kind": "http_5xx"}) in events
    outcomes = handle(dispatcher, *[b'{"text": "more"}'] * (MAX_5XX_IN_A_ROW - 1))
    assert all(o.status == 200 for o in outcomes)
    assert scheduler.get("a-bad").status == "down" and bad.requests == MAX_5XX_IN_A_ROW


def test_a_success_resets_the_count_of_5xx_in_a_row(servers):
    flaky = servers("500")
    dispatcher, scheduler, _ = make_dispatcher({"a-flaky": flaky.server_port}, max_attempts=1)

    async def run():
        async with dispatcher:
            for _ in range(MAX_5XX_IN_A_ROW - 1):
                assert (await dispatcher.handle(b"{}")).status == 502
            flaky.mode = "ok"
            assert (await dispatcher.handle(b"{}")).status == 200
            flaky.mode = "500"
            for _ in range(MAX_5XX_IN_A_ROW - 1):
                assert (await dispatcher.handle(b"{}")).status == 502
    asyncio.run(run())
    assert scheduler.get("a-flaky").status == "free" and flaky.requests == 2 * MAX_5XX_IN_A_ROW - 1


def test_when_every_attempt_fails_the_caller_gets_502_and_nothing_stays_reserved(servers):
    ports = {f"c{i}": servers("500").server_port for i in range(4)}
    dispatcher, scheduler, _ = make_dispatcher(ports, max_attempts=3)
    outcome = handle(dispatcher, b"{}")
    assert outcome.status == 502 and "3 container(s) failed" in outcome.body["error"]
    assert sorted(c.failed for c in scheduler.containers()) == [0, 1, 1, 1]
    assert all(c.in_flight == 0 for c in scheduler.containers())


def test_when_all_are_down_a_request_that_failed_once_gets_502_not_504(servers):
    dispatcher, scheduler, _ = make_dispatcher({"only": servers("close").server_port})
    dispatcher.queue_timeout_s = 0.1
    outcome = handle(dispatcher, b"{}")
    assert outcome.status == 502 and "1 container(s) failed" in outcome.body["error"]


@pytest.mark.parametrize("mode,status,body", [("400", 400, {"error": "bad text", "status": 400}),
                                              ("422-text", 422, {"error": "not json", "status": 422})])
def test_a_4xx_from_the_worker_is_passed_on_without_blame_or_retry(servers, mode, status, body):
    bad_input, other = servers(mode), servers("ok")
    dispatcher, scheduler, events = make_dispatcher({"a": bad_input.server_port, "b": other.server_port})
    outcome = handle(dispatcher, b'{"text": "x"}')
    assert outcome.status == status and outcome.body == body
    assert scheduler.get("a").status == "free" and scheduler.get("a").in_flight == 0
    assert other.requests == 0  # not retried elsewhere
    assert not [e for e in events if e[0] == "failed"]


def test_a_worker_refusing_our_signature_is_marked_down_and_the_request_goes_elsewhere(servers):
    refusing, other = servers("401"), servers("ok")
    dispatcher, scheduler, events = make_dispatcher({"a": refusing.server_port, "b": other.server_port})
    outcome = handle(dispatcher, b'{"text": "x"}')
    assert outcome.status == 200 and outcome.body["container"]["id"] == "b" and outcome.body["attempts"] == 2
    assert scheduler.get("a").status == "down" and scheduler.get("a").in_flight == 0
    assert ("failed", {"container": "a", "kind": "unauthorized"}) in events

    async def probe():  # its /ready is open, but the health check keeps it out for a while
        async with dispatcher:
            return await dispatcher.probe_ready(scheduler.get("a"), 2.0)
    healthy, why = asyncio.run(probe())
    assert not healthy and "signature" in why


def test_every_request_is_signed_anew_and_the_token_never_sent(servers):
    server = servers("ok")
    handle(make_dispatcher({"w": server.server_port}, worker_token="s3cret")[0], b'{"text": "a"}', b'{"text": "a"}')
    handle(make_dispatcher({"w": server.server_port})[0], b"{}")
    assert server.authorization == [None, None, None]
    (first, body), (second, _), (unsigned, _) = server.signatures
    assert first != second and unsigned is None
    t, nonce = first.split(",")[0][2:], first.split(",")[1][2:]
    assert first == sign("s3cret", body, int(t), nonce)["X-Mlcluster-Signature"]  # the documented format


def test_connections_are_reused_and_one_the_worker_closed_is_replaced(servers):
    server = servers("ok")
    dispatcher, scheduler, events = make_dispatcher({"w": server.server_port})

    async def run():
        async with dispatcher:
            ports = []
            for mode in ["ok", "ok", "ok-then-drop", "ok"]:
                server.mode = mode
                outcome = await dispatcher.handle(b'{"n": 1}')
                assert outcome.status == 200
                ports.append(server.last_client_port)
                await asyncio.sleep(0.05)  # the worker's close reaches the client
            return ports
    ports = asyncio.run(run())
    assert ports[0] == ports[1] == ports[2] != ports[3]  # kept alive, then a new connection after the close
    assert not events or all(kind == "served" for kind, _ in events)
    assert scheduler.get("w").status == "free" and server.requests == 4
