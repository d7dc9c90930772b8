"""`bench --find-capacity` on an aws cluster (moto's EC2 on 127.0.0.1, the
instances mapped onto SSH test hosts, as tests/test_aws_e2e.py): the load runs
on the orchestrator's host (the default for aws), and the capacity found is
priced from the aws provider's cost plan as $ per million requests. Then
`bench compare` shows saved capacities side by side."""
from __future__ import annotations

import json

import pytest

from mlcluster.providers.aws.options import plan
from support.awscluster import AwsConfig, provision_on_test_hosts
from support.console import cli
from support.sshcluster import host_network, ssh_marks

pytestmark = ssh_marks()

CLUSTER = "awsbench"
HOSTS = {"orchestrator": "orch", "worker1": "w1"}
SERVICE_MS = 25
CONTAINERS = 2
CAPACITY_RPS = CONTAINERS * 1000 / SERVICE_MS


net = host_network(*HOSTS.values(), scope="function")


def test_find_capacity_reports_dollars_per_million_from_the_cost_plan(moto, net, tmp_path):
    config = AwsConfig(tmp_path / "aws.toml", moto, net, HOSTS, CLUSTER, "overhead-test", workers=1,
                       containers_per_worker=CONTAINERS, top={"service_ms": SERVICE_MS})
    spec = provision_on_test_hosts(config).spec  # the instances exist; the hosts take the cluster's key
    up = cli("up", "--config", str(config.path), "--yes", check=False)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        out = tmp_path / "aws.json"
        bench = cli("bench", "--name", CLUSTER, "--find-capacity", "--slo", f"p99<={4 * SERVICE_MS}ms",
                    "--rate", "20", "--step-time", "6", "--json", str(out), timeout=600, check=False)
        assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
        data = json.loads(out.read_text())
        capacity = data["capacity"]
        hourly = plan(spec).hourly
        assert hourly and capacity["hourly_usd"] == pytest.approx(hourly)
        assert abs(capacity["capacity_rps"] - CAPACITY_RPS) <= 0.15 * CAPACITY_RPS, capacity
        assert capacity["usd_per_million"] == pytest.approx(hourly / (capacity["capacity_rps"] * 3600) * 1e6)
        assert f"{capacity['usd_per_million']:,.2f} per million" in bench.stdout
        assert [h["host"] for h in data["setup"]["load_from"]] == ["orchestrator"]  # the aws host names

        # compare: a second saved capacity (here the same cluster described as twice as big and dear)
        other = dict(data, capacity=dict(capacity, capacity_rps=2 * capacity["capacity_rps"],
                                         hourly_usd=2 * hourly, usd_per_million=capacity["usd_per_million"]),
                     setup=dict(data["setup"], workers=2))
        (tmp_path / "other.json").write_text(json.dumps(other))
        compare = cli("bench", "compare", str(out), str(tmp_path / "other.json"), check=False)
        assert compare.returncode == 0, compare.stderr
        assert "$ per million requests" in compare.stdout and f"{capacity['capacity_rps']:g}" in compare.stdout
        assert f"{2 * capacity['capacity_rps']:g}" in compare.stdout
    finally:
        down = cli("down", "--name", CLUSTER, "--yes", check=False)
        assert down.returncode == 0, down.stderr[-3000:]
