"""The ssh provider end to end: `mlcluster up --provider ssh --config FILE` onto
test hosts (network namespaces with their own sshd), load through the
orchestrator, logs, a host that drops off the network, down.

The orchestrator runs on a test host too (this machine reaches it through the
bridge); the workers run as processes with this machine's interpreter (the
hosts share its filesystem), or in Docker: see test_ssh_docker.py.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import requests

from support.console import cli
from support.load import ClosedLoop, failed, served_by
from support.sshcluster import (
    CLUSTER,
    LineReader,
    cluster_fixture,
    host_network,
    our_processes,
    ssh_marks,
    status,
)
from support.sshhosts import LOGIN_ONLY_VALUE, LOGIN_ONLY_VAR
from support.waiting import wait_for

pytestmark = ssh_marks()

net = host_network("orch", "w1", "w2")
cluster = cluster_fixture(["w1", "w2"])  # the cluster up (through the CLI) for the tests below; down at the end


def test_up_registers_every_container_with_private_addresses(net, cluster):
    state, url = cluster.state, cluster.url
    assert url == f"http://{net.hosts['orch'].address}:8000"
    containers = {c["id"]: c for c in status(url)["containers"]}
    assert sorted(containers) == ["w1-1", "w1-2", "w2-1", "w2-2"]
    for cid, c in containers.items():
        host = net.hosts[cid.split("-")[0]]
        assert (c["host"], c["status"]) == (host.address, "free")
        assert c["port"] == 5000 + int(cid.split("-")[1]) - 1
    # pids recorded; host keys trusted on first use and recorded
    services = state["resources"]["services"]
    assert all(services[s]["pid"] > 0 for s in ("orchestrator", "w1-1", "w2-2"))
    keys = state["resources"]["host_keys"]
    assert keys[f"{net.hosts['w1'].address}:22"] == " ".join(net.hosts["w1"].host_public_key().split()[:2])
    # the token lives only in the 0600 state here and in 0600 files on the host
    env_file = net.hosts["orch"].workdir / "orchestrator.env"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600" and state["token"] in env_file.read_text()
    assert state["token"] not in cluster.result.stdout + cluster.result.stderr


def test_services_get_only_the_environment_they_need(net, cluster):
    """Started with `env -i`: a service's environment holds its own settings
    (its env file) and the basics (PATH, HOME, the locale...), nothing else of
    the login's, such as what sshd's SetEnv or the SSH session put there."""
    from mlcluster.remote.connection import Connection, HostKeyStore
    from mlcluster.services import PASSED_VARS, WORKER_PASSED_VARS
    orch = net.hosts["orch"]
    login = Connection(orch.address, "root", key_path=str(net.client_key), known_hosts=HostKeyStore())
    try:
        seen = login.run(f"echo ${LOGIN_ONLY_VAR} $SSH_CONNECTION").stdout.split()
    finally:
        login.close()
    assert seen[0] == LOGIN_ONLY_VALUE and len(seen) > 1  # the login environment has both
    resources = cluster.state["resources"]
    for sid, record in resources["services"].items():
        workdir = Path(resources["hosts"][record["host"]]["workdir"])
        own = {line.split("=", 1)[0] for line in (workdir / f"{sid}.env").read_text().splitlines() if line}
        raw = Path(f"/proc/{record['pid']}/environ").read_bytes().split(b"\0")
        env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
        allowed = own | set(PASSED_VARS) | {"PWD"} | (set(WORKER_PASSED_VARS) if sid != "orchestrator" else set())
        assert set(env) <= allowed, (sid, set(env) - allowed)
        assert LOGIN_ONLY_VAR not in env and "SSH_CONNECTION" not in env and "DOCKER_HOST" not in env
        assert env["MLCLUSTER_MARKER"] == f"ssh:{CLUSTER}:{record['host']}" and env["PATH"]


def test_second_up_reuses_what_runs(net, cluster):
    before = cluster.state["resources"]["services"]
    result = cli("up", "--config", str(cluster.config), home=cluster.home, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    after = json.loads((cluster.home / CLUSTER / "state.json").read_text())["resources"]["services"]
    assert {k: v["pid"] for k, v in after.items()} == {k: v["pid"] for k, v in before.items()}


def test_load_through_the_orchestrator_reaches_every_container(cluster):
    loop = ClosedLoop(cluster.url, 15)
    try:
        wait_for(lambda: loop.count() >= 300, "300 answers", timeout=120)
    finally:
        answers = loop.finish()
    assert len(answers) >= 300
    assert not failed(answers), failed(answers)[:3]
    served = Counter(a.container for a in answers)
    assert set(served) == {"w1-1", "w1-2", "w2-1", "w2-2"}
    assert all(a.inference_ms is not None for a in answers)


def test_mlcluster_bench_through_the_orchestrator(cluster, tmp_path):
    out = tmp_path / "bench.json"
    result = cli("bench", "--name", CLUSTER, "--concurrency", "15", "--requests", "200",
                 "--json", str(out), home=cluster.home, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["ok"] >= 200 and data["errors"] == 0
    assert set(data["per_container"]) == {"w1-1", "w1-2", "w2-1", "w2-2"}
    print(f"\nmlcluster bench -c 15 through the ssh cluster (tiny model, 4 process containers): "
          f"{data.get('throughput_rps')} req/s, latency ms {data.get('latency_ms')}")


def test_logs_over_ssh(cluster):
    orchestrator = cli("logs", "--name", CLUSTER, home=cluster.home, check=False)
    assert orchestrator.returncode == 0, orchestrator.stderr
    assert "registered" in orchestrator.stdout
    worker = cli("logs", "--name", CLUSTER, "w2-1", "--tail", "50", home=cluster.home, check=False)
    assert worker.returncode == 0, worker.stderr
    # It listens on its host's private address (the test range), not on every interface.
    assert re.search(r"Listening at: http://10\.213\.\d+\.\d+:5000", worker.stdout), worker.stdout
    assert "Listening at: http://0.0.0.0" not in worker.stdout
    unknown = cli("logs", "--name", CLUSTER, "w9-9", home=cluster.home, check=False)
    assert unknown.returncode == 1 and "w9-9" in unknown.stderr and "Traceback" not in unknown.stderr


def test_follow_streams_new_lines(net, cluster):
    env = dict(os.environ, MLCLUSTER_HOME=str(cluster.home), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "mlcluster", "logs", "--name", CLUSTER, "--follow", "--tail", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        output = LineReader(proc.stdout)
        wait_for(lambda: output.lines, "the log's last line (--tail 1): the follower is attached", timeout=30)
        # A registration is logged by the orchestrator: make one happen now, on its admin listener.
        admin_call(net, cluster, "POST", "/workers", {"host": "10.213.255.1", "port": 5999, "id": "probe"})
        wait_for(lambda: output.saw("probe"), "the new line followed", timeout=20, interval=0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        admin_call(net, cluster, "DELETE", "/workers/probe")


def admin_call(net, cluster, method: str, path: str, body=None) -> tuple[int, dict]:
    """A call to the orchestrator's admin listener from its own host (inside
    its namespace, to its 127.0.0.1): the status code and the JSON answer."""
    port = cluster.state["resources"]["services"]["orchestrator"]["admin_port"]
    code = ("import json, sys, requests; r = requests.request(sys.argv[1], sys.argv[2], json=json.loads(sys.argv[3]), "
            "headers={'Authorization': 'Bearer ' + sys.argv[4]}, timeout=5); print(r.status_code, r.text)")
    done = net.hosts["orch"].exec(sys.executable, "-c", code, method, f"http://127.0.0.1:{port}{path}",
                                  json.dumps(body), cluster.state["token"])
    assert done.returncode == 0, done.stderr
    code, text = done.stdout.split(" ", 1)
    return int(code), json.loads(text)


def test_admin_endpoints_only_on_the_orchestrator_hosts_loopback(net, cluster):
    """`up` registered every container through SSH to the admin listener; the
    public port answers the admin paths 404 even with the token, and the admin
    port cannot be reached from the network."""
    orch = net.hosts["orch"]
    admin_port = cluster.state["resources"]["services"]["orchestrator"]["admin_port"]
    assert admin_port == 8001  # orchestrator_port + 1
    auth = {"Authorization": f"Bearer {cluster.state['token']}"}
    public = requests.post(f"{cluster.url}/workers", json={"containers": []}, headers=auth, timeout=5)
    assert public.status_code == 404 and public.json()["status"] == 404
    assert requests.delete(f"{cluster.url}/workers/w1-1", headers=auth, timeout=5).status_code == 404
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{orch.address}:{admin_port}/status", timeout=5)
    listening = orch.exec("ss", "-Htln", f"sport = :{admin_port}").stdout.split()
    assert "127.0.0.1:8001" in listening and not any(a.endswith(":8001") and a != "127.0.0.1:8001" for a in listening)
    code, answer = admin_call(net, cluster, "DELETE", "/workers/nosuch")  # served there: the id is unknown
    assert code == 404 and answer["error"] == "no container 'nosuch' is registered"


def test_host_losing_its_network_mid_load_loses_no_request(net, cluster):
    url = cluster.url
    loop = ClosedLoop(url, 15)
    try:
        wait_for(lambda: served_by(loop.answers, "w1") and served_by(loop.answers, "w2"), "load served by both hosts",
                 timeout=60, interval=0.1)
        net.cut(net.hosts["w2"])
        wait_for(lambda: all(c["status"] == "down" for c in status(url)["containers"] if c["id"].startswith("w2")),
                 "w2's containers shown as down", timeout=30, interval=0.3)
        down_at = loop.count()
        wait_for(lambda: loop.count() >= down_at + 50 and loop.count() > 100, "50 more answers with w2 down",
                 timeout=60, interval=0.1)
    finally:
        answers = loop.finish()
        net.restore(net.hosts["w2"])
    assert len(answers) > 100
    assert not failed(answers), Counter(a.status for a in failed(answers))
    assert all(a.container.startswith("w1") for a in answers[-50:])
    # back on the network, its containers come back
    wait_for(lambda: all(c["status"] == "free" for c in status(url)["containers"]), "w2 back",
             timeout=30, interval=0.3)


def test_status_and_details(net, cluster):
    result = cli("status", "--name", CLUSTER, "--json", home=cluster.home, check=False)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    rows = {c["id"]: c for c in data["containers"]}
    assert rows["w1-2"]["address"] == net.hosts["w1"].address and rows["w1-2"]["runtime"] == "process"


def test_down_stops_everything_and_hosts_stay(net, cluster):
    result = cli("down", "--name", CLUSTER, "--yes", home=cluster.home, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("orch", "w1", "w2"):
        assert our_processes(net, name) == []
        assert not list(net.hosts[name].workdir.glob("*.env"))
    assert not (cluster.home / CLUSTER).exists()
    # the hosts still answer SSH
    from mlcluster.remote.connection import Connection
    with Connection(net.hosts["w1"].address, key_path=net.client_key) as c:
        assert c.run("hostname").stdout.strip() == "w1"
