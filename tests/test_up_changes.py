"""`up` on a running cluster asked to serve something else. Until rolling
updates exist its containers cannot change what they serve in place, so `up`
refuses and records nothing: it never reports a change it did not make."""
from __future__ import annotations

import json
import shutil

import requests

from mlcluster.deploy.localhost import find_marked, marker
from support.console import cli, home_fixture

home = home_fixture("lab")


def served_model(url: str) -> str:
    answer = requests.post(url + "/new_request", json={"text": "which model answers"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["result"]["model"]


def test_up_with_another_model_is_refused_and_changes_nothing(home, tiny_model, tmp_path):
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    args = ["up", "--name", "lab", "--workers", "1", "--containers-per-worker", "1", "--backend", "torch"]
    cli(*args, "--model", tiny_model)
    status = json.loads(cli("status", "--name", "lab", "--json").stdout)
    before = served_model(status["orchestrator_url"])

    refused = cli(*args, "--model", str(other), "--yes", check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "already serves" in refused.stderr and "down --name lab" in refused.stderr
    assert "Traceback" not in refused.stderr and "serving" not in refused.stdout

    after = json.loads(cli("status", "--name", "lab", "--json").stdout)
    assert after["model"] == tiny_model  # the state still says what the containers serve
    assert served_model(after["orchestrator_url"]) == before and "other-model" not in before
    saved = json.loads((home / "lab" / "state.json").read_text())
    assert saved["spec"]["model"] == tiny_model

    cli(*args, "--model", tiny_model)  # the same model again: reconciles as before
    cli("down", "--name", "lab", "--yes")
    assert find_marked(marker("lab")) == []
