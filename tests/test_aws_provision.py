"""The aws provider's EC2 part against moto's EC2 and SSM in server mode on
127.0.0.1 (boto3 over real HTTP, nothing patched). No SSH here: moto's
public IPs are in a real AWS range and are never connected to."""
from __future__ import annotations

import base64
import stat

import paramiko
import pytest

from mlcluster.errors import MlclusterError
from mlcluster.output import plan_rows, plan_text
from mlcluster.providers.aws.ec2 import TAG_CLUSTER
from mlcluster.providers.aws.options import plan
from mlcluster.providers.aws.provider import KEY_FILE
from mlcluster.state import ClusterSpec, ClusterState, remove_cluster_dir
from support.aws import ALLOWED, RecordingUI, make_provider, make_spec, provision
from support.moto import Fault, ec2_client, nothing_tagged, tagged


def test_plan_shows_the_lab_cost_before_anything_exists(moto):
    lab = make_spec(moto, workers=4)
    p = plan(lab)
    rows = {r[0]: r for r in plan_rows(p)}
    assert rows["orchestrator instance"][1:] == ["1", "m4.large", "$0.100", "$0.100"]
    assert rows["worker instances"][1:] == ["4", "m4.large", "$0.100", "$0.400"]
    assert 0.50 < p.hourly < 0.55  # 5 × $0.10 plus public IPv4 addresses and gp3 volumes
    assert p.vcpus == 10
    assert "estimate" in plan_text(p) and ALLOWED in plan_text(p)
    assert nothing_tagged(moto, "lab")


def test_unknown_instance_type_has_no_price():
    p = plan(ClusterSpec(name="x", provider="aws", provider_options={"aws": {"instance_type": "z9.huge"}}))
    assert p.hourly is None and "unknown" in plan_text(p) and "not in mlcluster's price table" in plan_text(p)


def test_provision_creates_tagged_instances_with_imdsv2_and_a_private_key(moto):
    instances, state = provision(make_spec(moto))
    assert sorted(instances) == ["orchestrator", "worker1", "worker2"]
    assert all(i.state == "running" and i.private_ip for i in instances.values())
    raw = [i for r in ec2_client(moto).describe_instances(InstanceIds=[i.id for i in instances.values()])
           ["Reservations"] for i in r["Instances"]]
    for inst in raw:
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["mlcluster:cluster"] == "lab" and tags["mlcluster:role"] in ("orchestrator", "worker")
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
        assert inst["KeyName"] == "mlcluster-lab" and inst["InstanceType"] == "m4.large"
    key = state.dir / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    paramiko.Ed25519Key.from_private_key_file(str(key))
    saved = ClusterState.load("lab").resources.aws
    assert saved.instances == {n: i.id for n, i in instances.items()}
    assert saved.security_group and saved.key_pair and saved.region == "us-east-1"
    assert len(tagged(moto, "lab")["volumes"]) == 3
    launched = moto.faults.params("RunInstances")
    assert [r["InstanceInitiatedShutdownBehavior"] for r in launched] == ["terminate"] * 3
    for inst in raw:  # and moto's EC2 holds it as an attribute of each instance
        behaviour = ec2_client(moto).describe_instance_attribute(InstanceId=inst["InstanceId"],
                                                                  Attribute="instanceInitiatedShutdownBehavior")
        assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    first_boot = base64.b64decode(launched[0]["UserData"]).decode()
    assert "python3.11" in first_boot and "usermod -aG docker ec2-user" in first_boot


def rules_of(server, group_id: str) -> set[tuple]:
    group = ec2_client(server).describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    rules = set()
    for p in group["IpPermissions"]:
        rules |= {(p["FromPort"], p["ToPort"], r["CidrIp"]) for r in p["IpRanges"]}
        rules |= {(p["FromPort"], p["ToPort"], r["CidrIpv6"]) for r in p["Ipv6Ranges"]}
        rules |= {(p["FromPort"], p["ToPort"], r["GroupId"]) for r in p["UserIdGroupPairs"]}
    return rules


def test_security_group_opens_only_ssh_and_orchestrator_to_the_caller(moto):
    _, state = provision(make_spec(moto))
    group = state.resources.aws.security_group
    assert rules_of(moto, group) == {(22, 22, ALLOWED), (8000, 8000, ALLOWED), (5000, 5001, group)}


