"""The ssh provider when hosts misbehave: unreachable hosts, a changed host key."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import requests

from support.console import cli
from support.sshcluster import CLUSTER, host_network, ssh_marks, toml_config

pytestmark = ssh_marks()


net = host_network("orch", "w1", "gone", "cut")


def test_unreachable_hosts_fail_up_within_the_deadline_naming_host_and_reason(net, tmp_path):
    net.stop_sshd(net.hosts["gone"])  # nothing listens: refused
    net.cut(net.hosts["cut"])         # the link is down: connects time out
    try:
        config = tmp_path / "c.toml"
        config.write_text(toml_config(net, "overhead-test", ["w1", "gone", "cut"]).replace(
            "reach_timeout = 20", "reach_timeout = 6"))
        started = time.monotonic()
        result = cli("up", "--config", str(config), home=tmp_path, check=False)
        elapsed = time.monotonic() - started
    finally:
        net.restore(net.hosts["cut"])
        net.start_sshd(net.hosts["gone"])
    assert result.returncode == 1, result.stderr
    assert elapsed < 6 + 20, elapsed  # the deadline, one connect time-out, the CLI's start
    err = " ".join(result.stderr.split())
    assert "gone" in err and "connection refused" in err
    assert "cut" in err and ("timed out" in err or "no route" in err)
    assert "2 of 4 host(s)" in err and "Traceback" not in result.stderr
    # nothing was started on the hosts that answered
    state = json.loads((tmp_path / CLUSTER / "state.json").read_text())
    assert state["resources"]["services"] == {}


def test_a_refused_port_fails_up_at_once_and_down_purge_forgets_the_dead_cluster(net, tmp_path):
    net.stop_sshd(net.hosts["gone"])
    try:
        config = tmp_path / "c.toml"
        config.write_text(toml_config(net, "overhead-test", ["gone"]).replace("reach_timeout = 20",
                                                                              "reach_timeout = 90"))
        started = time.monotonic()
        result = cli("up", "--config", str(config), env=dict(os.environ, MLCLUSTER_PROGRESS_S="0.5"), home=tmp_path,
                     check=False)
        elapsed = time.monotonic() - started
        # The failed `up` left a cluster whose worker host cannot be reached.
        assert CLUSTER in cli("list", home=tmp_path, check=False).stdout
        down = cli("down", "--name", CLUSTER, "--yes", home=tmp_path, check=False)
        kept = (tmp_path / CLUSTER / "state.json").exists()
        purged = cli("down", "--name", CLUSTER, "--purge", "--yes", home=tmp_path, check=False)
    finally:
        net.start_sshd(net.hosts["gone"])
    assert result.returncode == 1, result.stderr
    assert elapsed < 45, elapsed  # half the reach_timeout: a refusal is an answer, never waited on
    err = " ".join(result.stderr.split())
    assert "gone" in err and "connection refused" in err and "is sshd running" in err
    assert "still waiting" not in err and "Traceback" not in result.stderr

    assert down.returncode == 1 and "gone" in down.stderr and "--purge" in down.stderr, down.stderr
    assert kept  # a failed `down` forgets nothing
    assert purged.returncode == 0, purged.stderr
    said = " ".join(purged.stderr.split())
    assert "forgotten" in said and "gone" in said and net.hosts["gone"].address in said
    assert "mlcluster.cluster=" + CLUSTER in said  # where to look for what may be left
    assert CLUSTER not in cli("list", home=tmp_path, check=False).stdout and not (tmp_path / CLUSTER).exists()


def test_changed_host_key_is_refused(net, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(toml_config(net, "overhead-test", ["w1"]))
    first = cli("up", "--config", str(config), home=tmp_path, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    recorded = json.loads((tmp_path / CLUSTER / "state.json").read_text())["resources"]["host_keys"]

    net.replace_host_key(net.hosts["w1"])  # "someone else" now answers at w1's address
    again = cli("up", "--config", str(config), home=tmp_path, check=False)
    assert again.returncode == 1
    err = " ".join(again.stderr.split())
    assert "w1" in err and "host key" in err and "changed" in err and "Traceback" not in again.stderr
    state = json.loads((tmp_path / CLUSTER / "state.json").read_text())
    assert state["resources"]["host_keys"] == recorded  # never silently replaced

    down = cli("down", "--name", CLUSTER, "--yes", home=tmp_path, check=False)
    assert down.returncode == 1 and "w1" in down.stderr and "host key" in " ".join(down.stderr.split())
    # kept: w1's worker may still run
    assert (tmp_path / CLUSTER / "state.json").exists(), (list(tmp_path.rglob("*")), down.stderr)
    net.kill_services(net.hosts["w1"])


def test_a_taken_port_is_named(net, tmp_path):
    """Something else listens on w1's first worker port: `up` says so."""
    blocker = subprocess.Popen(["nsenter", f"--net=/run/netns/{net.hosts['w1'].namespace}", sys.executable, "-c",
                                "import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 5000)); s.listen(); "
                                "print('listening', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert blocker.stdout.readline() == "listening\n"  # it holds the port now (or it died: "")
        config = tmp_path / "c.toml"
        config.write_text(toml_config(net, "overhead-test", ["w1"]).replace('name = "sshe2e"', 'name = "taken"'))
        result = cli("up", "--config", str(config), home=tmp_path, check=False)
        assert result.returncode == 1
        assert "port 5000 is already taken" in " ".join(result.stderr.split()) and "w1" in result.stderr
    finally:
        blocker.kill()
        blocker.wait()
        cli("down", "--name", "taken", "--yes", home=tmp_path, check=False)


def test_a_smaller_cluster_stops_what_is_no_longer_wanted(net, tmp_path):
    """`up` again with fewer containers per worker and a host dropped from the
    list: the extra ones stop (also on the dropped host), the rest stay."""
    config = tmp_path / "c.toml"
    config.write_text(toml_config(net, "overhead-test", ["w1", "cut"]).replace('name = "sshe2e"', 'name = "shrink"'))
    assert cli("up", "--config", str(config), home=tmp_path, check=False).returncode == 0
    before = json.loads((tmp_path / "shrink" / "state.json").read_text())["resources"]["services"]
    config.write_text(toml_config(net, "overhead-test", ["w1"]).replace('name = "sshe2e"', 'name = "shrink"')
                      .replace("containers_per_worker = 2", "containers_per_worker = 1"))
    result = cli("up", "--config", str(config), home=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    after = json.loads((tmp_path / "shrink" / "state.json").read_text())
    services = after["resources"]["services"]
    assert sorted(services) == ["controller", "orchestrator", "w1-1"]  # the controller: on the orchestrator's host
    assert services["w1-1"]["pid"] == before["w1-1"]["pid"]
    for sid in ("w1-2", "cut-1", "cut-2"):
        gone = before[sid]["pid"]
        assert not os.path.exists(f"/proc/{gone}") or b"zombie" in open(f"/proc/{gone}/status", "rb").read().lower()
    assert [c["id"] for c in requests.get(f"{after['orchestrator_url']}/status", timeout=5).json()["containers"]
            if c["status"] != "draining"] == ["w1-1"]
    assert cli("down", "--name", "shrink", "--yes", home=tmp_path, check=False).returncode == 0


def test_down_without_state_finds_services_by_marker(net, tmp_path):
    """The state is lost: `down --config` reaches the hosts from the config and
    stops this cluster's processes, found by their marker, and only those."""
    config = tmp_path / "c.toml"
    config.write_text(toml_config(net, "overhead-test", ["w1"]).replace('name = "sshe2e"', 'name = "lost"'))
    assert cli("up", "--config", str(config), home=tmp_path, check=False).returncode == 0
    pids = [s["pid"] for s in json.loads((tmp_path / "lost" / "state.json").read_text())
            ["resources"]["services"].values()]
    bystander = subprocess.Popen(["nsenter", f"--net=/run/netns/{net.hosts['w1'].namespace}",
                                  "setsid", "sleep", "300"], env=dict(os.environ, MLCLUSTER_MARKER="ssh:other:w1"))
    try:
        import shutil
        shutil.rmtree(tmp_path / "lost")
        result = cli("down", "--name", "lost", "--config", str(config), "--yes", home=tmp_path, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or b"zombie" in open(f"/proc/{pid}/status", "rb").read().lower()
        assert bystander.poll() is None  # another cluster's process is left alone
    finally:
        bystander.kill()
        bystander.wait()
