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
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from sshhosts import SSHTestNetwork, missing_facilities

pytestmark = [pytest.mark.ssh,
              pytest.mark.skipif(bool(missing_facilities()), reason=f"SSH test hosts: {missing_facilities()}")]

CLUSTER = "sshe2e"


def toml_config(net: SSHTestNetwork, model: str, workers: list[str], orchestrator: str = "orch",
                docker: tuple[str, ...] = (), **ssh) -> str:
    """A config file's text for these test hosts."""
    def host(name: str) -> str:
        h = net.hosts[name]
        runtime = "docker" if name in docker else "process"
        return (f'{{ address = "{h.address}", name = "{name}", workdir = "{h.workdir}", '
                f'runtime = "{runtime}" }}')
    lines = [f'name = "{CLUSTER}"', 'provider = "ssh"', "containers_per_worker = 2", f'model = "{model}"',
             "[ssh]", f'key = "{net.client_key}"', 'user = "root"', f'python = "{sys.executable}"',
             "reach_timeout = 20", "connect_timeout = 3",
             # in-flight requests on a host that vanished are retried elsewhere after this
             'orchestrator_env = { ORCH_FORWARD_TIMEOUT_S = "4" }',
             *(f"{k} = {json.dumps(v)}" for k, v in ssh.items()),
             f"orchestrator = {host(orchestrator)}",
             "workers = [ " + ", ".join(host(w) for w in workers) + " ]"]
    return "\n".join(lines) + "\n"


def cli(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLCLUSTER_HOME=str(home), HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "mlcluster", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def load(url: str, concurrency: int, stop: threading.Event, limit: int = 0) -> list[dict]:
    """Closed-loop load: `concurrency` threads posting to /new_request until
    `stop` (or `limit` requests in all). Every answer (or error) is kept."""
    results: list[dict] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with requests.Session() as http:
            n = 0
            while not stop.is_set():
                with lock:
                    if limit and len(results) >= limit:
                        return
                try:
                    r = http.post(f"{url}/new_request", json={"text": f"client {i} request {n}"}, timeout=60)
                    entry = {"status": r.status_code, "body": r.json()}
                except (requests.RequestException, ValueError) as exc:
                    entry = {"status": None, "error": repr(exc)}
                with lock:
                    results.append(entry)
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def status(url: str) -> dict:
    return requests.get(f"{url}/status", timeout=5).json()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def our_processes(net: SSHTestNetwork, name: str) -> list[str]:
    """Processes in a host's namespace other than its sshd and dockerd."""
    host = net.hosts[name]
    pids = subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True, text=True).stdout.split()
    def comm(pid: str) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text(errors="replace")
        except OSError:
            return "containerd (gone)"
    return [p for p in pids if int(p) not in (host.sshd_pid, host.dockerd_pid) and "containerd" not in comm(p)]


@pytest.fixture(scope="module")
def net():
    with SSHTestNetwork() as network:
        network.add_hosts(["orch", "w1", "w2"])
        yield network


@pytest.fixture(scope="module")
def cluster(net, tiny_model, tmp_path_factory):
    """The cluster up (through the CLI) for the tests below; down at the end."""
    home = tmp_path_factory.mktemp("home")
    config = home / "cluster.toml"
    config.write_text(toml_config(net, tiny_model, ["w1", "w2"]))
    started = time.monotonic()
    result = cli(home, "up", "--provider", "ssh", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"\n`mlcluster up --provider ssh` onto 3 hosts (process runtime): {time.monotonic() - started:.1f} s")
    state = json.loads((home / CLUSTER / "state.json").read_text())
    yield {"home": home, "config": config, "state": state, "url": state["orchestrator_url"],
           "up_s": time.monotonic() - started, "up": result}
    cli(home, "down", "--name", CLUSTER, "--yes")


def test_up_registers_every_container_with_private_addresses(net, cluster):
    state, url = cluster["state"], cluster["url"]
    assert url == f"http://{net.hosts['orch'].address}:8000"
    containers = {c["id"]: c for c in status(url)["containers"]}
    assert sorted(containers) == ["w1-1", "w1-2", "w2-1", "w2-2"]
    for cid, c in containers.items():
        host = net.hosts[cid.split("-")[0]]
        assert (c["host"], c["status"]) == (host.address, "free")
        assert c["port"] == 5000 + int(cid.split("-")[1]) - 1
    # pids recorded; host keys trusted on first use and recorded
    services = state["resources"]["ssh"]["services"]
    assert all(services[s]["pid"] > 0 for s in ("orchestrator", "w1-1", "w2-2"))
    keys = state["resources"]["host_keys"]
    assert keys[f"{net.hosts['w1'].address}:22"] == " ".join(net.hosts["w1"].host_public_key().split()[:2])
    # the token lives only in the 0600 state here and in 0600 files on the host
    env_file = net.hosts["orch"].workdir / "orchestrator.env"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600" and state["token"] in env_file.read_text()
    assert state["token"] not in cluster["up"].stdout + cluster["up"].stderr


