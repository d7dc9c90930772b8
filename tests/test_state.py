"""The state file: typed records in, the same records out, and files written
by an older mlcluster still load."""
from __future__ import annotations

import dataclasses
import json
import stat

import pytest

from mlcluster.errors import MlclusterError
from mlcluster.resources import LOCAL_HOST, AWSResources, DockerSetup, HostConfig, Resources, Service
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

# The `resources` as the typed records wrote them before a service had one record (three
# shapes): a local process cluster's, recorded from a real `mlcluster up --workers 2
# --autostop 30m` of that code; a local Docker cluster's and an ssh cluster's, written
# by that code's own records (`Resources.to_json`).
TYPED_RESOURCES = {
    "process": {"autostop_started": 1796390413.5422902, "host_keys": {}, "processes": [
        {"admin_port": 54187, "id": "orchestrator", "log": "/h/old/logs/orchestrator.log", "pid": 30461,
         "port": 60003, "role": "orchestrator", "worker": ""},
        {"admin_port": 0, "id": "worker1-1", "log": "/h/old/logs/worker1-1.log", "pid": 30466, "port": 35639,
         "role": "worker", "worker": "worker1"},
        {"admin_port": 0, "id": "worker2-1", "log": "/h/old/logs/worker2-1.log", "pid": 30471, "port": 39631,
         "role": "worker", "worker": "worker2"},
        {"admin_port": 0, "id": "controller", "log": "/h/old/logs/controller.log", "pid": 30475, "port": 0,
         "role": "controller", "worker": ""}]},
    "docker": {"processes": [{"id": "watchdog", "role": "watchdog", "worker": "", "port": 0,
                              "log": "/h/lab/logs/watchdog.log", "pid": 4242, "admin_port": 0}],
               "docker": {"containers": {"mlcluster-lab-orchestrator": "9f1c0de5a2b3",
                                         "mlcluster-lab-worker1-1": "77aa01bc3d4e",
                                         "mlcluster-lab-worker1-2": "0b5e6f7a8c9d"},
                          "volumes": ["mlcluster-lab-state"],
                          "images": {"orchestrator": "mlcluster-orchestrator:3f2a",
                                     "worker": "mlcluster-worker-onnx:81c0"},
                          "network": "5d41402abc4b", "orchestrator_port": 41005, "admin_port": 41006},
               "host_keys": {}, "autostop_started": 1764590000.5},
    "ssh": {"processes": [], "ssh": {
        "hosts": {"w1": {"name": "w1", "address": "10.0.0.2", "private_address": "10.0.0.2", "user": "root",
                         "port": 22, "key": "", "runtime": "docker", "python": "", "workdir": ".mlcluster/lab",
                         "bind": "0.0.0.0"},
                  "orch": {"name": "orch", "address": "10.0.0.1", "private_address": "10.0.0.1", "user": "root",
                           "port": 22, "key": "/k/id", "runtime": "process", "python": "",
                           "workdir": "/root/.mlcluster/lab", "bind": "0.0.0.0"}},
        "services": {
            "orchestrator": {"runtime": "process", "host": "orch", "port": 8000, "admin_port": 8001, "pid": 77,
                             "log": "/root/.mlcluster/lab/orchestrator.log", "container": "", "image": "", "kind": "",
                             "command": ""},
            "w1-1": {"runtime": "docker", "host": "w1", "port": 5000, "admin_port": 0, "pid": 0, "log": "",
                     "container": "mlc-lab-w1-1", "image": "mlcluster-worker:1", "kind": "", "command": ""},
            "controller": {"runtime": "process", "host": "orch", "port": 0, "admin_port": 0, "pid": 79,
                           "log": "/root/.mlcluster/lab/controller.log", "container": "", "image": "",
                           "kind": "controller", "command": "python3 -m mlcluster.elastic.pool lab"},
            "watchdog-w1": {"runtime": "process", "host": "w1", "port": 0, "admin_port": 0, "pid": 78,
                            "log": "/r/watchdog.log", "container": "", "image": "", "kind": "watchdog",
                            "command": "python3 -I /r/watchdog.py"}}},
        "host_keys": {"10.0.0.2:22": "ssh-ed25519 AAAA"}, "autostop_started": 1764590000.5},
}
W1 = HostConfig("w1", "10.0.0.2", "10.0.0.2", "root", 22, "", "docker", "", ".mlcluster/lab", "0.0.0.0")
ORCH = HostConfig("orch", "10.0.0.1", "10.0.0.1", "root", 22, "/k/id", "process", "", "/root/.mlcluster/lab", "0.0.0.0")


