"""Services on this machine: only the environment they need, and a restarted
service keeps its port although its old connections linger in TIME-WAIT.
Real sockets and a real local cluster started by the console script."""
from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import requests

from mlcluster.deploy.localhost import find_marked, marker, port_free
from support.console import cli, home_fixture, plain_bind_fails
from support.waiting import wait_for

SECRET = "wJalrXUtnFEMI-not-a-real-secret-K7MDENG"


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_port_free_ignores_time_wait_but_not_a_listener():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    assert not port_free(port)  # listening: in use
    accepted.close()            # the server side closes first: it keeps the TIME-WAIT socket
    client.recv(1)
    client.close()
    server.close()
    assert plain_bind_fails(port), "the test needs a TIME-WAIT socket on the port"
    assert port_free(port)


home = home_fixture("hard")


def test_services_get_no_credentials_and_a_restarted_one_keeps_its_port(home, tiny_model):
    caller = dict(os.environ, AWS_SECRET_ACCESS_KEY=SECRET, AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
                  AWS_SESSION_TOKEN="session-secret", MY_APP_PASSWORD="hunter2")
    up = ["up", "--name", "hard", "--workers", "1", "--containers-per-worker", "1", "--model", tiny_model]
    cli(*up, home=home, env=caller)
    state = json.loads((home / "hard" / "state.json").read_text())
    procs = state["resources"]["services"]
    for record in procs.values():
        env = environ_of(record["pid"])
        assert not {k for k in env if k.startswith("AWS_") or k == "MY_APP_PASSWORD"}, sorted(env)
        assert SECRET.encode() not in Path(f"/proc/{record['pid']}/environ").read_bytes()
        assert env["PATH"] and env["MLCLUSTER_MARKER"] == marker("hard")
    assert "ORCH_TOKEN" in environ_of(procs["orchestrator"]["pid"])
    assert "ORCH_TOKEN" not in environ_of(procs["worker1-1"]["pid"])

    # A client connection left open, then the orchestrator killed: its side
    # closes first, so the port is left with a TIME-WAIT (or FIN-WAIT) socket.
    orch = procs["orchestrator"]
    with requests.Session() as session:
        assert session.get(state["orchestrator_url"] + "/health_check", timeout=10).ok
        os.killpg(orch["pid"], signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{orch['pid']}").exists(), "the killed orchestrator gone", timeout=10,
                 interval=0.1)
    assert plain_bind_fails(orch["port"]), "the test needs a lingering socket on the orchestrator's port"

    cli(*up, home=home, env=caller)
    again = json.loads((home / "hard" / "state.json").read_text())["resources"]["services"]
    assert again["orchestrator"]["pid"] != orch["pid"]
    assert again["orchestrator"]["port"] == orch["port"]
    answer = requests.post(state["orchestrator_url"] + "/new_request", json={"text": "hello"}, timeout=30)
    assert answer.ok and answer.json()["container"]["id"] == "worker1-1"
    cli("down", "--name", "hard", "--yes", home=home)
    assert find_marked(marker("hard")) == []
