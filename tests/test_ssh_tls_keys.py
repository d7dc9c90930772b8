"""`up --tls --api-keys` with the ssh provider onto SSH test hosts (network
namespaces with their own sshd; process runtime): the orchestrator on a test
host serves HTTPS with the cluster's certificate given inline in its 0600
environment file, `status` pins it, keys are added and revoked at once
through the SSH admin channel. (The aws provider deploys through the same code.)"""
from __future__ import annotations

import json

from mlcluster import tls
from support.console import cli
from support.sshcluster import CLUSTER, host_network, ssh_marks, toml_config

pytestmark = ssh_marks()


net = host_network("orch", "w1")


def test_ssh_cluster_with_tls_and_keys(net, tiny_model, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    config = home / "cluster.toml"
    config.write_text(toml_config(net, tiny_model, ["w1"]).replace("containers_per_worker = 2",
                                                                   "containers_per_worker = 1"))
    up = cli("up", "--provider", "ssh", "--config", str(config), "--tls", "--api-keys", "--json",
             check=False, home=home)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        made = json.loads(up.stdout)
        key = made["api_key"]["key"]
        assert made["orchestrator_url"] == f"https://{net.hosts['orch'].address}:8000"
        assert "warning" not in up.stderr  # a private test range
        state = json.loads((home / CLUSTER / "state.json").read_text())
        env_file = net.hosts["orch"].workdir / "orchestrator.env"
        env = env_file.read_text()
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        assert "ORCH_TLS_KEY_B64" in env and state["api_keys"][0]["sha256"] in env and key not in env
        assert cli("status", "--name", CLUSTER, check=False, home=home).returncode == 0
        url = made["orchestrator_url"]
        with tls.pinned_session(state["tls_cert"], state["tls_fingerprint"]) as http:
            def post(k):
                return http.post(url + "/new_request", json={"text": "hi"}, timeout=20,
                                 headers={"Authorization": f"Bearer {k}"} if k else {}).status_code
            assert post(None) == 401 and post(key) == 200
            second = cli("keys", "create", "--name", CLUSTER, check=False, home=home).stdout.strip()
            assert post(second) == 200
            revoked = cli("keys", "revoke", second.split("_")[1], "--name", CLUSTER, check=False, home=home)
            assert revoked.returncode == 0
            assert post(second) == 401 and post(key) == 200
    finally:
        cli("down", "--name", CLUSTER, "--yes", check=False, home=home)
