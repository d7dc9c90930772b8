"""The state file: typed records in, the same records out, and files written
by an older mlcluster still load."""
from __future__ import annotations

import json
import stat

import pytest

from mlcluster.errors import MlclusterError
from mlcluster.state import STATE_VERSION, ClusterSpec, ClusterState, ContainerRecord


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCLUSTER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_a_saved_state_loads_as_the_same_records(home):
    spec = ClusterSpec(name="lab", provider="ssh", workers=3, model="overhead-test",
                       provider_options={"ssh": {"user": "root"}})
    state = ClusterState(name="lab", provider="ssh", token="secret", spec=spec,
                         containers=[ContainerRecord("w1-1", "10.0.0.2", 5000, "w1")])
    state.save()
    path = home / "lab" / "state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["version"] == STATE_VERSION
    loaded = ClusterState.load("lab")
    assert loaded == state and isinstance(loaded.spec, ClusterSpec) and loaded.spec.workers == 3


def test_a_version_1_file_loads(home):
    """Version 1 had no `version` and kept the spec as a dict, sometimes partial."""
    (home / "old").mkdir(parents=True)
    (home / "old" / "state.json").write_text(json.dumps({
        "name": "old", "provider": "aws", "token": "t", "runtime": "process", "orchestrator_url": "",
        "containers": [{"id": "worker1-1", "host": "10.0.0.5", "port": 5000, "worker": "worker1", "capacity": 1}],
        "resources": {"aws": {"region": "eu-west-1"}}, "created_at": 1.0,
        "spec": {"provider_options": {"aws": {"region": "eu-west-1"}}, "workers": 2}}))
    state = ClusterState.load("old")
    assert state.spec.name == "old" and state.spec.provider == "aws" and state.spec.workers == 2
    assert state.spec.provider_options == {"aws": {"region": "eu-west-1"}}
    assert state.containers == [ContainerRecord("worker1-1", "10.0.0.5", 5000, "worker1", 1)]
    assert state.version == STATE_VERSION  # saved again, it is written in today's form


def test_a_version_1_file_with_an_empty_spec_loads(home):
    (home / "bare").mkdir(parents=True)
    (home / "bare" / "state.json").write_text(json.dumps({"name": "bare", "provider": "local", "token": "t",
                                                           "spec": {}}))
    assert ClusterState.load("bare").spec == ClusterSpec(name="bare", provider="local")


def test_a_file_from_a_newer_mlcluster_is_a_clear_error(home):
    (home / "new").mkdir(parents=True)
    (home / "new" / "state.json").write_text(json.dumps({"name": "new", "provider": "local", "token": "t",
                                                          "version": STATE_VERSION + 1}))
    with pytest.raises(MlclusterError, match="newer mlcluster"):
        ClusterState.load("new")