def test_second_up_reuses_what_runs(net, cluster):
    before = cluster["state"]["resources"]["ssh"]["services"]
    result = cli(cluster["home"], "up", "--config", str(cluster["config"]))
    assert result.returncode == 0, result.stderr[-2000:]
    after = json.loads((cluster["home"] / CLUSTER / "state.json").read_text())["resources"]["ssh"]["services"]
    assert {k: v["pid"] for k, v in after.items()} == {k: v["pid"] for k, v in before.items()}


def test_load_through_the_orchestrator_reaches_every_container(cluster):
    results = load(cluster["url"], 15, threading.Event(), limit=300)
    assert len(results) >= 300
    assert all(r["status"] == 200 for r in results), [r for r in results if r["status"] != 200][:3]
    served = Counter(r["body"]["container"]["id"] for r in results)
    assert set(served) == {"w1-1", "w1-2", "w2-1", "w2-2"}
    assert all("inference_ms" in r["body"]["result"] for r in results)


def test_mlcluster_bench_through_the_orchestrator(cluster, tmp_path):
    out = tmp_path / "bench.json"
    result = cli(cluster["home"], "bench", "--name", CLUSTER, "--concurrency", "15", "--requests", "200",
                 "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["ok"] >= 200 and data["errors"] == 0
    assert set(data["per_container"]) == {"w1-1", "w1-2", "w2-1", "w2-2"}
    print(f"\nmlcluster bench -c 15 through the ssh cluster (tiny model, 4 process containers): "
          f"{data.get('throughput_rps')} req/s, latency ms {data.get('latency_ms')}")


def test_logs_over_ssh(cluster):
    orchestrator = cli(cluster["home"], "logs", "--name", CLUSTER)
    assert orchestrator.returncode == 0, orchestrator.stderr
    assert "registered" in orchestrator.stdout
    worker = cli(cluster["home"], "logs", "--name", CLUSTER, "w2-1", "--tail", "50")
    assert worker.returncode == 0, worker.stderr
    assert "Listening at: http://0.0.0.0:5000" in worker.stdout
    unknown = cli(cluster["home"], "logs", "--name", CLUSTER, "w9-9")
    assert unknown.returncode == 1 and "w9-9" in unknown.stderr and "Traceback" not in unknown.stderr


def test_follow_streams_new_lines(net, cluster):
    env = dict(os.environ, MLCLUSTER_HOME=str(cluster["home"]), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "mlcluster", "logs", "--name", CLUSTER, "--follow", "--tail", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(2)
        # A registration is logged by the orchestrator: make one happen now.
        token = cluster["state"]["token"]
        requests.post(f"{cluster['url']}/workers", json={"host": "10.213.255.1", "port": 5999, "id": "probe"},
                      headers={"Authorization": f"Bearer {token}"}, timeout=5)
        seen = []
        wait_for(lambda: seen.append(proc.stdout.readline()) or "probe" in seen[-1], 20, "the new line followed")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        requests.delete(f"{cluster['url']}/workers/probe", headers={"Authorization": f"Bearer {token}"}, timeout=5)


def test_host_losing_its_network_mid_load_loses_no_request(net, cluster):
    url = cluster["url"]
    stop = threading.Event()
    box: dict = {}
    runner = threading.Thread(target=lambda: box.update(results=load(url, 15, stop)))
    runner.start()
    try:
        time.sleep(1.5)
        net.cut(net.hosts["w2"])
        wait_for(lambda: all(c["status"] == "down" for c in status(url)["containers"] if c["id"].startswith("w2")),
                 30, "w2's containers shown as down")
        time.sleep(1.0)
    finally:
        stop.set()
        runner.join(timeout=120)
        net.restore(net.hosts["w2"])
    results = box["results"]
    assert len(results) > 100
    assert all(r["status"] == 200 for r in results), Counter(str(r.get("status")) for r in results)
    late = [r for r in results[-50:]]
    assert all(r["body"]["container"]["id"].startswith("w1") for r in late)
    # back on the network, its containers come back
    wait_for(lambda: all(c["status"] == "free" for c in status(url)["containers"]), 30, "w2 back")


def test_status_and_details(net, cluster):
    result = cli(cluster["home"], "status", "--name", CLUSTER, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    rows = {c["id"]: c for c in data["containers"]}
    assert rows["w1-2"]["address"] == net.hosts["w1"].address and rows["w1-2"]["runtime"] == "process"


def test_down_stops_everything_and_hosts_stay(net, cluster):
    result = cli(cluster["home"], "down", "--name", CLUSTER, "--yes")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("orch", "w1", "w2"):
        assert our_processes(net, name) == []
        assert not list(net.hosts[name].workdir.glob("*.env"))
    assert not (cluster["home"] / CLUSTER).exists()
    # the hosts still answer SSH
    from mlcluster.ssh import Connection
    with Connection(net.hosts["w1"].address, key_path=net.client_key) as c:
        assert c.run("hostname").stdout.strip() == "w1"