def write_state(home, resources: dict) -> None:
    (home / "lab").mkdir(parents=True, exist_ok=True)
    (home / "lab" / "state.json").write_text(json.dumps({
        "name": "lab", "provider": "ssh", "token": "t", "version": 2, "spec": {}, "resources": resources}))


def test_version_2_resources_load_as_typed_records(home):
    write_state(home, V2_RESOURCES["local"])
    assert ClusterState.load("lab").resources == Resources(services={
        "orchestrator": Service("process", LOCAL_HOST, 41000, pid=11, log="/h/o.log", kind="orchestrator"),
        "worker1-1": Service("process", "worker1", 41001, pid=12, log="/h/w.log", kind="worker", worker="worker1")})
    write_state(home, V2_RESOURCES["docker"])
    loaded = ClusterState.load("lab").resources
    assert loaded.docker == DockerSetup(["mlcluster-lab-state"],
                                        {"worker": "mlcluster-worker:1", "orchestrator": "mlcluster-orchestrator:1"},
                                        "net1")
    assert loaded.services == {"orchestrator": Service("docker", LOCAL_HOST, 41005,
                                                       container="mlcluster-lab-orchestrator", kind="orchestrator")}
    write_state(home, V2_RESOURCES["ssh"])
    loaded = ClusterState.load("lab").resources
    assert loaded.hosts == {"w1": W1}
    assert loaded.services == {
        "w1-1": Service("docker", "w1", 5000, container="mlc-lab-w1-1", image="mlcluster-worker:1", kind="worker"),
        "orchestrator": Service("process", "w1", 8000, pid=77, log="/r/orchestrator.log", kind="orchestrator"),
        "watchdog-w1": Service("process", "w1", 0, pid=78, log="/r/watchdog.log", kind="watchdog",
                               command="python3 -I /r/watchdog.py")}
    assert loaded.autostop_started == 1764590000.5  # kept in one place now: Resources'
    assert loaded.host_keys == {"10.0.0.2:22": "ssh-ed25519 AAAA"} and loaded.aws is None and loaded.docker is None
    write_state(home, V2_RESOURCES["aws"])
    assert ClusterState.load("lab").resources.aws == AWSResources(
        "eu-west-1", {"orchestrator": "i-1"}, "sg-1", "key-1", "mlcluster-lab", "/h/aws-key.pem",
        {"198.51.100.2": "i-1"})


