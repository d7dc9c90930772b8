"""`down` and failures of `up` with the aws provider, against moto in server
mode on 127.0.0.1: whatever happens, `down` ends with nothing tagged left."""
from __future__ import annotations

import pytest

from mlcluster.errors import MlclusterError
from mlcluster.state import ClusterState, remove_cluster_dir
from support.aws import RecordingUI, make_provider, make_spec, provision
from support.moto import Fault, ec2_client, nothing_tagged, tagged


def down(server, state, name: str = "lab", provider=None) -> list[str]:
    options = {"region": "us-east-1", "endpoint_url": server.url}
    return (provider or make_provider(options=options)).down(name, state, RecordingUI())


def test_down_removes_everything_including_stopped_instances(moto):
    instances, state = provision(make_spec(moto))
    ec2_client(moto).stop_instances(InstanceIds=[instances["worker2"].id])
    assert down(moto, state) == []
    assert nothing_tagged(moto, "lab")
    assert moto.faults.count("DeleteKeyPair") == 1 and moto.faults.count("DeleteSecurityGroup") == 1


def test_down_without_state_finds_everything_by_tag(moto):
    provision(make_spec(moto))
    remove_cluster_dir("lab")
    assert down(moto, None) == []
    assert nothing_tagged(moto, "lab")


def test_down_leaves_other_clusters_alone(moto):
    provision(make_spec(moto, name="other", workers=1))
    _, state = provision(make_spec(moto))
    assert down(moto, state) == []
    assert len(tagged(moto, "other")["instances"]) == 2 and tagged(moto, "other")["security_groups"]


def test_down_retries_while_the_group_is_still_in_use(moto):
    _, state = provision(make_spec(moto, workers=1))
    moto.faults.inject(Fault("DeleteSecurityGroup", "DependencyViolation", times=3,
                             message="resource sg-x has a dependent object"))
    assert down(moto, state) == []
    assert moto.faults.count("DeleteSecurityGroup") == 4 and nothing_tagged(moto, "lab")


def test_down_reports_what_it_could_not_remove(moto):
    _, state = provision(make_spec(moto, workers=1))
    moto.faults.inject(Fault("DeleteKeyPair", "UnauthorizedOperation", times=-1))
    with pytest.raises(MlclusterError, match="not allowed to call ec2:DeleteKeyPair"):
        down(moto, state)
    moto.faults.clear()
    assert tagged(moto, "lab")["key_pairs"] == ["mlcluster-lab"] and not tagged(moto, "lab")["instances"]
    assert down(moto, state) == [] and nothing_tagged(moto, "lab")


# Each fault fails `up` just after one of its steps has created something.
FAILURES = {
    "image lookup": Fault("GetParameter", "InternalServerError", status=400),
    "key pair": Fault("CreateKeyPair", "InvalidParameterValue"),
    "security group": Fault("CreateSecurityGroup", "InvalidParameterValue"),
    "group rules": Fault("AuthorizeSecurityGroupIngress", "InvalidPermission.Malformed"),
    "orchestrator": Fault("RunInstances", "InvalidParameterCombination"),
    "second worker": Fault("RunInstances", "InvalidParameterCombination", after=2),
    "wait running": Fault("DescribeInstances", "InvalidParameterValue", after=1),
}


@pytest.mark.parametrize("step", FAILURES)
def test_failure_after_each_step_then_down_leaves_nothing(moto, step):
    moto.faults.inject(FAILURES[step])
    with pytest.raises(MlclusterError) as caught:
        provision(make_spec(moto))
    state = ClusterState.load("lab")
    if any(tagged(moto, "lab").values()):
        assert "mlcluster down --name lab" in caught.value.hint
    assert down(moto, state) == []
    assert nothing_tagged(moto, "lab")


@pytest.mark.parametrize("step", ["looking up", "creating the cluster's key pair",
                                  "creating the cluster's security group", "launching worker1",
                                  "launching worker2", "waiting for"])
def test_ctrl_c_at_each_step_then_down_leaves_nothing(moto, step):
    ui = RecordingUI(interrupt_at=step)
    with pytest.raises(KeyboardInterrupt):
        provision(make_spec(moto), ui=ui)
    if any(tagged(moto, "lab").values()):
        assert any("mlcluster down --name lab" in w for w in ui.warnings)
    assert down(moto, ClusterState.load("lab")) == []
    assert nothing_tagged(moto, "lab")


def test_missing_credentials_are_one_sentence(moto, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(MlclusterError, match="no AWS credentials were found") as caught:
        provision(make_spec(moto))
    assert "--profile" in caught.value.hint


def test_unknown_profile_is_one_sentence(moto):
    with pytest.raises(MlclusterError, match="profile 'nope' is not in your AWS configuration"):
        provision(make_spec(moto, profile="nope"))


def test_expired_credentials_are_one_sentence(moto):
    moto.faults.inject(Fault("DescribeVpcs", "RequestExpired", times=-1))
    with pytest.raises(MlclusterError, match="your AWS credentials have expired"):
        provision(make_spec(moto))


def test_missing_permission_names_the_call_and_the_policy(moto):
    moto.faults.inject(Fault("RunInstances", "UnauthorizedOperation", status=403, times=-1,
                             message="You are not authorized. Encoded authorization failure message: xyz"))
    with pytest.raises(MlclusterError, match="not allowed to call ec2:RunInstances") as caught:
        provision(make_spec(moto))
    assert "minimal IAM policy" in caught.value.hint and "xyz" not in str(caught.value)


def test_ubuntu_parameter_missing_and_bad_ami_are_clear(moto):
    with pytest.raises(MlclusterError, match="parameter /aws/service/canonical/ubuntu/.* does not exist"):
        provision(make_spec(moto, os="ubuntu"))
    with pytest.raises(MlclusterError, match="image ami-12345678 does not exist"):
        provision(make_spec(moto, ami="ami-12345678"))


def test_bad_settings_are_refused_before_any_call(moto):
    with pytest.raises(MlclusterError, match="unknown setting"):
        provision(make_spec(moto, regoin="us-east-1"))
    with pytest.raises(MlclusterError, match="not an IP address"):
        provision(make_spec(moto, allowed_cidr="my-laptop"))
    assert moto.faults.calls == []


def test_down_deletes_a_detached_tagged_volume(moto):
    _, state = provision(make_spec(moto, workers=1))
    ec2_client(moto).create_volume(AvailabilityZone="us-east-1a", Size=8, TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": "mlcluster:cluster", "Value": "lab"}]}])
    assert down(moto, state) == []
    assert nothing_tagged(moto, "lab") and moto.faults.count("DeleteVolume") == 1
