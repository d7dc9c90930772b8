"""The controller's IAM role and instance profile, one per cluster, attached to
the orchestrator's instance only: the in-cluster controller (mlcluster/elastic)
replaces lost workers with the instance's own role, so no key ever leaves this
machine. What the policy allows: docs/providers.md ("What it creates"). Their
names are fixed by the cluster's, so `down` finds them without state.
"""
from __future__ import annotations

import json
from typing import Optional

from ...errors import MlclusterError
from .api import AWS, AWSError
from .ec2 import TAG_CLUSTER

PATH = "/mlcluster/"
POLICY_NAME = "mlcluster-controller"
TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


def profile_name(cluster: str) -> str:
    """The role's and the profile's name (cluster names are at most 40 characters: within IAM's 64)."""
    return f"mlcluster-{cluster}-controller"


def policy(cluster: str, region: str) -> dict:
    """The controller's permissions: launch and tag only with the cluster's tag, terminate only its own."""
    arn = f"arn:aws:ec2:{region}:*:"
    tagged_at_launch = {"StringEquals": {f"aws:RequestTag/{TAG_CLUSTER}": cluster}}
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "LaunchOnlyTaggedInstances", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": [arn + "instance/*", arn + "volume/*"], "Condition": tagged_at_launch},
        # what a launch uses but does not create with tags: the image, the network, the group, the key
        {"Sid": "LaunchFrom", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": ["arn:aws:ec2:*::image/*", arn + "subnet/*", arn + "network-interface/*",
                      arn + "security-group/*", arn + "key-pair/*"]},
        {"Sid": "TagOnlyAtLaunch", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": [arn + "instance/*", arn + "volume/*"],
         "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances",
                                        f"aws:RequestTag/{TAG_CLUSTER}": cluster}}},
        {"Sid": "TerminateOnlyTheClustersInstances", "Effect": "Allow", "Action": "ec2:TerminateInstances",
         "Resource": arn + "instance/*",
         "Condition": {"StringEquals": {f"ec2:ResourceTag/{TAG_CLUSTER}": cluster}}},
        {"Sid": "Read", "Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"},
    ]}


def _get(aws: AWS, operation: str, **kwargs) -> Optional[dict]:
    try:
        return aws.iam(operation, **kwargs)
    except AWSError as exc:
        if exc.code == "NoSuchEntity":
            return None
        raise


def _found(aws: AWS, cluster: str) -> tuple[Optional[dict], Optional[dict]]:
    """The cluster's instance profile, and its role if it carries the cluster's tag (None: not there)."""
    name = profile_name(cluster)
    role = _get(aws, "get_role", RoleName=name)
    return _get(aws, "get_instance_profile", InstanceProfileName=name), role if _ours(role, cluster) else None


def ensure(aws: AWS, cluster: str) -> str:
    """The role (with exactly this policy), the profile, and the role in the
    profile; creates what is missing, rewrites the policy (idempotent). Returns
    the profile's name."""
    name, tags = profile_name(cluster), [{"Key": TAG_CLUSTER, "Value": cluster}]
    role = _get(aws, "get_role", RoleName=name)
    if role is None:
        aws.iam("create_role", RoleName=name, Path=PATH, AssumeRolePolicyDocument=json.dumps(TRUST), Tags=tags,
                Description=f"mlcluster {cluster}: the controller replaces the cluster's own instances")
    elif not _ours(role, cluster):
        raise MlclusterError(f"an IAM role named {name} exists but is not tagged {TAG_CLUSTER}={cluster}",
                             "delete it or choose another --name")
    aws.iam("put_role_policy", RoleName=name, PolicyName=POLICY_NAME,
            PolicyDocument=json.dumps(policy(cluster, aws.region)))
    profile = (_get(aws, "get_instance_profile", InstanceProfileName=name)
               or aws.iam("create_instance_profile", InstanceProfileName=name, Path=PATH, Tags=tags))
    if name not in {r["RoleName"] for r in profile["InstanceProfile"].get("Roles", [])}:
        aws.iam("add_role_to_instance_profile", InstanceProfileName=name, RoleName=name)
    return name


def _ours(role: Optional[dict], cluster: str) -> bool:
    """Whether `role` (a GetRole answer, None when there is none) carries the cluster's tag."""
    return role is not None and any(t["Key"] == TAG_CLUSTER and t["Value"] == cluster
                                    for t in role["Role"].get("Tags", []))


def remove(aws: AWS, cluster: str) -> list[str]:
    """Remove the profile, the role's policies and the role (what exists of
    them); returns what was removed, in words."""
    name, (profile, role) = profile_name(cluster), _found(aws, cluster)
    if profile is not None:
        for member in profile["InstanceProfile"].get("Roles", []):
            aws.iam("remove_role_from_instance_profile", InstanceProfileName=name, RoleName=member["RoleName"])
        aws.iam("delete_instance_profile", InstanceProfileName=name)
    if role is not None:
        for policy_name in aws.iam("list_role_policies", RoleName=name)["PolicyNames"]:
            aws.iam("delete_role_policy", RoleName=name, PolicyName=policy_name)
        for attached in aws.iam("list_attached_role_policies", RoleName=name)["AttachedPolicies"]:
            aws.iam("detach_role_policy", RoleName=name, PolicyArn=attached["PolicyArn"])
        aws.iam("delete_role", RoleName=name)
    return _words(name, profile, role)


def leftovers(aws: AWS, cluster: str) -> list[str]:
    """One sentence per IAM resource of `cluster` that still exists."""
    return _words(profile_name(cluster), *_found(aws, cluster))


def _words(name: str, profile: Optional[dict], role: Optional[dict]) -> list[str]:
    """The profile and the role named, of those that are there."""
    found = [("IAM instance profile", profile), ("IAM role", role)]
    return [f"{what} {name}" for what, answer in found if answer is not None]


def profile_not_ready(exc: AWSError) -> bool:
    """A new profile takes a few seconds to be usable by RunInstances (IAM is eventually consistent)."""
    return exc.code == "InvalidParameterValue" and "iaminstanceprofile" in exc.message.lower()
