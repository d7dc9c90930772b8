"""`up` on a running cluster asked to serve something else. A local process
cluster is rolled (mlcluster/rollout; tests/test_rollout_local.py): the
state names the new model only when its containers serve it, so `up` never
reports a change it did not make. Other clusters refuse (test_rollout_policy.py)."""
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


def test_up_with_another_model_changes_what_the_containers_serve_before_it_says_so(home, tiny_model, tmp_path):
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    args = ["up", "--name", "lab", "--workers", "1", "--containers-per-worker", "1", "--backend", "torch"]
    cli(*args, "--model", tiny_model)
    status = json.loads(cli("status", "--name", "lab", "--json").stdout)
    before = served_model(status["orchestrator_url"])
    assert "other-model" not in before

    changed = cli(*args, "--model", str(other), "--yes")
    assert f"serving {other}" in changed.stdout
    after = json.loads(cli("status", "--name", "lab", "--json").stdout)
    assert after["model"] == str(other)  # the state says what the containers serve ...
    assert served_model(after["orchestrator_url"]).startswith("other-model")  # ... and they serve it
    saved = json.loads((home / "lab" / "state.json").read_text())
    assert saved["spec"]["model"] == str(other)

    cli(*args, "--model", str(other))  # the same model again: reconciles as before
    assert served_model(after["orchestrator_url"]).startswith("other-model")
    cli("down", "--name", "lab", "--yes")
    assert find_marked(marker("lab")) == []
