"""Slow, idle and too many clients against the real orchestrator process:
thousands of half-sent and idle connections must not delay a normal request;
the header and idle time-outs close what they should; past the connection cap
new connections are refused cleanly while queued requests are still answered;
the open-files soft limit is raised to the hard limit."""
from __future__ import annotations

import socket
import time

import requests

from support.serving import Background, port_of
from support.waiting import wait_for

HALF_HEADER = b"POST /new_request HTTP/1.1\r\nHost: orchestrator\r\nContent-Type: appl"
FULL_REQUEST = b"POST /new_request HTTP/1.1\r\nHost: o\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def open_connections(port: int, n: int, first_bytes: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if first_bytes:
            s.sendall(first_bytes)
        socks.append(s)
    return socks


def read_answer(s: socket.socket) -> bytes:
    """Read one whole answer (or up to the peer's close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def closed_by_peer(s: socket.socket, within_s: float) -> bytes | None:
    """What the peer sent before closing, or None if it kept the connection open."""
    s.settimeout(within_s)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    except socket.timeout:
        return None
    except ConnectionResetError:
        return data


def test_thousands_of_half_sent_and_idle_connections_do_not_delay_a_normal_request(cluster):
    cluster.start_workers(["w1", "w2"], service_ms=0)
    cluster.start_orchestrator()
    cluster.register()
    port = port_of(cluster.orchestrator)
    held = []
    try:
        held += open_connections(port, 2000, HALF_HEADER)
        idle = open_connections(port, 1000)
        held += idle
        for start in range(0, 500, 50):  # half of the idle ones kept alive after a request of their own
            batch = idle[start:start + 50]  # (50 at once: within the queue limit)
            for s in batch:
                s.sendall(FULL_REQUEST)
            for s in batch:
                assert read_answer(s).startswith(b"HTTP/1.1 200")
        for i in range(5):
            r = requests.post(cluster.url + "/new_request", json={"text": f"normal {i}"}, timeout=1.0)
            assert r.status_code == 200 and r.json()["result"]["text"] == f"normal {i}"
        assert requests.get(cluster.url + "/status", timeout=1.0).status_code == 200
    finally:
        for s in held:
            s.close()


def test_the_header_time_out_answers_408_and_closes(cluster):
    cluster.start_orchestrator(extra_env={"ORCH_HEADER_TIMEOUT_S": "0.5", "ORCH_IDLE_TIMEOUT_S": "30"})
    port = port_of(cluster.orchestrator)
    trickling, = open_connections(port, 1, HALF_HEADER)
    started = time.monotonic()
    for byte in b"ication/json\r\n":  # a byte every 0.1 s does not extend the time-out
        trickling.sendall(bytes([byte]))
        time.sleep(0.1)
        if time.monotonic() - started > 0.6:
            break
    answer = closed_by_peer(trickling, within_s=5)
    assert answer is not None and answer.startswith(b"HTTP/1.1 408"), answer
    # A kept-alive connection's next request gets the same limit from its first byte.
    kept, = open_connections(port, 1, b"GET /health_check HTTP/1.1\r\nHost: o\r\n\r\n")
    assert read_answer(kept).startswith(b"HTTP/1.1 200")
    kept.sendall(b"GET /health_check HTTP/1.1\r\n")
    answer = closed_by_peer(kept, within_s=5)
    assert answer is not None and answer.startswith(b"HTTP/1.1 408"), answer


def test_an_idle_kept_alive_connection_is_closed_after_the_idle_time_out(cluster):
    cluster.start_orchestrator(extra_env={"ORCH_IDLE_TIMEOUT_S": "0.5"})
    port = port_of(cluster.orchestrator)
    kept, silent = open_connections(port, 1, b"GET /health_check HTTP/1.1\r\nHost: o\r\n\r\n") + \
        open_connections(port, 1)
    assert read_answer(kept).startswith(b"HTTP/1.1 200")
    assert closed_by_peer(kept, within_s=5) == b""
    assert closed_by_peer(silent, within_s=5) is not None


def test_past_the_connection_cap_new_connections_are_refused_and_queued_requests_still_answered(cluster):
    cluster.start_workers(["slow"], service_ms=1000)
    cluster.start_orchestrator(extra_env={"ORCH_MAX_CONNECTIONS": "20"})
    cluster.register()
    port = port_of(cluster.orchestrator)
    bg = Background(3)
    held = []
    try:
        queued = [bg.submit(cluster.new_request, {"text": f"queued {i}"}) for i in range(3)]
        wait_for(lambda: cluster.arrived() == 3, "three requests in flight or queued")
        held = open_connections(port, 40)  # with the 3 above and the status poll, past the cap
        answers = [closed_by_peer(s, within_s=0.2) for s in held]
        refused = [a for a in answers if a is not None]
        assert len(refused) >= 20 and all(a.startswith(b"HTTP/1.1 503") for a in refused)
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        answer = closed_by_peer(s, within_s=5)
        s.close()
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer and b"too many open" in answer
        assert [f.result(timeout=30).json()["result"]["text"] for f in queued] == [f"queued {i}" for i in range(3)]
    finally:
        bg.close()
        for s in held:
            s.close()
    # Once connections close, new ones are served again.
    wait_for(lambda: requests.get(cluster.url + "/health_check", timeout=2).status_code == 200, "room again")


def test_the_open_files_soft_limit_is_raised_to_the_hard_limit(cluster, tmp_path):
    from mlcluster import services
    from support.services import Service, free_port
    port = free_port()
    env = services.orchestrator_env(port=port, token="t")
    orch = Service(["prlimit", "--nofile=512:4096", "--", *services.orchestrator_command()], env,
                   f"http://127.0.0.1:{port}", tmp_path / "orch.log")
    cluster.services.append(orch)
    orch.wait()
    limits = open(f"/proc/{orch.proc.pid}/limits").read()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert line.split()[3:5] == ["4096", "4096"], line
