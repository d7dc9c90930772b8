"""An ssh-provider cluster on the SSH test hosts: its config file, load
through its orchestrator, what runs in a host's namespace."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Optional

import pytest
import requests

from .sshhosts import SSHTestNetwork, missing_facilities

CLUSTER = "sshe2e"


BASE_IMAGE = "mlcluster-base:bookworm"  # .ci/setup-docker.sh builds it with debootstrap


def docker_over_ssh_missing() -> Optional[str]:
    """What SSH test hosts with a Docker engine lack here (None: nothing)."""
    reason = missing_facilities(docker=True)
    if reason:
        return reason
    probe = subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no Docker engine with the base image {BASE_IMAGE} here (run .ci/setup-docker.sh)"
    return None


def ssh_marks(missing=missing_facilities, label: str = "SSH test hosts") -> list:
    """A test module's `pytestmark`: marked ssh, skipped when `missing()`
    (by default: what the SSH test hosts lack) names something, saying what."""
    reason = missing()
    return [pytest.mark.ssh, pytest.mark.skipif(bool(reason), reason=f"{label}: {reason}")]


def host_network(*names: str, docker: tuple[str, ...] = (), scope: str = "module"):
    """A `net` fixture (module-scoped unless `scope` says otherwise): SSH test
    hosts with these names, those in `docker` running a Docker engine too.
    Closing the network also ends every service started on the hosts."""
    @pytest.fixture(scope=scope)
    def net():
        with SSHTestNetwork() as network:
            network.add_hosts(list(names), docker=docker)
            yield network
    return net


def cluster_config(home: Path, net: SSHTestNetwork, model: str, workers: list[str], name: str = CLUSTER,
                   **options) -> Path:
    """`home` made, with a config file for cluster `name` on these hosts in it."""
    home.mkdir()
    config = home / "cluster.toml"
    config.write_text(toml_config(net, model, workers, **options).replace(f'name = "{CLUSTER}"', f'name = "{name}"'))
    return config


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
             # the hosts' sshd reads this file (the controller's key goes there), never ~/.ssh of this machine
             f'authorized_keys = "{net.authorized_keys}"',
             # in-flight requests on a host that vanished are retried elsewhere after this
             'orchestrator_env = { ORCH_FORWARD_TIMEOUT_S = "4" }',
             *(f"{k} = {json.dumps(v)}" for k, v in ssh.items()),
             f"orchestrator = {host(orchestrator)}",
             "workers = [ " + ", ".join(host(w) for w in workers) + " ]"]
    return "\n".join(lines) + "\n"


def status(url: str) -> dict:
    return requests.get(f"{url}/status", timeout=5).json()


class LineReader:
    """The lines a process writes to stdout, read on a thread as they come,
    so a test can wait for one without blocking on a read."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))


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