def test_with_autostop_the_workers_may_read_the_orchestrators_status(moto):
    spec = make_spec(moto)
    spec.autostop = "30m"
    _, state = provision(spec)
    group = state.resources.aws.security_group
    assert rules_of(moto, group) == {(22, 22, ALLOWED), (8000, 8000, ALLOWED), (8000, 8000, group),
                                     (5000, 5001, group)}


def test_caller_address_comes_from_the_injected_lookup_and_changes_are_synced(moto):
    provider = make_provider(ip_lookup=lambda: "198.51.100.7")
    spec = make_spec(moto, allowed_cidr="")
    _, state = provision(spec, provider)
    group = state.resources.aws.security_group
    assert (22, 22, "198.51.100.7/32") in rules_of(moto, group)
    _, state = provision(make_spec(moto, allowed_cidr="192.0.2.0/24"), provider)
    assert rules_of(moto, group) == {(22, 22, "192.0.2.0/24"), (8000, 8000, "192.0.2.0/24"), (5000, 5001, group)}


def test_whole_internet_only_when_asked_and_with_a_warning(moto):
    ui = RecordingUI()
    _, state = provision(make_spec(moto, allowed_cidr="0.0.0.0/0"), ui=ui)
    assert (22, 22, "0.0.0.0/0") in rules_of(moto, state.resources.aws.security_group)
    assert any("whole internet" in w for w in ui.warnings)


def test_an_ipv6_caller_gets_ipv6_rules(moto):
    _, state = provision(make_spec(moto, allowed_cidr="2001:db8::5"))
    group = state.resources.aws.security_group
    assert rules_of(moto, group) == {(22, 22, "2001:db8::5/128"), (8000, 8000, "2001:db8::5/128"), (5000, 5001, group)}


def test_no_address_and_no_lookup_is_a_clear_error(moto):
    with pytest.raises(MlclusterError, match="no allowed_cidr is set"):
        provision(make_spec(moto, allowed_cidr="", detect_ip=False))
    assert nothing_tagged(moto, "lab")


def test_up_twice_creates_nothing_new(moto):
    spec = make_spec(moto)
    first, _ = provision(spec)
    before = {a: moto.faults.count(a) for a in ("RunInstances", "CreateSecurityGroup", "CreateKeyPair")}
    ui = RecordingUI()
    second, _ = provision(spec, ui=ui)
    assert {n: i.id for n, i in second.items()} == {n: i.id for n, i in first.items()}
    assert {a: moto.faults.count(a) for a in before} == before
    assert moto.faults.count("AuthorizeSecurityGroupIngress") == 1
    assert ui.warnings == []


def test_up_starts_stopped_instances_and_terminates_ones_no_longer_asked_for(moto):
    """`up -w 1` after `up -w 2`: worker2 is terminated and forgotten; worker1,
    stopped meanwhile, is started again."""
    first, _ = provision(make_spec(moto, workers=2))
    ec2_client(moto).stop_instances(InstanceIds=[first["worker1"].id])
    ui = RecordingUI()
    second, state = provision(make_spec(moto, workers=1), ui=ui)
    assert second["worker1"].id == first["worker1"].id and second["worker1"].state == "running"
    assert moto.faults.count("StartInstances") == 1 and moto.faults.count("RunInstances") == 3
    assert moto.faults.count("TerminateInstances") == 1 and ui.warnings == []
    gone = ec2_client(moto).describe_instances(InstanceIds=[first["worker2"].id])["Reservations"][0]["Instances"][0]
    assert gone["State"]["Name"] in ("shutting-down", "terminated")
    assert set(state.resources.aws.instances) == {"orchestrator", "worker1"}
    assert first["worker2"].id not in state.resources.aws.address_owners.values()


