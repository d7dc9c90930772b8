"""The `mlcluster` command with the aws provider, as a subprocess against moto
in server mode on 127.0.0.1: plans, one-sentence errors, and `down` finding
a cluster by tag when its state file is gone."""
from __future__ import annotations

from pathlib import Path

from mlcluster.providers.aws.api import POLICY_HINT
from mlcluster.state import remove_cluster_dir
from support.aws import make_spec, provision
from support.console import cli
from support.moto import nothing_tagged, tagged


def write_config(path: Path, server, **aws: str) -> Path:
    lines = ['name = "lab"', 'provider = "aws"', "workers = 4", "[aws]", f'endpoint_url = "{server.url}"',
             'allowed_cidr = "203.0.113.5/32"', *(f'{k} = "{v}"' for k, v in aws.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_up_without_yes_shows_the_plan_and_creates_nothing(moto, tmp_path):
    config = write_config(tmp_path / "c.toml", moto)
    result = cli("up", "--config", str(config), "--region", "us-east-1", check=False)
    assert result.returncode == 1 and "pass --yes" in result.stderr
    assert "m4.large" in result.stderr and "$0.400" in result.stderr and "estimate" in result.stderr
    assert moto.faults.calls == [] and nothing_tagged(moto, "lab")


def test_missing_credentials_exit_1_with_one_sentence(moto, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    config = write_config(tmp_path / "c.toml", moto, region="us-east-1")
    result = cli("up", "--config", str(config), "--yes", check=False)
    assert result.returncode == 1, result.stderr
    assert "no AWS credentials were found" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "home" / "lab").exists()


def test_no_region_anywhere_is_one_sentence(moto, tmp_path):
    result = cli("up", "--config", str(write_config(tmp_path / "c.toml", moto)), "--yes", check=False)
    assert result.returncode == 1 and "no AWS region is set" in result.stderr and "Traceback" not in result.stderr


def test_down_with_the_state_file_deleted_finds_everything_by_tag(moto, tmp_path):
    provision(make_spec(moto, workers=2))
    assert len(tagged(moto, "lab")["instances"]) == 3
    remove_cluster_dir("lab")
    config = write_config(tmp_path / "c.toml", moto, region="us-east-1")
    result = cli("down", "--name", "lab", "--provider", "aws", "--config", str(config), "--yes", check=False)
    assert result.returncode == 0, result.stderr
    assert nothing_tagged(moto, "lab")


def test_region_and_credentials_are_checked_before_the_plan_is_shown(moto, tmp_path, monkeypatch):
    no_region = cli("up", "--config", str(write_config(tmp_path / "c.toml", moto)), check=False)
    assert no_region.returncode == 1 and "no AWS region is set" in no_region.stderr
    assert "estimate" not in no_region.stderr and "pass --yes" not in no_region.stderr
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    no_keys = cli("up", "--config", str(write_config(tmp_path / "c.toml", moto, region="us-east-1")), check=False)
    assert no_keys.returncode == 1 and "no AWS credentials were found" in no_keys.stderr
    assert "estimate" not in no_keys.stderr and "Traceback" not in no_keys.stderr
    assert moto.faults.calls == []


def test_hints_print_table_names_and_name_documents_that_exist(moto, tmp_path):
    config = write_config(tmp_path / "c.toml", moto, region="us-east-1")
    config.write_text(config.read_text().replace('allowed_cidr = "203.0.113.5/32"', "detect_ip = false"))
    result = cli("up", "--config", str(config), "--yes", check=False)
    assert result.returncode == 1 and "in the [aws] table" in result.stderr, result.stderr
    page, _, anchor = POLICY_HINT.rpartition("see ")[2].partition("#")
    assert "{#" + anchor + "}" in (Path(__file__).parent.parent / page).read_text()  # the hint's section exists
