"""The worker credential never crosses the network: the orchestrator signs
each /run_model with it (HMAC over a timestamp, a nonce and the body), and a
worker with WORKER_TOKEN serves only requests signed so, once each. Real
overhead-test workers and a real orchestrator on loopback."""
from __future__ import annotations

import json
import socket
import threading
import time

import requests

from support.serving import AUTH, port_of
from support.signing import HEADER, sign
from support.waiting import holds, wait_for

TOKEN = "worker-credential-1f0c9a"
OTHER = "another-credential-77b2e4"


def post(worker, body: bytes, headers: dict) -> requests.Response:
    return requests.post(worker.url + "/run_model", data=body,
                         headers={"Content-Type": "application/json", **headers}, timeout=10)


def refused(r: requests.Response) -> str:
    assert r.status_code == 401, r.text
    assert r.json()["status"] == 401 and r.json()["error"]
    return r.json()["error"]


def test_a_worker_serves_signed_requests_once_each_and_nothing_else(cluster):
    [w] = cluster.start_workers(["w"], service_ms=0, token=TOKEN)
    body = json.dumps({"text": "signed"}).encode()
    assert post(w, body, sign(TOKEN, body)).json()["text"] == "signed"

    assert "no X-Mlcluster-Signature" in refused(post(w, body, {}))
    assert "another worker credential" in refused(post(w, body, sign(OTHER, body)))
    assert "another worker credential" in refused(post(w, b'{"text": "tampered"}', sign(TOKEN, body)))
    assert "malformed" in refused(post(w, body, {HEADER: "t=1,n=zz,s=00"}))
    assert "no X-Mlcluster" in refused(post(w, body, {"Authorization": f"Bearer {TOKEN}"}))  # the old way is gone
    assert "clock" in refused(post(w, body, sign(TOKEN, body, t=int(time.time()) - 400)))
    assert "clock" in refused(post(w, body, sign(TOKEN, body, t=int(time.time()) + 400)))
    assert post(w, body, sign(TOKEN, body, t=int(time.time()) - 200)).status_code == 200  # within 300 s

    # A captured request, sent again byte for byte on a fresh connection.
    captured = f"POST /run_model HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
               f"{HEADER}: {sign(TOKEN, body)[HEADER]}\r\nContent-Length: {len(body)}\r\n" \
               f"Connection: close\r\n\r\n".encode() + body
    first, again = raw_exchange(port_of(w), captured), raw_exchange(port_of(w), captured)
    assert first.startswith(b"HTTP/1.1 200"), first
    assert again.startswith(b"HTTP/1.1 401") and b"replay" in again, again

    assert requests.get(w.url + "/ready", timeout=10).status_code == 200  # the probes stay open
    assert requests.get(w.url + "/health_check", timeout=10).status_code == 200
    assert requests.get(w.url + "/stats", timeout=10).json()["served"] == 3
    assert TOKEN not in w.log()


def test_a_worker_without_a_token_serves_unsigned_requests_as_before(cluster):
    [w] = cluster.start_workers(["w"], service_ms=0)
    assert post(w, b'{"text": "open"}', {}).status_code == 200


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class Relay:
    """A loopback TCP relay to `port` that records every byte sent through it towards the worker."""

    def __init__(self, port: int):
        self.target, self.sent = port, bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_through_the_orchestrator_requests_are_signed_and_the_token_never_sent(cluster):
    [w] = cluster.start_workers(["w"], service_ms=0, token=TOKEN)
    cluster.start_orchestrator(worker_token=TOKEN)
    relay = Relay(port_of(w))
    try:
        r = cluster.http.post(cluster.url + "/workers", headers=AUTH, timeout=10,
                              json={"containers": [{"id": "w", "host": "127.0.0.1", "port": relay.port}]})
        assert r.status_code == 201, r.text
        wait_for(lambda: cluster.container("w")["status"] == "free", "the relayed container to be free")
        for i in range(5):
            answer = cluster.new_request({"text": f"through the relay {i}"})
            assert answer.status_code == 200 and answer.json()["result"]["text"] == f"through the relay {i}"
    finally:
        relay.close()
    sent = bytes(relay.sent)
    assert sent.count(b"POST /run_model") == 5 and sent.count(f"{HEADER}: t=".encode()) == 5
    assert b"through the relay 4" in sent  # the capture sees the requests' texts (plain HTTP)
    assert TOKEN.encode() not in sent and b"Authorization" not in sent
    assert TOKEN not in cluster.orchestrator.log() and TOKEN not in w.log()


def test_a_worker_with_another_credential_is_marked_down_and_nothing_is_lost(cluster):
    """Containers tie-break by id: "a" (the wrong credential) is offered every request first."""
    cluster.start_workers(["a"], service_ms=0, token=OTHER)
    cluster.start_workers(["b"], service_ms=0, token=TOKEN)
    cluster.start_orchestrator(worker_token=TOKEN)
    cluster.register(["a", "b"], wait=False)
    wait_for(lambda: {c["id"]: c["status"] for c in cluster.status()["containers"]} == {"a": "free", "b": "free"},
             "both containers to be free")
    answers = [cluster.new_request({"text": f"t{i}"}) for i in range(6)]
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    assert {a.json()["container"]["id"] for a in answers} == {"b"}
    assert answers[0].json()["attempts"] == 2  # refused by "a", then served by "b"
    # several health checks (every 0.25 s): "a"'s open /ready does not bring it back
    holds(lambda: cluster.container("a")["status"] == "down", "container a down", 1.0)
    assert cluster.container("a")["status"] == "down" and cluster.container("a")["failed"] == 1
    assert requests.get(cluster.workers["a"].url + "/stats", timeout=10).json()["served"] == 0
    log = cluster.orchestrator.log()
    assert "container a (http://127.0.0.1:" in log and "refused our signature: clock skew or wrong credential" in log
    assert TOKEN not in log and OTHER not in log


def test_the_nonce_memory_is_bounded_and_a_forgotten_nonce_still_cannot_be_replayed():
    """The Verifier on its own (its clock given), past its `max_nonces`."""
    from mlcluster_worker.auth import Verifier

    now = [1_000_000.0]
    verifier = Verifier(TOKEN, window_s=300, max_nonces=3, clock=lambda: now[0])
    signed = [(sign(TOKEN, b"{}", t=int(now[0]) + i)[HEADER]) for i in range(4)]
    assert [verifier.check(h, b"{}") for h in signed] == [None] * 4  # the 4th made room: the 1st forgotten
    assert len(verifier._seen) == 3
    assert "replay" in verifier.check(signed[0], b"{}")  # forgotten, yet refused: signed at or before the floor
    assert "replay" in verifier.check(signed[3], b"{}")  # remembered
    now[0] += 304  # every nonce's timestamp has left the window: forgotten for age, and refused by the clock
    assert "clock" in verifier.check(signed[3], b"{}")
    assert verifier.check(sign(TOKEN, b"{}", t=int(now[0]))[HEADER], b"{}") is None
    assert len(verifier._seen) == 1
