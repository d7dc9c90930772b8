"""The controller's aws part (elastic/aws_fleet.py) against moto's server and
the instance metadata service of one instance (tests/support/imds.py), with
boto3's default chain as on the orchestrator's instance: no keys in the
environment, only the metadata service. A profile's credentials replace a
lost worker within the cap; without a profile nothing is launched and the
error is said; nothing is launched once the orchestrator's instance goes."""
from __future__ import annotations

import dataclasses
import json

import pytest

from mlcluster.elastic.aws_fleet import FLEET_FILE, Fleet
from mlcluster.elastic.poolconfig import METADATA_RETRIES
from mlcluster.providers.aws.fleet import fleet_of
from mlcluster.providers.aws.options import AWSOptions
from support.aws import make_provider, make_spec, provision
from support.imds import CREDENTIALS, InstanceMetadata
from support.moto import ec2_client


@pytest.fixture
def cluster(moto):
    spec = make_spec(moto, workers=3, spot=True)
    instances, state = provision(spec)
    o = AWSOptions.from_spec(spec)
    return instances, state, fleet_of(make_provider().connect(o), state, o, 22)


def only_the_instance_profile(monkeypatch, imds: InstanceMetadata) -> None:
    """boto3's chain as the controller has it on an instance: no keys, the metadata service at `imds`."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
    for key, value in METADATA_RETRIES.items():  # as the controller is started with (elastic/pool_here.py)
        monkeypatch.setenv(key, value)


def test_the_profile_replaces_a_lost_worker_within_the_cap(moto, cluster, monkeypatch, tmp_path):
    instances, state, config = cluster
    assert config.orchestrator == instances["orchestrator"].id and config.cap == 3 and config.spot
    assert sorted(config.instances) == ["worker1", "worker2", "worker3"]
    ec2_client(moto).terminate_instances(InstanceIds=[instances["worker1"].id, instances["worker2"].id])
    said: list[tuple[str, str, str]] = []
    with InstanceMetadata(moto.url, instances["orchestrator"].id) as imds:
        only_the_instance_profile(monkeypatch, imds)
        fleet = Fleet(dataclasses.replace(config, cap=2), "lab", tmp_path, lambda *e: said.append(e))
        running = fleet.look(100.0)
        assert imds.asked[CREDENTIALS] >= 1
    (name, new_id, address), = running  # two lost, room for one
    assert name == "worker1" and new_id != instances["worker1"].id and address  # its private address
    assert [(k, c) for k, _, c in said] == [("heal", "worker1"), ("error", "worker2")]
    assert "(spot)" in said[0][1] and "cap of 2" in said[1][1]
    assert fleet.look(101.0) == []  # before look_s: EC2 is not asked again
    saved = tmp_path / FLEET_FILE
    assert oct(saved.stat().st_mode & 0o777) == "0o600"
    assert json.loads(saved.read_text())["instances"]["worker1"] == new_id
    fleet.pin("worker1", address, "ssh-ed25519 AAAAkey")  # learned at the first login
    again = Fleet(config, "lab", tmp_path, lambda *e: None)  # a restarted controller
    assert again.instances["worker1"] == new_id
    assert again.known() == [("worker1", new_id, address, "ssh-ed25519 AAAAkey")]
    assert Fleet(dataclasses.replace(config, instances={**config.instances, "worker1": new_id}), "lab", tmp_path,
                 lambda *e: None).known() == []  # `up` knows it: its config has the address and key


def test_without_a_profile_nothing_is_launched_and_the_error_is_said(moto, cluster, monkeypatch, tmp_path):
    instances, _, config = cluster
    ec2_client(moto).terminate_instances(InstanceIds=[instances["worker1"].id])
    launched = moto.faults.count("RunInstances")
    said: list[tuple[str, str, str]] = []
    with InstanceMetadata(moto.url, instances["worker2"].id) as imds:  # a worker's instance: no profile
        only_the_instance_profile(monkeypatch, imds)
        assert Fleet(config, "lab", tmp_path, lambda *e: said.append(e)).look(0.0) == []
        assert imds.asked[CREDENTIALS] >= 1
    assert [k for k, _, _ in said] == ["error"] and "credentials" in said[0][1].lower()
    assert moto.faults.count("RunInstances") == launched


def test_nothing_is_launched_once_the_orchestrators_instance_goes(moto, cluster, tmp_path):
    instances, _, config = cluster
    ec2_client(moto).terminate_instances(InstanceIds=[instances["orchestrator"].id, instances["worker1"].id])
    launched = moto.faults.count("RunInstances")
    said: list[tuple[str, str, str]] = []
    assert Fleet(config, "lab", tmp_path, lambda *e: said.append(e)).look(0.0) == []
    assert [k for k, _, _ in said] == ["stopped"] and moto.faults.count("RunInstances") == launched
