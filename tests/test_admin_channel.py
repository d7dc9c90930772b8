"""Admin traffic never in cleartext: with tcpdump on the test bridge (every
packet between this machine and the SSH test hosts), `up` (which registers the
containers with the token), `status` and `down` of an ssh cluster never put
the token on the wire, nor the workers' credential (it signs each /run_model),
while the lab's plain-HTTP /new_request still works and is plainly visible (so
the capture does see the HTTP traffic)."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import uuid

import requests

from support.console import cli
from support.sshcluster import cluster_config, host_network, ssh_marks
from support.sshhosts import missing_facilities
from support.waiting import wait_for


def _missing() -> str | None:
    return missing_facilities() or (None if shutil.which("tcpdump") else "tcpdump is not installed (.ci/setup-ssh.sh)")


# Not the other ssh tests' name: test hosts share one pid space, and `down`
# looks for the cluster's processes by a marker made of cluster and host names.
CLUSTER = "adminch"
pytestmark = ssh_marks(_missing, "admin channel")


class Capture:
    """tcpdump writing every full packet on `interface` to `path`, flushed per packet."""

    def __init__(self, interface: str, path):
        self.path = path
        self.proc = subprocess.Popen(["tcpdump", "-i", interface, "-s", "0", "-U", "-n", "-w", str(path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()  # "listening on ...": capturing from now on
        assert "listening on" in line, line

    def stop(self, across: str) -> bytes:
        """Everything captured. A datagram to `across` (an address beyond the
        interface) goes last: once the file holds it, it holds all before it."""
        marker = f"end of capture {uuid.uuid4()}".encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            wait_for(lambda: udp.sendto(marker, (across, 9)) and marker in self.path.read_bytes(),
                     "the capture to hold the last packets", timeout=10, interval=0.1)
        self.proc.terminate()
        self.proc.wait(timeout=10)
        return self.path.read_bytes()


net = host_network("orch", "w1")


def test_token_never_crosses_the_network_in_cleartext(net, tiny_model, tmp_path):
    home = tmp_path / "home"
    config = cluster_config(home, net, tiny_model, ["w1"], name=CLUSTER)
    capture = Capture(net.bridge, tmp_path / "bridge.pcap")
    try:
        up = cli("up", "--provider", "ssh", "--config", str(config), home=home, check=False)
        assert up.returncode == 0, up.stderr[-3000:]
        state = json.loads((home / CLUSTER / "state.json").read_text())
        token, url = state["token"], state["orchestrator_url"]
        assert url.startswith(f"http://{net.hosts['orch'].address}:")  # a non-loopback link
        status = cli("status", "--name", CLUSTER, "--json", home=home, check=False)
        assert status.returncode == 0, status.stderr
        assert {c["status"] for c in json.loads(status.stdout)["containers"]} == {"free"}
        again = cli("up", "--config", str(config), home=home, check=False)  # reconciles: no new registration needed
        assert again.returncode == 0, again.stderr[-2000:]
        answer = requests.post(f"{url}/new_request", json={"text": "plain lab request"}, timeout=30)
        assert answer.status_code == 200 and answer.json()["container"]["id"].startswith("w1-")
        down = cli("down", "--name", CLUSTER, "--yes", home=home, check=False)
        assert down.returncode == 0, down.stderr[-2000:]
    finally:
        packets = capture.stop(net.hosts["orch"].address)
    assert b"plain lab request" in packets and b"POST /new_request" in packets  # the capture sees HTTP
    assert b"SSH-2.0-" in packets  # ... and the SSH connections the admin calls went through
    assert token.encode() not in packets
    assert b"POST /workers" not in packets and b"DELETE /workers" not in packets
    # Nor the workers' credential: the orchestrator's /run_model calls to its containers are signed with it.
    assert state["worker_token"].encode() not in packets and state["worker_token"] != token
    assert not re.findall(rb"Authorization: Bearer", packets)
    assert b"POST /run_model" in packets
    assert re.search(rb"\r\nX-Mlcluster-Signature: t=\d+,n=[0-9a-f]{32},s=[0-9a-f]{64}\r\n", packets)
