"""`mlcluster check` on real parts: the machine's Docker engine, OpenSSH test hosts in network namespaces,
moto's server for AWS; the quota verdict as a table of figures."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mlcluster.check import quota_verdict
from mlcluster.resources import Resources
from mlcluster.state import ClusterState
from support.console import cli
from support.moto import Fault
from support.sshcluster import host_network, ssh_marks, toml_config


def checked(home: Path, *args: str, env: dict | None = None) -> tuple[int, dict]:
    result = cli("check", "--json", *args, home=home, env=env, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, {p["provider"]: p for p in json.loads(result.stdout)["providers"]}


def finding(report: dict, provider: str, what: str) -> dict:
    return next(c for c in report[provider]["checks"] if c["what"].startswith(what))


# -- local: the Docker engine and the model ----------------------------------------------------
@pytest.mark.docker
def test_local_sees_the_docker_engine(tmp_path):
    code, report = checked(tmp_path, "--provider", "local")
    assert code == 0 and report["local"]["ready"]
    assert finding(report, "local", "Docker engine")["ok"] is True
    assert finding(report, "local", "model stack")["ok"] is True


def test_a_docker_cluster_without_an_engine_is_not_ready(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('runtime = "docker"\n')
    no_engine = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    code, report = checked(tmp_path, "--provider", "local", "-c", str(config), env=no_engine)
    docker = finding(report, "local", "Docker engine")
    assert code == 1 and docker["ok"] is False and docker["required"] and "dockerd" in docker["next_step"]
    code, report = checked(tmp_path, "--provider", "local", env=no_engine)  # the process runtime needs none
    assert code == 0 and finding(report, "local", "Docker engine")["required"] is False


def test_the_model_cache_names_a_local_model(tmp_path, tiny_model):
    code, report = checked(tmp_path, "--provider", "local", env={"DOCKER_HOST": f"unix://{tmp_path}/none"})
    assert finding(report, "local", "model cache")["ok"] is False  # not cached: up will fetch it; not blocking
    config = tmp_path / "c.toml"
    config.write_text(f'model = "{tiny_model}"\n')
    code, report = checked(tmp_path, "--provider", "local", "-c", str(config),
                           env={"DOCKER_HOST": f"unix://{tmp_path}/none"})
    assert code == 0 and finding(report, "local", "model cache")["ok"] is True


def test_unknown_provider_is_a_usage_error(tmp_path):
    result = cli("check", "--provider", "gcp", home=tmp_path, check=False)
    assert result.returncode == 2 and "unknown provider" in result.stderr


# -- ssh: real sshd test hosts ------------------------------------------------------------------
net = host_network("orch", "w1")


class TestSSH:
    pytestmark = ssh_marks()

    def config(self, net, tmp_path) -> Path:
        path = tmp_path / "cluster.toml"
        path.write_text(toml_config(net, "overhead-test", ["w1"]))
        return path

    def test_every_host_reachable_is_ready(self, net, tmp_path):
        code, report = checked(tmp_path, "--provider", "ssh", "-c", str(self.config(net, tmp_path)))
        assert code == 0 and report["ssh"]["ready"], report
        assert {c["what"].split()[1] for c in report["ssh"]["checks"]} == {"orch", "w1"}
        assert not list(tmp_path.glob("*/state.json"))  # nothing recorded

    def test_a_changed_pinned_key_and_a_stopped_sshd_are_named(self, net, tmp_path, monkeypatch):
        config = self.config(net, tmp_path)
        orch, w1 = net.hosts["orch"], net.hosts["w1"]
        monkeypatch.setenv("MLCLUSTER_HOME", str(tmp_path))  # where `checked` points the command
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
        other = (tmp_path / "other.pub").read_text()
        keys = {f"{orch.address}:22": " ".join(orch.host_public_key().split()[:2]),
                f"{w1.address}:22": " ".join(other.split()[:2])}  # not w1's key: as if w1 had been replaced
        ClusterState("sshe2e", "ssh", "t", resources=Resources(host_keys=keys)).save()
        net.stop_sshd(w1)
        try:
            code, report = checked(tmp_path, "--provider", "ssh", "-c", str(config))
        finally:
            net.start_sshd(w1)
        assert code == 1 and not report["ssh"]["ready"]
        assert finding(report, "ssh", "host orch")["ok"] is True
        assert "pinned" in finding(report, "ssh", "host orch")["detail"]
        assert "refused" in finding(report, "ssh", "host w1")["detail"]
        code, report = checked(tmp_path, "--provider", "ssh", "-c", str(config))
        w1_finding = finding(report, "ssh", "host w1")
        assert code == 1 and w1_finding["ok"] is False and "changed" in w1_finding["detail"].lower()


def test_ssh_without_a_table_says_what_to_pass(tmp_path):
    code, report = checked(tmp_path, "--provider", "ssh")
    assert code == 1 and "-c cluster.toml" in report["ssh"]["checks"][0]["next_step"]


# -- aws: moto's server ---------------------------------------------------------------------------
def aws_config(tmp_path: Path, server, workers: int = 4) -> Path:
    path = tmp_path / "aws.toml"
    path.write_text(f'provider = "aws"\nworkers = {workers}\n[aws]\nregion = "us-east-1"\n'
                    f'endpoint_url = "{server.url}"\ninstance_type = "m5.large"\n')
    return path


def test_aws_credentials_and_an_unanswered_quota(moto, tmp_path):
    code, report = checked(tmp_path, "--provider", "aws", "-c", str(aws_config(tmp_path, moto)))
    assert code == 0 and report["aws"]["ready"]
    assert "arn:aws:sts::" in finding(report, "aws", "credentials")["detail"]
    quota = finding(report, "aws", "vCPU quota")
    assert quota["ok"] is None and quota["detail"].startswith("could not check") and "10 vCPUs" in quota["next_step"]
    assert moto.faults.count("GetServiceQuota") == 1


def test_aws_refusals_are_named(moto, tmp_path):
    config = aws_config(tmp_path, moto)
    moto.faults.inject(Fault("GetServiceQuota", "AccessDeniedException", times=-1))
    code, report = checked(tmp_path, "--provider", "aws", "-c", str(config))
    assert code == 0 and "not allowed to call service-quotas" in finding(report, "aws", "vCPU quota")["detail"]
    moto.faults.inject(Fault("GetCallerIdentity", "ExpiredToken", status=403, times=-1))
    code, report = checked(tmp_path, "--provider", "aws", "-c", str(config))
    assert code == 1 and "expired" in finding(report, "aws", "credentials")["detail"]


def test_aws_without_a_region_is_not_ready(moto, tmp_path):
    code, report = checked(tmp_path, "--provider", "aws")
    assert code == 1 and "region" in report["aws"]["checks"][0]["detail"]


@pytest.mark.parametrize("needed, limit, ok", [(10, 32, True), (32, 32, True), (34, 32, False), (2, 0, False)])
def test_quota_verdict(needed, limit, ok):
    verdict = quota_verdict(needed, limit, "5 × m5.large")
    assert verdict.ok is ok and f"{needed:g} vCPUs needed" in verdict.detail
    assert bool(verdict.next_step) is (not ok)