def test_up_warns_about_a_tagged_instance_it_did_not_name_and_leaves_it(moto):
    first, state = provision(make_spec(moto, workers=1))
    client = ec2_client(moto)
    image = client.describe_instances(InstanceIds=[first["worker1"].id])["Reservations"][0]["Instances"][0]["ImageId"]
    stray = client.run_instances(  # tagged for the cluster, but with no name of ours: not ours to terminate
        ImageId=image, MinCount=1, MaxCount=1, TagSpecifications=[{"ResourceType": "instance", "Tags": [
            {"Key": TAG_CLUSTER, "Value": "lab"}, {"Key": "Name", "Value": "someone-else"}]}])["Instances"][0]
    ui = RecordingUI()
    provision(make_spec(moto, workers=1), ui=ui)
    assert any(stray["InstanceId"] in w and "more instance" in w for w in ui.warnings)
    assert moto.faults.count("TerminateInstances") == 0


def test_state_lost_up_reuses_tagged_resources_but_replaces_a_key_nobody_uses(moto):
    spec = make_spec(moto, workers=1)
    first, state = provision(spec)
    remove_cluster_dir("lab")  # the key file goes with the state
    with pytest.raises(MlclusterError, match="private key .* is no longer"):
        provision(spec)
    ec2_client(moto).terminate_instances(InstanceIds=[i.id for i in first.values()])
    again, state = provision(spec)
    assert (state.dir / KEY_FILE).exists() and moto.faults.count("CreateKeyPair") == 2
    assert moto.faults.count("CreateSecurityGroup") == 1


def test_insufficient_capacity_moves_to_the_next_zone(moto):
    subnets = sorted((s["AvailabilityZone"], s["SubnetId"]) for s in ec2_client(moto).describe_subnets(
        Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"])
    (zone_a, subnet_a), (zone_b, subnet_b) = subnets[:2]
    moto.faults.inject(Fault("RunInstances", "InsufficientInstanceCapacity", status=500, times=-1,
                             when={"SubnetId": subnet_a}))
    ui = RecordingUI()
    instances, _ = provision(make_spec(moto), ui=ui)
    assert {i.zone for i in instances.values()} == {zone_b}
    tried = [p["SubnetId"] for p in moto.faults.params("RunInstances")]
    assert tried == [subnet_a, subnet_b, subnet_b, subnet_b]  # the full zone is tried once, then skipped
    assert any(zone_a in w and "InsufficientInstanceCapacity" in w for w in ui.warnings)


def test_no_capacity_anywhere_stops_with_what_was_tried(moto):
    moto.faults.inject(Fault("RunInstances", "InsufficientInstanceCapacity", status=500, times=-1))
    with pytest.raises(MlclusterError, match="no availability zone in us-east-1 has capacity") as caught:
        provision(make_spec(moto))
    assert "us-east-1a" in caught.value.hint and "mlcluster down --name lab" in caught.value.hint
    assert moto.faults.count("RunInstances") == 6


def test_throttling_is_retried_with_growing_backoff(moto):
    moto.faults.inject(Fault("RunInstances", "RequestLimitExceeded", status=503, times=3))
    sleeps: list[float] = []
    instances, _ = provision(make_spec(moto, workers=1), make_provider(sleeps))
    assert len(instances) == 2 and moto.faults.count("RunInstances") == 5
    assert len(sleeps) == 3 and all(0 <= s <= 0.5 * 2 ** n for n, s in enumerate(sleeps))


def test_throttling_that_never_ends_gives_up_with_a_sentence(moto):
    moto.faults.inject(Fault("DescribeVpcs", "Throttling", status=400, times=-1))
    sleeps: list[float] = []
    with pytest.raises(MlclusterError, match="kept throttling DescribeVpcs"):
        provision(make_spec(moto), make_provider(sleeps))
    assert moto.faults.count("DescribeVpcs") == 8 and len(sleeps) == 7


def test_vcpu_limit_stops_at_once_saying_what_to_ask_for(moto):
    moto.faults.inject(Fault("RunInstances", "VcpuLimitExceeded", times=-1, after=1))
    with pytest.raises(MlclusterError, match="vCPU limit") as caught:
        provision(make_spec(moto, workers=2))
    assert "L-1216C47A" in caught.value.hint and "at least 6 vCPUs" in caught.value.hint
    assert "mlcluster down --name lab" in caught.value.hint
    assert moto.faults.count("RunInstances") == 2  # no other zone, no retry
    assert len(tagged(moto, "lab")["instances"]) == 1
