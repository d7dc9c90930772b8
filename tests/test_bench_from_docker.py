"""`bench --from orchestrator` where the orchestrator runs in Docker (the ssh
provider's default runtime): the host has no Python of ours, so the agent runs
in a container of the orchestrator's image, on the host's network, and is
gone when the run ends. The orchestrator on a Docker test host (`wd`, its
own dockerd), one process-runtime worker host (`w1`) of overhead-test
containers."""
from __future__ import annotations

import json
import subprocess

import pytest

from support.console import cli
from support.sshcluster import docker_over_ssh_missing, host_network, ssh_marks, toml_config
from support.waiting import wait_for

NAME = "benchdk"
SERVICE_MS = 20


pytestmark = [*ssh_marks(docker_over_ssh_missing, "Docker over SSH"), pytest.mark.docker,
              pytest.mark.timeout(1500)]


net = host_network("w1", "wd", docker=("wd",))


def test_agent_runs_in_the_orchestrators_image_and_leaves_nothing(net, tmp_path):
    wd = net.hosts["wd"]
    home = tmp_path / "home"
    home.mkdir()
    config = home / "cluster.toml"
    config.write_text(toml_config(net, "overhead-test", ["w1"], orchestrator="wd", docker=("wd",), images="ship",
                                  orchestrator_port=8100, worker_port=5100)
                      .replace('name = "sshe2e"', f'name = "{NAME}"')
                      .replace('model = "overhead-test"', f'model = "overhead-test"\nservice_ms = {SERVICE_MS}'))
    up = cli("up", "--provider", "ssh", "--config", str(config), timeout=1800, check=False, home=home)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        out = tmp_path / "r.json"
        bench = cli("bench", "--name", NAME, "--concurrency", "2", "--requests", "60", "--json", str(out),
                    check=False, home=home)
        assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-3000:]
        data = json.loads(out.read_text())
        assert data["ok"] == 60 and data["setup"]["load_from"][0]["host"] == "wd"  # the default for ssh
        assert data["setup"]["load_from"][0]["engine"] in ("c", "python")
        assert data["breakdown_ms"]["network"]["p50"] < 10

        def agents() -> str:
            return subprocess.run(["docker", "-H", wd.docker_host, "ps", "-a", "-q", "--filter",
                                   "label=mlcluster.role=bench-agent"], capture_output=True, text=True,
                                  timeout=60, check=True).stdout.strip()
        wait_for(lambda: agents() == "", "the agent's container to be removed (--rm)", timeout=30)
    finally:
        down = cli("down", "--name", NAME, "--yes", check=False, home=home)
    assert down.returncode == 0, down.stderr[-2000:]
