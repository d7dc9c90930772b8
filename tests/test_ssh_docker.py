"""The ssh provider with the Docker runtime: one worker host runs real containers
under its own dockerd (inside its network namespace), next to process-runtime
hosts. The images are built once on this machine and shipped (`images = "ship"`):
the test hosts have no route to a package index. `images = "build"` (context
uploaded, built on the host) is tested with the orchestrator image, fed from a
local wheelhouse.

Needs what .ci/setup-docker.sh sets up (docker.io, a running dockerd, the
base image) besides .ci/setup-ssh.sh.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from mlcluster.deploy.docker import DockerRuntime
from mlcluster.deploy.host import RemoteHost
from mlcluster.providers.ssh.options import parse_options
from mlcluster.remote.connection import HostKeyStore
from mlcluster.state import ClusterSpec
from mlcluster.ui import Step
from support.console import cli
from support.sshcluster import (
    BASE_IMAGE,
    CLUSTER,
    cluster_config,
    cluster_fixture,
    docker_on,
    docker_over_ssh_missing,
    host_network,
    our_processes,
    ssh_marks,
    status,
)

pytestmark = [*ssh_marks(docker_over_ssh_missing, "Docker over SSH"), pytest.mark.docker,
              pytest.mark.timeout(1500)]  # a first run builds the worker image on this machine (minutes)

net = host_network("orch", "w1", "wd", docker=("wd",))
cluster = cluster_fixture(["w1", "wd"], docker=("wd",), images="ship", up_timeout=1800)


def test_docker_host_runs_labelled_non_root_containers(net, cluster):
    wd = net.hosts["wd"]
    listed = docker_on(wd, "ps", "--filter", f"label=mlcluster.cluster={CLUSTER}", "--format", "{{.Names}}")
    assert sorted(listed.stdout.split()) == [f"mlc-{CLUSTER}-wd-1", f"mlc-{CLUSTER}-wd-2"]
    inspected = json.loads(docker_on(wd, "inspect", f"mlc-{CLUSTER}-wd-1").stdout)[0]
    assert inspected["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert inspected["Config"]["Labels"]["mlcluster.role"] == "worker"
    assert inspected["HostConfig"]["PortBindings"]["5000/tcp"][0]["HostPort"] == "5000"
    assert any(m["Destination"] == "/model" and not m["RW"] for m in inspected["Mounts"])
    env = dict(e.split("=", 1) for e in inspected["Config"]["Env"])
    assert env["TORCH_THREADS"] == str(max(1, (__import__("os").cpu_count() or 1) // 2))
    assert env["MODEL"] == "/model"
    assert docker_on(wd, "exec", f"mlc-{CLUSTER}-wd-1", "id", "-u").stdout.strip() != "0"
    rows = {c["id"]: c for c in status(cluster.url)["containers"]}
    assert rows["wd-2"]["host"] == wd.address and rows["wd-2"]["status"] == "free"


def test_docker_host_containers_are_hardened(net, cluster):
    """As the local Docker runtime's: read-only root, a tmpfs for /tmp, no
    capabilities, no-new-privileges; and the root file system really refuses writes."""
    wd = net.hosts["wd"]
    for name in (f"mlc-{CLUSTER}-wd-1", f"mlc-{CLUSTER}-wd-2"):
        host_config = json.loads(docker_on(wd, "inspect", name).stdout)[0]["HostConfig"]
        assert host_config["ReadonlyRootfs"] is True
        assert host_config["CapDrop"] == ["ALL"] and not host_config["CapAdd"]
        assert host_config["SecurityOpt"] == ["no-new-privileges"]
        assert "/tmp" in host_config["Tmpfs"]
    written = docker_on(wd, "exec", f"mlc-{CLUSTER}-wd-1", "sh", "-c", "touch /app/x")
    assert written.returncode != 0 and "Read-only file system" in written.stderr
    status_line = docker_on(wd, "exec", f"mlc-{CLUSTER}-wd-1", "grep", "-E", "^(CapEff|NoNewPrivs):", "/proc/1/status")
    assert sorted(status_line.stdout.split()) == sorted(["CapEff:", "0000000000000000", "NoNewPrivs:", "1"])


def test_bench_is_served_by_docker_and_process_containers(cluster, tmp_path):
    result_file = tmp_path / "bench.json"
    bench = cli("bench", "--name", CLUSTER, "--concurrency", "15", "--requests", "300",
                "--json", str(result_file), home=cluster.home, check=False)
    assert bench.returncode == 0, bench.stderr
    result = json.loads(result_file.read_text())
    assert result["requests"] == 300 and result["ok"] == 300 and not result["errors"]
    assert set(result["per_container"]) == {"w1-1", "w1-2", "wd-1", "wd-2"}
    assert all(n > 0 for n in result["per_container"].values())


def test_container_logs_over_ssh(cluster):
    result = cli("logs", "--name", CLUSTER, "wd-1", home=cluster.home, check=False)
    assert result.returncode == 0, result.stderr
    assert "Listening at: http://0.0.0.0:5000" in result.stdout


def test_second_up_keeps_identical_containers(net, cluster):
    wd = net.hosts["wd"]
    before = docker_on(wd, "ps", "-q", "--no-trunc", "--filter", f"label=mlcluster.cluster={CLUSTER}").stdout.split()
    result = cli("up", "--config", str(cluster.config), timeout=900, home=cluster.home, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    after = docker_on(wd, "ps", "-q", "--no-trunc", "--filter", f"label=mlcluster.cluster={CLUSTER}").stdout.split()
    assert sorted(after) == sorted(before) and len(after) == 2


def test_down_removes_the_containers(net, cluster):
    result = cli("down", "--name", CLUSTER, "--yes", home=cluster.home, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    wd = net.hosts["wd"]
    assert docker_on(wd, "ps", "-aq", "--filter", f"label=mlcluster.cluster={CLUSTER}").stdout.split() == []
    assert our_processes(net, "orch") == [] and our_processes(net, "w1") == []


def test_build_on_the_host_then_reuse(net, tmp_path):
    """`images = "build"`: the orchestrator's context goes to the host and is
    built there (from a local wheelhouse: the host has no package index); a
    second prepare finds the image and builds nothing."""
    wd = net.hosts["wd"]
    offline_base = "mlcluster-test-offline-base:1"
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nENV PIP_NO_INDEX=1\n")
    assert subprocess.run(["docker", "build", "-q", "-t", offline_base, str(tmp_path)],
                          capture_output=True).returncode == 0
    shipped = subprocess.run(f"docker save {offline_base} | docker -H {wd.docker_host} load -q",
                             shell=True, capture_output=True, text=True)
    assert shipped.returncode == 0, shipped.stderr
    wheels = tmp_path / "wheels"
    download = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels), "--only-binary=:all:",
                               "-r", str(Path(__file__).parent.parent / "orchestrator_image" / "requirements.txt")],
                              capture_output=True, text=True, timeout=300)
    if download.returncode != 0:
        pytest.fail(f"pip download of the orchestrator's wheels failed: {download.stderr[-500:]}")
    spec = ClusterSpec(name="buildtest", provider="ssh", provider_options={"ssh": {
        "key": str(net.client_key), "images": "build", "wheelhouse": str(wheels),
        "build_args": {"BASE_IMAGE": offline_base},
        "orchestrator": {"address": wd.address, "workdir": str(wd.workdir), "runtime": "docker"},
        "workers": [{"address": wd.address}]}})
    options = parse_options(spec)
    host = RemoteHost.connect(options.orchestrator, HostKeyStore(), 5)
    host.prepare_workdir()
    host.facts["roles"] = {"orchestrator"}
    runtime = DockerRuntime(options, "buildtest")
    try:
        runtime.prepare(host, Step(None, None))
        tag = host.facts["images"]["orchestrator"]
        first = json.loads(docker_on(wd, "image", "inspect", tag).stdout)[0]
        assert first["Config"]["User"] == "10001:10001"
        runtime.prepare(host, Step(None, None))  # again: found, not rebuilt
        assert json.loads(docker_on(wd, "image", "inspect", tag).stdout)[0]["Created"] == first["Created"]
        assert not list(wd.workdir.glob("context-*"))
    finally:
        runtime.close()
        host.close()
        subprocess.run(["docker", "rmi", offline_base], capture_output=True)


def test_orchestrator_container_serves_admin_only_on_its_hosts_loopback(net, tiny_model, tmp_path):
    """The orchestrator in Docker: its admin listener (0.0.0.0 inside the
    container) is published on the host's 127.0.0.1 only; `up` registers the
    workers through SSH to it, the public port answers the admin paths 404,
    and the admin port cannot be reached from the network."""
    wd, name = net.hosts["wd"], "sshadm"
    home = tmp_path / "home"
    config = cluster_config(home, net, tiny_model, ["w1"], name=name, orchestrator="wd", docker=("wd",),
                            images="ship", orchestrator_port=8100, worker_port=5100)
    up = cli("up", "--provider", "ssh", "--config", str(config), timeout=1800, home=home, check=False)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        state = json.loads((home / name / "state.json").read_text())
        url = state["orchestrator_url"]
        assert state["resources"]["services"]["orchestrator"]["admin_port"] == 8101
        assert sorted((c["id"], c["status"]) for c in status(url)["containers"]) == [("w1-1", "free"), ("w1-2", "free")]
        auth = {"Authorization": f"Bearer {state['token']}"}
        public = requests.post(f"{url}/workers", json={"containers": []}, headers=auth, timeout=5)
        assert public.status_code == 404 and public.json()["status"] == 404
        inspected = json.loads(docker_on(wd, "inspect", f"mlc-{name}-orchestrator").stdout)[0]
        bindings = inspected["HostConfig"]["PortBindings"]
        assert bindings["8101/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "8101"}]
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://{wd.address}:8101/status", timeout=5)
    finally:
        down = cli("down", "--name", name, "--yes", home=home, check=False)
    assert down.returncode == 0, down.stderr[-2000:]
