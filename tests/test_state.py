"""The state file: typed records in, the same records out, and files written
by an older mlcluster still load."""
from __future__ import annotations

import json
import stat

import pytest

from mlcluster.errors import MlclusterError
from mlcluster.resources import AWSResources, HostConfig, LocalDocker, LocalProcess, Resources, SSHResources, SSHService
from mlcluster.state import STATE_VERSION, ClusterSpec, ClusterState, ContainerRecord
from support.console import home_fixture

home = home_fixture(autouse=True)  # every test here writes state: always a private home


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


# The `resources` of version-2 files as mlcluster wrote them before they were typed
# (one per provider and runtime; the ssh one also from a record that predates "runtime", and with an
# autostop watchdog and its start time as issue 12b wrote them).
V2_RESOURCES = {
    "local": {"processes": [
        {"role": "orchestrator", "id": "orchestrator", "worker": "", "port": 41000, "log": "/h/o.log", "pid": 11},
        {"role": "worker", "id": "worker1-1", "worker": "worker1", "port": 41001, "log": "/h/w.log", "pid": 12}]},
    "docker": {"docker": {"containers": {"mlcluster-lab-orchestrator": "abc"}, "volumes": ["mlcluster-lab-state"],
                          "images": {"worker": "mlcluster-worker:1", "orchestrator": "mlcluster-orchestrator:1"},
                          "network": "net1", "orchestrator_port": 41005}},
    "ssh": {"host_keys": {"10.0.0.2:22": "ssh-ed25519 AAAA"}, "ssh": {
        "hosts": {"w1": {"name": "w1", "address": "10.0.0.2", "private_address": "10.0.0.2", "user": "root",
                         "port": 22, "key": "", "runtime": "docker", "python": "", "workdir": ".mlcluster/lab",
                         "bind": "0.0.0.0"}},
        "services": {"w1-1": {"container": "mlc-lab-w1-1", "runtime": "docker", "image": "mlcluster-worker:1",
                              "host": "w1", "port": 5000},
                     "orchestrator": {"pid": 77, "log": "/r/orchestrator.log", "host": "w1", "port": 8000},
                     "watchdog-w1": {"pid": 78, "log": "/r/watchdog.log", "runtime": "process", "kind": "watchdog",
                                     "command": "python3 -I /r/watchdog.py", "host": "w1", "port": 0}},
        "autostop_started": 1764590000.5}},
    "aws": {"host_keys": {}, "aws": {"region": "eu-west-1", "key_pair": "key-1", "key_name": "mlcluster-lab",
                                     "key_file": "/h/aws-key.pem", "security_group": "sg-1",
                                     "instances": {"orchestrator": "i-1"}, "address_owners": {"198.51.100.2": "i-1"}}},
}


def write_state(home, resources: dict) -> None:
    (home / "lab").mkdir(parents=True, exist_ok=True)
    (home / "lab" / "state.json").write_text(json.dumps({
        "name": "lab", "provider": "ssh", "token": "t", "version": 2, "spec": {}, "resources": resources}))


def test_version_2_resources_load_as_typed_records(home):
    write_state(home, V2_RESOURCES["local"])
    assert ClusterState.load("lab").resources == Resources(processes=[
        LocalProcess("orchestrator", "orchestrator", "", 41000, "/h/o.log", 11),
        LocalProcess("worker1-1", "worker", "worker1", 41001, "/h/w.log", 12)])
    write_state(home, V2_RESOURCES["docker"])
    assert ClusterState.load("lab").resources.docker == LocalDocker(
        {"mlcluster-lab-orchestrator": "abc"}, ["mlcluster-lab-state"],
        {"worker": "mlcluster-worker:1", "orchestrator": "mlcluster-orchestrator:1"}, "net1", 41005)
    write_state(home, V2_RESOURCES["ssh"])
    loaded = ClusterState.load("lab").resources
    assert loaded.ssh == SSHResources(
        hosts={"w1": HostConfig("w1", "10.0.0.2", "10.0.0.2", "root", 22, "", "docker", "", ".mlcluster/lab", "0.0.0.0")},
        services={"w1-1": SSHService("docker", "w1", 5000, container="mlc-lab-w1-1", image="mlcluster-worker:1"),
                  "orchestrator": SSHService("process", "w1", 8000, pid=77, log="/r/orchestrator.log"),
                  "watchdog-w1": SSHService("process", "w1", 0, pid=78, log="/r/watchdog.log", kind="watchdog",
                                            command="python3 -I /r/watchdog.py")})
    assert loaded.autostop_started == 1764590000.5  # kept in one place now: Resources'
    assert loaded.host_keys == {"10.0.0.2:22": "ssh-ed25519 AAAA"} and loaded.aws is None and not loaded.processes
    write_state(home, V2_RESOURCES["aws"])
    assert ClusterState.load("lab").resources.aws == AWSResources(
        "eu-west-1", {"orchestrator": "i-1"}, "sg-1", "key-1", "mlcluster-lab", "/h/aws-key.pem", {"198.51.100.2": "i-1"})


@pytest.mark.parametrize("kind", sorted(V2_RESOURCES))
def test_saved_resources_keep_their_json_shape(home, kind):
    """Loaded and saved again, each part is written as before (fields a record
    did not have gain their defaults; parts no provider touched stay out)."""
    write_state(home, V2_RESOURCES[kind])
    ClusterState.load("lab").save()
    saved = json.loads((home / "lab" / "state.json").read_text())["resources"]
    # an ssh cluster's autostop start moved from its ssh part to the one place every cluster keeps it
    moved = {"autostop_started"} if "autostop_started" in V2_RESOURCES[kind].get("ssh", {}) else set()
    assert set(saved) == set(V2_RESOURCES[kind]) | {"processes", "host_keys"} | moved
    if moved:
        assert saved["autostop_started"] == V2_RESOURCES[kind]["ssh"]["autostop_started"]
        assert "autostop_started" not in saved["ssh"]
    added = {"admin_port": 0}  # fields records gained since version 2, with their defaults
    for part, value in V2_RESOURCES[kind].items():
        if part == "ssh":
            assert saved["ssh"]["hosts"] == value["hosts"]
            for sid, record in value["services"].items():
                assert saved["ssh"]["services"][sid].items() >= record.items()
        elif part == "processes":
            assert saved[part] == [{**p, **added} for p in value]
        elif part == "docker":
            assert saved[part] == {**value, "admin_port": None}
        elif part == "aws":  # spot markets and the controller's IAM profile came later
            assert saved[part] == {**value, "markets": {}, "instance_profile": ""}
        else:
            assert saved[part] == value
    assert ClusterState.load("lab").resources == ClusterState.from_json(
        {"name": "lab", "provider": "ssh", "token": "t", "resources": V2_RESOURCES[kind]}).resources


def test_resources_are_empty_until_a_provider_records_something():
    assert Resources().is_empty() and Resources(host_keys={}).is_empty()
    assert not Resources(ssh=SSHResources()).is_empty()  # touched: a failed first `up` keeps its directory
    assert not Resources(host_keys={"a:22": "k"}).is_empty()