def test_files_of_before_one_service_record_load_into_it(home):
    """Each provider's services, from its own old part, into the one `services`
    (their hosts into the one `hosts`), nothing lost."""
    write_state(home, TYPED_RESOURCES["process"])
    loaded = ClusterState.load("lab").resources
    assert loaded == Resources(services={
        "orchestrator": Service("process", LOCAL_HOST, 60003, 54187, 30461, "/h/old/logs/orchestrator.log",
                                kind="orchestrator"),
        # a worker's host: the simulated machine it stands for, as the deployment names this machine's hosts
        "worker1-1": Service("process", "worker1", 35639, 0, 30466, "/h/old/logs/worker1-1.log", worker="worker1"),
        "worker2-1": Service("process", "worker2", 39631, 0, 30471, "/h/old/logs/worker2-1.log", worker="worker2"),
        "controller": Service("process", LOCAL_HOST, 0, 0, 30475, "/h/old/logs/controller.log", kind="controller")},
        autostop_started=1796390413.5422902)
    assert list(loaded.of_kind("worker")) == ["worker1-1", "worker2-1"]

    write_state(home, TYPED_RESOURCES["docker"])
    loaded = ClusterState.load("lab").resources
    assert loaded.services == {
        "watchdog": Service("process", LOCAL_HOST, 0, 0, 4242, "/h/lab/logs/watchdog.log", kind="watchdog"),
        # the orchestrator's published ports, kept beside the containers before, are its record's now
        "orchestrator": Service("docker", LOCAL_HOST, 41005, 41006, container="mlcluster-lab-orchestrator",
                                kind="orchestrator"),
        "worker1-1": Service("docker", LOCAL_HOST, container="mlcluster-lab-worker1-1", worker="worker1"),
        "worker1-2": Service("docker", LOCAL_HOST, container="mlcluster-lab-worker1-2", worker="worker1")}
    assert loaded.docker == DockerSetup(["mlcluster-lab-state"],
                                        {"orchestrator": "mlcluster-orchestrator:3f2a",
                                         "worker": "mlcluster-worker-onnx:81c0"},
                                        "5d41402abc4b")
    assert loaded.autostop_started == 1764590000.5 and not loaded.hosts

    write_state(home, TYPED_RESOURCES["ssh"])
    loaded = ClusterState.load("lab").resources
    assert loaded == Resources(hosts={"w1": W1, "orch": ORCH}, services={
        "orchestrator": Service("process", "orch", 8000, 8001, 77, "/root/.mlcluster/lab/orchestrator.log",
                                kind="orchestrator"),
        "w1-1": Service("docker", "w1", 5000, container="mlc-lab-w1-1", image="mlcluster-worker:1", kind="worker"),
        "controller": Service("process", "orch", 0, 0, 79, "/root/.mlcluster/lab/controller.log", kind="controller",
                              command="python3 -m mlcluster.elastic.pool lab"),
        "watchdog-w1": Service("process", "w1", 0, 0, 78, "/r/watchdog.log", kind="watchdog",
                               command="python3 -I /r/watchdog.py")},
        host_keys={"10.0.0.2:22": "ssh-ed25519 AAAA"}, autostop_started=1764590000.5)


@pytest.mark.parametrize("kind", [f"v2-{k}" for k in sorted(V2_RESOURCES)] + sorted(TYPED_RESOURCES))
def test_an_old_file_saved_again_is_written_in_todays_shape(home, kind):
    """Loaded and saved again, an old file is written in today's one shape (its
    parts of before gone) and loads back as the same records."""
    old = V2_RESOURCES[kind[3:]] if kind.startswith("v2-") else TYPED_RESOURCES[kind]
    write_state(home, old)
    loaded = ClusterState.load("lab")
    loaded.save()
    saved = json.loads((home / "lab" / "state.json").read_text())["resources"]
    assert "processes" not in saved and "ssh" not in saved and "containers" not in saved.get("docker", {})
    assert set(saved) == {"hosts", "services", "host_keys"} | ({"autostop_started"} if loaded.resources.autostop_started
                                                               else set()) | ({"docker", "aws"} & set(old))
    assert ClusterState.load("lab").resources == loaded.resources
    assert loaded.resources == ClusterState.from_json(
        {"name": "lab", "provider": "ssh", "token": "t", "resources": old}).resources


def test_resources_are_empty_until_a_provider_records_something():
    assert Resources().is_empty() and Resources(host_keys={}).is_empty()
    assert not Resources(docker=DockerSetup()).is_empty()  # touched: a failed first `up` keeps its directory
    assert not Resources(hosts={"w1": W1}).is_empty()  # a host `up` meant to reach (its `down` says so)
    assert Resources(hosts={LOCAL_HOST: dataclasses.replace(W1, local=True)}).is_empty()  # this machine: nothing made
    assert not Resources(host_keys={"a:22": "k"}).is_empty()
