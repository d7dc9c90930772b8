"""The command line's conventions, through the real console script: version,
help, completion, exit 2 for usage errors, `list`, tables at 80 columns,
config typos refused by name."""
from __future__ import annotations

import io
import json
import os

import pytest
from rich.console import Console

from mlcluster import __version__
from mlcluster.output import status_table
from mlcluster.state import ClusterState
from support.console import cli, home_fixture

home = home_fixture()


def usage_error(*args: str, home=None) -> str:
    result = cli(*args, home=home, check=False)
    assert result.returncode == 2, (args, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    return " ".join(result.stderr.split())


def test_version_help_and_completion():
    for flag in ("--version", "-V"):
        result = cli(flag)
        assert result.stdout.strip() == f"mlcluster {__version__}"
    assert "--workers" in cli("up", "-h").stdout
    assert "down" in cli("-h").stdout
    # Typer's completion: what bash would get for `mlcluster do<TAB>`.
    env = dict(os.environ, _MLCLUSTER_COMPLETE="complete_bash", COMP_WORDS="mlcluster do", COMP_CWORD="1")
    assert "down" in cli(env=env).stdout.split()
    assert "_MLCLUSTER_COMPLETE" in cli("--show-completion", "bash").stdout


def test_usage_errors_exit_2_bad_values_and_conflicts_included(home, tmp_path):
    assert "--workers" in usage_error("up", "--workers", "0", home=home)
    assert "--containers-per-worker" in usage_error("up", "-m", "17", home=home)
    assert "--port" in usage_error("up", "--port", "70000", home=home)
    assert "not allowed" in usage_error("status", "--name", "Bad Name!", home=home)
    assert "--concurrency" in usage_error("bench", "--url", "http://127.0.0.1:1", "--rate", "5",
                                          "--concurrency", "3", home=home)
    assert "-c" in usage_error("bench", "--url", "http://127.0.0.1:1", "-c", "3", home=home)  # -c is --config
    assert "does not exist" in usage_error("up", "--config", str(tmp_path / "none.toml"), home=home)
    assert not home.exists()  # nothing was started or recorded


@pytest.mark.parametrize("text, words", [
    ('wrkers = 3\n', "config: unknown setting 'wrkers'; did you mean 'workers'?"),
    ('workers = "3"\n', "config: workers must be an integer, not '3'"),
    ('[local]\nprot = 8000\n', "[local]: unknown setting 'prot'; did you mean 'port'?"),
    ('[local]\nport = "8000"\n', "[local] port must be an integer"),
    ('provider = "aws"\n[aws]\nregoin = "us-east-1"\n', "[aws]: unknown setting 'regoin'; did you mean 'region'?"),
    ('provider = "ssh"\n[ssh]\norchestrator = "10.0.0.1"\nworkers = ["10.0.0.2"]\nuesr = "x"\n',
     "[ssh]: unknown setting 'uesr'; did you mean 'user'?"),
])
def test_config_typos_are_refused_by_name_in_every_table(home, tmp_path, text, words):
    config = tmp_path / "c.toml"
    config.write_text(text)
    assert words in usage_error("up", "--config", str(config), "--yes", home=home)


def test_list_has_a_header_and_says_when_it_is_empty(home):
    empty = cli("list", home=home)
    assert empty.stdout == "" and "no clusters are known" in empty.stderr
    assert json.loads(cli("list", "--json", home=home).stdout) == []
    ClusterState(name="lab", provider="ssh", token="t", orchestrator_url="http://10.0.0.1:8000").save()
    lines = cli("list", home=home).stdout.splitlines()
    assert lines[0].split() == ["name", "provider", "containers", "orchestrator"]
    assert lines[1].split() == ["lab", "ssh", "0", "http://10.0.0.1:8000"]


def test_status_tables_keep_every_header_whole_at_80_columns():
    container = {"id": "worker12-1", "host": "203.0.113.120", "port": 5000, "status": "draining", "in_flight": 3,
                 "served": 123456, "failed": 7, "recent_latency_ms": 1234.5, "instance_id": "i-0123456789abcdef0",
                 "instance_type": "c5.2xlarge", "zone": "ap-southeast-2a", "instance_state": "shutting-down",
                 "host_address": "203.0.113.120"}
    snapshot = {"name": "lab", "orchestrator_url": "http://203.0.113.10:8000", "containers": [container],
                "queue": {"depth": 0, "limit": 100}, "in_flight": 3, "served": 123456, "failed": 7, "uptime_s": 12}
    stream = io.StringIO()
    Console(file=stream, width=80).print(status_table(snapshot))
    text = stream.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    header_lines = [line.split() for line in text.splitlines() if line.split()[:1] == ["container"]]
    assert header_lines[0] == ["container", "address", "status", "in-flight", "served", "failed", "ms"]
    assert header_lines[1] == ["container", "instance", "type", "zone", "state", "public", "IP"]
    assert "…" not in text  # nothing truncated: long values fold onto a second line


def test_writing_a_model_shows_no_library_progress_bar(tmp_path):
    result = cli("make-model", str(tmp_path / "m"), "--size", "tiny")
    assert "it/s" not in result.stderr and "%|" not in result.stderr, result.stderr
