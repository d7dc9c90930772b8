"""The admin endpoints only on a loopback listener (ORCH_ADMIN_BIND): the
public listener answers them 404 JSON, the admin one serves them with the
token; a local cluster registers its containers through it; it is bound to
127.0.0.1 only. Real orchestrator processes and a real local cluster."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import requests

from mlcluster.deploy.localhost import find_marked, marker, terminate
from support.console import cli, home_fixture
from support.services import free_port, start_orchestrator

TOKEN = "admin-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = {"containers": [{"id": "probe-1", "host": "127.0.0.1", "port": 9, "capacity": 1}]}


def admin_requests(url: str, headers: dict) -> list[requests.Response]:
    return [requests.post(f"{url}/workers", json=BODY, headers=headers, timeout=5),
            requests.delete(f"{url}/workers/probe-1", headers=headers, timeout=5),
            requests.get(f"{url}/workers", headers=headers, timeout=5),
            requests.put(f"{url}/workers/probe-1/x", headers=headers, timeout=5)]


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (IPv4 and IPv6), from /proc."""
    found = set()
    for table, size in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                found.add(socket.inet_ntop(socket.AF_INET if size == 8 else socket.AF_INET6,
                                           b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))))
    return found


def global_address() -> str:
    """An IPv4 address of this machine that is not loopback (docker0 at least, where dockerd runs)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    addresses = [line.split()[3].split("/")[0] for line in out.splitlines()]
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address to connect to")
    return addresses[0]


def refused(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=3).close()
        return False
    except ConnectionRefusedError:
        return True


@pytest.fixture
def orchestrator(tmp_path):
    admin_port = free_port()
    service = start_orchestrator(tmp_path, token=TOKEN, admin_bind=f"127.0.0.1:{admin_port}").wait()
    yield service, f"http://127.0.0.1:{admin_port}"
    service.stop()


def test_public_listener_refuses_admin_paths_and_the_admin_listener_serves_them(orchestrator):
    service, admin = orchestrator
    for response in admin_requests(service.url, AUTH):  # even with the right token
        assert response.status_code == 404 and response.json()["status"] == 404, response.text
    assert requests.post(f"{admin}/workers", json=BODY, timeout=5).status_code == 401  # the token still counts
    added = requests.post(f"{admin}/workers", json=BODY, headers=AUTH, timeout=5)
    assert added.status_code == 201 and added.json()["registered"][0]["id"] == "probe-1"
    # The read-only endpoints answer on both, from the same registry.
    for url in (service.url, admin):
        assert [c["id"] for c in requests.get(f"{url}/status", timeout=5).json()["containers"]] == ["probe-1"]
    assert requests.delete(f"{admin}/workers/probe-1", headers=AUTH, timeout=5).status_code == 200
    assert requests.post(f"{admin}/new_request", json={"text": "x"}, timeout=5).status_code == 404  # not the lab's
    # The lab's contract stays on the public port, with its token.
    assert requests.post(f"{service.url}/receive_ips_from_workers", json=["10.9.9.9"], timeout=5).status_code == 401
    lab = requests.post(f"{service.url}/receive_ips_from_workers", json=["10.9.9.9"], headers=AUTH, timeout=5)
    assert lab.status_code == 201 and len(lab.json()["registered"]) == 2


def test_without_an_admin_listener_the_public_one_serves_them(tmp_path):
    service = start_orchestrator(tmp_path, token=TOKEN).wait()
    try:
        added = requests.post(f"{service.url}/workers", json=BODY, headers=AUTH, timeout=5)
        assert added.status_code == 201, added.text
    finally:
        service.stop()


def test_admin_listener_is_bound_to_loopback_only(orchestrator):
    _, admin = orchestrator
    port = int(admin.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"127.0.0.1"}
    assert refused(global_address(), port)


home = home_fixture("adminlocal")


def test_local_cluster_registers_through_its_admin_listener(home, tiny_model):
    cli("up", "--name", "adminlocal", "--workers", "1", "--containers-per-worker", "2", "--model", tiny_model)
    state = json.loads((home / "adminlocal" / "state.json").read_text())
    orchestrator = state["resources"]["services"]["orchestrator"]
    url, admin_port = state["orchestrator_url"], orchestrator["admin_port"]
    assert admin_port and admin_port != orchestrator["port"]
    status = requests.get(f"{url}/status", timeout=5).json()
    assert sorted(c["id"] for c in status["containers"]) == ["worker1-1", "worker1-2"]  # registered by `up`
    auth = {"Authorization": f"Bearer {state['token']}"}
    for response in admin_requests(url, auth):
        assert response.status_code == 404, response.text
    assert listening_addresses(admin_port) == {"127.0.0.1"} and refused(global_address(), admin_port)
    answer = requests.post(f"{url}/new_request", json={"text": "hello"}, timeout=30)
    assert answer.status_code == 200, answer.text
    # A second `up` after the orchestrator died: a new one, same ports, registered again.
    terminate({orchestrator["pid"]})
    cli("up", "--name", "adminlocal", "--workers", "1", "--containers-per-worker", "2", "--model", tiny_model)
    again = json.loads((home / "adminlocal" / "state.json").read_text())
    restarted = again["resources"]["services"]["orchestrator"]
    assert restarted["pid"] != orchestrator["pid"] and restarted["admin_port"] == admin_port
    assert len(requests.get(f"{url}/status", timeout=5).json()["containers"]) == 2
    cli("down", "--name", "adminlocal", "--yes")
    assert find_marked(marker("adminlocal")) == []


@pytest.mark.parametrize("bind", ["nonsense", "127.0.0.1:", "127.0.0.1:99999", ":8001"])
def test_a_bad_admin_bind_fails_at_start_with_a_sentence(bind):
    done = subprocess.run([sys.executable, "-m", "mlcluster_orchestrator"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, ORCH_TOKEN=TOKEN, ORCH_ADMIN_BIND=bind, BIND=f"127.0.0.1:{free_port()}"))
    assert done.returncode == 2 and "ORCH_ADMIN_BIND" in done.stderr and "Traceback" not in done.stderr
