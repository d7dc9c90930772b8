"""The controller's IAM role and instance profile (issue 20), against moto's
server (IAM on the same endpoint as EC2): it exists while the cluster does,
only the orchestrator carries it, its policy really holds the tag
conditions (read back from moto), a second `up` makes nothing new, and
`down` removes it."""
from __future__ import annotations

import json
from urllib.parse import unquote

from mlcluster.providers.aws.iam import profile_name
from support.aws import RecordingUI, make_provider, make_spec, provision
from support.moto import Fault, ec2_client, iam_client, nothing_tagged, tagged_iam

NAME = "mlcluster-lab-controller"


def policy_document(server) -> dict:
    raw = iam_client(server).get_role_policy(RoleName=NAME, PolicyName="mlcluster-controller")["PolicyDocument"]
    return raw if isinstance(raw, dict) else json.loads(unquote(raw))


def statements(server, action: str) -> list[dict]:
    return [s for s in policy_document(server)["Statement"]
            if action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]


def test_the_profile_exists_with_the_cluster_and_only_the_orchestrator_carries_it(moto):
    instances, state = provision(make_spec(moto, workers=2))
    assert profile_name("lab") == NAME and state.resources.aws.instance_profile == NAME
    assert tagged_iam(moto, "lab") == {"iam_roles": [NAME], "instance_profiles": [NAME]}
    profile = iam_client(moto).get_instance_profile(InstanceProfileName=NAME)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [NAME]
    trust = profile["Roles"][0]["AssumeRolePolicyDocument"]
    trust = trust if isinstance(trust, dict) else json.loads(unquote(trust))
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    described = ec2_client(moto).describe_instances(InstanceIds=[i.id for i in instances.values()])
    carried = {next(t["Value"] for t in i["Tags"] if t["Key"] == "mlcluster:name"): i.get("IamInstanceProfile", {})
               for r in described["Reservations"] for i in r["Instances"]}
    assert carried["orchestrator"]["Arn"] == profile["Arn"]
    assert carried["worker1"] == {} and carried["worker2"] == {}


def test_the_policy_allows_only_the_clusters_tagged_instances(moto):
    provision(make_spec(moto, workers=1))
    launch = [s for s in statements(moto, "ec2:RunInstances") if "Condition" in s]
    assert len(launch) == 1
    assert launch[0]["Condition"] == {"StringEquals": {"aws:RequestTag/mlcluster:cluster": "lab"}}
    assert {r.rsplit(":", 1)[1] for r in launch[0]["Resource"]} == {"instance/*", "volume/*"}
    untagged = [s for s in statements(moto, "ec2:RunInstances") if "Condition" not in s]
    assert all("instance/" not in r and "volume/" not in r for s in untagged for r in s["Resource"])
    (terminate,) = statements(moto, "ec2:TerminateInstances")
    assert terminate["Condition"] == {"StringEquals": {"ec2:ResourceTag/mlcluster:cluster": "lab"}}
    (tags,) = statements(moto, "ec2:CreateTags")
    assert tags["Condition"]["StringEquals"] == {"ec2:CreateAction": "RunInstances",
                                                 "aws:RequestTag/mlcluster:cluster": "lab"}
    everything = {a for s in policy_document(moto)["Statement"]
                  for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert everything == {"ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances", "ec2:Describe*"}
    assert all(s["Effect"] == "Allow" for s in policy_document(moto)["Statement"])


def test_a_second_up_makes_nothing_new(moto):
    spec = make_spec(moto, workers=1)
    first, _ = provision(spec)
    moto.faults.clear()
    second, _ = provision(spec)
    assert {n: i.id for n, i in first.items()} == {n: i.id for n, i in second.items()}
    for action in ("CreateRole", "CreateInstanceProfile", "AddRoleToInstanceProfile", "RunInstances",
                   "AssociateIamInstanceProfile"):
        assert moto.faults.count(action) == 0, action
    assert tagged_iam(moto, "lab") == {"iam_roles": [NAME], "instance_profiles": [NAME]}


def test_an_orchestrator_launched_before_the_profile_was_usable_is_retried(moto):
    # IAM is eventually consistent: EC2 refuses a brand-new profile name for a few seconds
    moto.faults.inject(Fault("RunInstances", "InvalidParameterValue", times=2, when={"IamInstanceProfile.Name": NAME},
                             message=f"Value ({NAME}) for parameter iamInstanceProfile.name is invalid. "
                                     "Invalid IAM Instance Profile name"))
    instances, _ = provision(make_spec(moto, workers=1))
    assert instances["orchestrator"].profile_arn.endswith("/" + NAME)
    assert moto.faults.count("RunInstances") == 4  # 2 refused, then the orchestrator and the worker


def test_down_removes_the_role_and_profile(moto):
    _, state = provision(make_spec(moto, workers=1))
    options = {"region": "us-east-1", "endpoint_url": moto.url}
    assert make_provider(options=options).down("lab", state, RecordingUI()) == []
    assert tagged_iam(moto, "lab") == {"iam_roles": [], "instance_profiles": []}
    assert nothing_tagged(moto, "lab")
    for action in ("RemoveRoleFromInstanceProfile", "DeleteInstanceProfile", "DeleteRolePolicy", "DeleteRole"):
        assert moto.faults.count(action) == 1, action


def test_down_without_state_finds_the_profile_by_name(moto):
    from mlcluster.state import remove_cluster_dir
    provision(make_spec(moto, workers=1))
    remove_cluster_dir("lab")
    options = {"region": "us-east-1", "endpoint_url": moto.url}
    assert make_provider(options=options).down("lab", None, RecordingUI()) == []
    assert nothing_tagged(moto, "lab")


def test_another_clusters_profile_is_left_alone(moto):
    provision(make_spec(moto, name="other", workers=1))
    _, state = provision(make_spec(moto, workers=1))
    options = {"region": "us-east-1", "endpoint_url": moto.url}
    assert make_provider(options=options).down("lab", state, RecordingUI()) == []
    assert tagged_iam(moto, "other") == {"iam_roles": ["mlcluster-other-controller"],
                                         "instance_profiles": ["mlcluster-other-controller"]}


def test_an_orchestrator_without_the_profile_gets_it_on_the_next_up(moto):
    spec = make_spec(moto, workers=1)
    instances, _ = provision(spec)
    ec2 = ec2_client(moto)
    (association,) = ec2.describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"]
    ec2.disassociate_iam_instance_profile(AssociationId=association["AssociationId"])
    assert ec2.describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"] == []
    again, _ = provision(spec)  # as for a cluster made before the controller's profile existed
    (association,) = ec2.describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"]
    assert association["InstanceId"] == instances["orchestrator"].id == again["orchestrator"].id
    assert association["IamInstanceProfile"]["Arn"].endswith("/" + NAME)
    assert moto.faults.count("AssociateIamInstanceProfile") == 1
