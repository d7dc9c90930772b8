"""The aws provider end to end through the CLI: EC2 is moto in server mode on
127.0.0.1; the instances are mapped (`address_map`) onto SSH test hosts
(network namespaces with their own sshd), never onto moto's public IPs,
which are real AWS addresses. up (spot workers) -> status -> bench -> logs -> down
(nothing tagged left, the controller's IAM profile included).
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from mlcluster.errors import MlclusterError
from mlcluster.providers.aws.hosts import wait_for_ssh
from mlcluster.remote.connection import HostKeyStore
from support.aws import RecordingUI
from support.awscluster import AwsConfig, provision_on_test_hosts
from support.console import cli
from support.moto import nothing_tagged, tagged
from support.sshcluster import host_network, ssh_marks

pytestmark = ssh_marks()

CLUSTER = "awse2e"
HOSTS = {"orchestrator": "orch", "worker1": "w1", "worker2": "w2"}


net = host_network(*HOSTS.values(), scope="function")  # each test changes its hosts


def test_up_status_bench_logs_down(moto, net, tiny_model, tmp_path):
    config = AwsConfig(tmp_path / "aws.toml", moto, net, HOSTS, CLUSTER, tiny_model, spot=True)
    # An earlier `up` was cut short after EC2: the instances and the cluster's
    # own key pair exist. The test hosts accept that key, as the instances would.
    state = provision_on_test_hosts(config)
    launched = moto.faults.count("RunInstances")

    up = cli("up", "--config", str(config.path), "--yes", check=False)
    assert up.returncode == 0, up.stderr[-3000:]
    assert "estimate" in up.stderr and "m4.large" in up.stderr and "up to $0.200" in up.stderr  # 2 spot workers
    assert moto.faults.count("RunInstances") == launched  # resumed: nothing new in EC2
    orchestrator = net.hosts["orch"].address
    assert f"http://{orchestrator}:8000" in up.stdout

    status = cli("status", "--name", CLUSTER, "--json", check=False)
    assert status.returncode == 0, status.stderr
    rows = {c["id"]: c for c in json.loads(status.stdout)["containers"]}
    assert sorted(rows) == ["worker1-1", "worker2-1"]
    instances = set(tagged(moto, CLUSTER)["instances"])
    for cid, host in (("worker1-1", "w1"), ("worker2-1", "w2")):
        row = rows[cid]
        assert row["host"] == net.hosts[host].address and row["status"] == "free"
        assert row["instance_id"] in instances and row["instance_type"] == "m4.large"
        assert row["zone"].startswith("us-east-1") and row["instance_state"] == "running"
        assert row["market"] == "spot"  # the workers; the orchestrator's instance is on-demand (test_aws_spot)
    assert tagged(moto, CLUSTER)["instance_profiles"] == [f"mlcluster-{CLUSTER}-controller"]

    result_file = tmp_path / "bench.json"
    bench = cli("bench", "--name", CLUSTER, "--requests", "40", "--concurrency", "4", "--json", str(result_file),
                check=False)
    assert bench.returncode == 0, bench.stderr[-3000:]
    figures = json.loads(result_file.read_text())
    assert (figures["requests"], figures["ok"], figures["errors"]) == (40, 40, 0)

    logs = cli("logs", "--name", CLUSTER, "worker2-1", "--tail", "20", check=False)
    assert logs.returncode == 0 and "Listening at" in logs.stdout, logs.stderr

    down = cli("down", "--name", CLUSTER, "--yes", check=False)
    assert down.returncode == 0, down.stderr[-3000:]
    assert nothing_tagged(moto, CLUSTER)
    assert not state.dir.exists()


def test_waiting_for_ssh_ends_with_a_reason_never_hangs(net):
    net.stop_sshd(net.hosts["w1"])
    hosts = {"orchestrator": net.hosts["orch"].address, "worker1": net.hosts["w1"].address}
    nap = lambda s: time.sleep(0.1)  # noqa: E731
    with pytest.raises(MlclusterError, match=r"failed on 1 of 2 host\(s\):\n  worker1: .*connection refused after 2 s"):
        wait_for_ssh(hosts, "root", str(net.client_key), HostKeyStore(), 2.0, RecordingUI(), sleep=nap)
    # A key the host does not accept is retried for the grace period only.
    other = net.root / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(MlclusterError, match="authentication failed"):
        wait_for_ssh({"orchestrator": hosts["orchestrator"]}, "root", str(other), HostKeyStore(), 60.0,
                     RecordingUI(), auth_grace_s=0.5, sleep=nap)
