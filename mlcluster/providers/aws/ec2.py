"""EC2 resources of one cluster, found by tag: instances, the security group,
the key pair. Small functions over `api.AWS`; the order of things (what
`up` and `down` do) lives in `mlcluster.providers.aws`.

Every resource is tagged at creation (`TagSpecifications`, atomic with the
create call) with `mlcluster:cluster=<name>`, so a resource created just before
a crash or Ctrl-C is still found by `down`.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from ...errors import MlclusterError
from .api import AWS, AWSError, retry_while

TAG_CLUSTER = "mlcluster:cluster"
TAG_ROLE = "mlcluster:role"      # orchestrator | worker
TAG_NAME = "mlcluster:name"      # orchestrator | worker1 | worker2 ...
UP_STATES = ("pending", "running", "stopping", "stopped")
NOT_TERMINATED = UP_STATES + ("shutting-down",)
CAPACITY_CODES = frozenset({"InsufficientInstanceCapacity", "InsufficientCapacity", "Unsupported"})
LIMIT_CODES = frozenset({"VcpuLimitExceeded", "InstanceLimitExceeded"})
SPOT, ON_DEMAND = "spot", "on-demand"
# What EC2 answers RunInstances when spot capacity is refused (EC2 API error codes):
# in one zone (another zone may have some) ...
ZONE_SPOT_CODES = CAPACITY_CODES | {"UnfulfillableCapacity"}
# ... or for the whole account or price (no other zone helps).
ACCOUNT_SPOT_CODES = frozenset({"SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded"})
SPOT_REFUSED = ZONE_SPOT_CODES | ACCOUNT_SPOT_CODES
# One-time spot that ends (never stops) when AWS reclaims the capacity: a reclaimed worker is a lost host.
SPOT_OPTIONS = {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time",
                                                      "InstanceInterruptionBehavior": "terminate"}}
Sleep = Callable[[float], None]


def tag_spec(resource_type: str, cluster: str, **extra: str) -> dict:
    """Tags applied by the create call itself (never a separate CreateTags)."""
    pairs = {TAG_CLUSTER: cluster, **extra}
    return {"ResourceType": resource_type, "Tags": [{"Key": k, "Value": v} for k, v in pairs.items()]}


def by_cluster(cluster: str) -> dict:
    return {"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]}


def resource_name(cluster: str) -> str:
    """The name of the cluster's security group and key pair."""
    return f"mlcluster-{cluster}"


# -- instances ---------------------------------------------------------------
@dataclass
class Instance:
    id: str
    name: str          # orchestrator | workerN ("" when untagged)
    type: str
    zone: str
    state: str
    public_ip: str
    private_ip: str
    market: str = ON_DEMAND   # spot | on-demand (EC2's InstanceLifecycle)
    profile_arn: str = ""      # the IAM instance profile attached ("" when none)

    @classmethod
    def from_api(cls, d: dict) -> "Instance":
        t = {x["Key"]: x["Value"] for x in d.get("Tags", [])}
        return cls(d["InstanceId"], t.get(TAG_NAME, ""), d.get("InstanceType", ""),
                   d.get("Placement", {}).get("AvailabilityZone", ""), d["State"]["Name"],
                   d.get("PublicIpAddress", ""), d.get("PrivateIpAddress", ""),
                   SPOT if d.get("InstanceLifecycle") == "spot" else ON_DEMAND,
                   d.get("IamInstanceProfile", {}).get("Arn", ""))


def _described(aws: AWS, filters: list[dict]) -> list[Instance]:
    answer = aws.ec2("describe_instances", Filters=filters)
    return [Instance.from_api(i) for r in answer.get("Reservations", []) for i in r["Instances"]]


def find_instances(aws: AWS, cluster: str, states: Iterable[str] = NOT_TERMINATED) -> list[Instance]:
    found = _described(aws, [by_cluster(cluster), {"Name": "instance-state-name", "Values": list(states)}])
    return sorted(found, key=lambda i: (i.name, i.id))


def describe(aws: AWS, ids: list[str]) -> list[Instance]:
    """The instances `ids` that AWS knows. By filter, not by id list: an id
    AWS does not know (yet, just after launch, or any more) is simply missing
    from the answer instead of failing the whole call."""
    return _described(aws, [{"Name": "instance-id", "Values": ids}]) if ids else []


def wait_for_state(aws: AWS, ids: list[str], wanted: str, timeout_s: float, poll_s: float,
                   sleep: Sleep = time.sleep) -> list[Instance]:
    """Poll until every instance in `ids` is in state `wanted`; an instance
    that ends up terminated instead is an error (it will not come back)."""
    if not ids:
        raise ValueError("wait_for_state needs at least one instance id")
    deadline = time.monotonic() + timeout_s
    while True:
        current = describe(aws, ids)
        # A terminated instance eventually vanishes from the answers: gone is terminated.
        if (len(current) == len(ids) or wanted == "terminated") and all(i.state == wanted for i in current):
            return current
        gone = [i.id for i in current if i.state in ("terminated", "shutting-down") and wanted != "terminated"]
        if gone:
            raise AWSError(f"instance(s) {', '.join(gone)} terminated while starting",
                           "the EC2 console shows the reason (State transition reason); run `mlcluster up` again")
        if time.monotonic() > deadline:
            late = ", ".join(f"{i.id} ({i.state})" for i in current if i.state != wanted) or ", ".join(ids)
            raise AWSError(f"instances not {wanted} after {timeout_s:.0f} s: {late}")
        sleep(poll_s)


@dataclass
class LaunchSpec:
    """What every instance of a cluster is launched with."""
    cluster: str
    image: "Image"
    instance_type: str
    key_name: str
    group_id: str
    volume_gb: int
    user_data: str = ""


def launch(aws: AWS, spec: LaunchSpec, name: str, subnets: list[tuple[str, str]],
           on_capacity: Callable[[str, str], None], market: str = ON_DEMAND, profile: str = "") -> Instance:
    """Run one instance named `name` (`market` spot: a one-time spot instance; `profile`: the IAM
    instance profile to attach, by name), trying each (zone, subnet) in order: a zone without capacity
    is reported through `on_capacity(zone, code)` and skipped; any other refusal (VcpuLimitExceeded,
    spot's account-wide ones, see spot.py) propagates at once."""
    role = name.rstrip("0123456789")
    extra: dict = {"InstanceMarketOptions": SPOT_OPTIONS} if market == SPOT else {}
    if profile:
        extra["IamInstanceProfile"] = {"Name": profile}
    for zone, subnet in list(subnets):  # a copy: on_capacity may reorder the caller's list
        token = secrets.token_hex(16)  # a retried call (throttling) cannot start a second instance
        try:
            answer = aws.ec2(
                "run_instances", **extra, ImageId=spec.image.id, InstanceType=spec.instance_type,
                MinCount=1, MaxCount=1,
                KeyName=spec.key_name, SubnetId=subnet, SecurityGroupIds=[spec.group_id], ClientToken=token,
                UserData=spec.user_data, MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
                # the autostop watchdog's `shutdown -h now` ends the bill, not just the power
                InstanceInitiatedShutdownBehavior="terminate",
                BlockDeviceMappings=[{"DeviceName": spec.image.root_device, "Ebs": {
                    "VolumeSize": spec.volume_gb, "VolumeType": "gp3", "DeleteOnTermination": True}}],
                TagSpecifications=[
                    tag_spec("instance", spec.cluster, **{TAG_ROLE: role, TAG_NAME: name,
                                                         "Name": f"{spec.cluster}-{name}"}),
                    tag_spec("volume", spec.cluster, **{TAG_NAME: name})])
        except AWSError as exc:
            if exc.code not in (ZONE_SPOT_CODES if market == SPOT else CAPACITY_CODES):
                raise
            on_capacity(zone, exc.code)
            continue
        return Instance.from_api(answer["Instances"][0])
    raise AWSError(f"no availability zone in {aws.region} has capacity for {spec.instance_type} now",
                   f"tried {', '.join(z for z, _ in subnets) or 'none'}; try again later, "
                   "or another --instance-type or --region", "InsufficientInstanceCapacity", "RunInstances")


def terminate(aws: AWS, ids: list[str]) -> None:
    if ids:
        aws.ec2("terminate_instances", InstanceIds=ids)


# -- network and image ---------------------------------------------------------
def default_subnets(aws: AWS) -> tuple[str, list[tuple[str, str]]]:
    """The default VPC and its default subnets as (zone, subnet id), by zone."""
    vpcs = aws.ec2("describe_vpcs", Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise MlclusterError(f"the region {aws.region} has no default VPC",
                             "`aws ec2 create-default-vpc` creates one")
    vpc = vpcs[0]["VpcId"]
    subnets = aws.ec2("describe_subnets", Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                                   {"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    if not subnets:
        raise MlclusterError(f"the default VPC {vpc} in {aws.region} has no default subnets",
                             "`aws ec2 create-default-subnet --availability-zone ZONE` creates one")
    return vpc, sorted((s["AvailabilityZone"], s["SubnetId"]) for s in subnets)


@dataclass
class Image:
    id: str
    root_device: str
    name: str


def resolve_image(aws: AWS, ami: str, parameter: str) -> Image:
    """`ami` if given, else the image the public SSM `parameter` names now."""
    if not ami:
        try:
            ami = aws.call("ssm", "get_parameter", Name=parameter)["Parameter"]["Value"]
        except AWSError as exc:
            if exc.code != "ParameterNotFound":
                raise
            raise MlclusterError(f"the public image parameter {parameter} does not exist in {aws.region}",
                                 "set `ami` in the [aws] table, or another `os`") from None
    try:
        images = aws.ec2("describe_images", ImageIds=[ami])["Images"]
    except AWSError as exc:
        if not exc.code.startswith("InvalidAMIID"):
            raise
        images = []
    if not images:
        raise MlclusterError(f"the image {ami} does not exist in {aws.region}", "check `ami` in the [aws] table")
    return Image(ami, images[0].get("RootDeviceName", "/dev/xvda"), images[0].get("Name", ""))


# -- the cluster's other tagged resources, and what is left -----------------------
# kind -> its describe call, the answer's list, and how a leftover one reads
TAGGED = {"security group": ("describe_security_groups", "SecurityGroups", "{GroupId} ({GroupName})"),
          "key pair": ("describe_key_pairs", "KeyPairs", "{KeyName}"),
          "volume": ("describe_volumes", "Volumes", "{VolumeId} ({State})")}


def find_tagged(aws: AWS, kind: str, cluster: str) -> list[dict]:
    """The `kind` resources tagged for `cluster` (a volume being deleted is gone already; root volumes
    go with their instance, but one left "available" would still be billed)."""
    operation, listed, _ = TAGGED[kind]
    found = aws.ec2(operation, Filters=[by_cluster(cluster)])[listed]
    return [r for r in found if r.get("State") not in ("deleting", "deleted")]


def leftovers(aws: AWS, cluster: str) -> list[str]:
    """One sentence per tagged resource of `cluster` that still exists."""
    left = [f"instance {i.id} ({i.name or 'untagged'}, {i.state}) in {aws.region}"
            for i in find_instances(aws, cluster)]
    return left + [f"{kind} {reads.format(**r)} in {aws.region}" for kind, (_, _, reads) in TAGGED.items()
                   for r in find_tagged(aws, kind, cluster)]


# -- key pairs -------------------------------------------------------------------
def key_pair_exists(aws: AWS, name: str) -> bool:
    try:
        return bool(aws.ec2("describe_key_pairs", KeyNames=[name])["KeyPairs"])
    except AWSError as exc:
        if exc.code == "InvalidKeyPair.NotFound":
            return False
        raise


def create_key_pair(aws: AWS, cluster: str) -> tuple[str, str, str]:
    """A new ed25519 key pair tagged for `cluster`: (name, id, private key)."""
    answer = aws.ec2("create_key_pair", KeyName=resource_name(cluster), KeyType="ed25519",
                     TagSpecifications=[tag_spec("key-pair", cluster)])
    return answer["KeyName"], answer.get("KeyPairId", ""), answer["KeyMaterial"]


def delete_key_pair(aws: AWS, name: str) -> None:
    aws.ec2("delete_key_pair", KeyName=name)  # by name: unique per region, and what moto supports


# -- security group --------------------------------------------------------------
def create_group(aws: AWS, cluster: str, vpc: str) -> str:
    try:
        answer = aws.ec2("create_security_group", GroupName=resource_name(cluster), VpcId=vpc,
                         Description=f"mlcluster {cluster}: SSH and orchestrator from the allowed address, "
                                     "worker ports inside the group",
                         TagSpecifications=[tag_spec("security-group", cluster)])
    except AWSError as exc:
        if exc.code != "InvalidGroup.Duplicate":
            raise
        raise MlclusterError(f"a security group named {resource_name(cluster)} exists in {vpc} but is not tagged "
                             f"{TAG_CLUSTER}={cluster}", "delete it or choose another --name") from None
    return answer["GroupId"]


Rule = tuple[str, int, int, str, str]   # (protocol, from port, to port, "cidr"|"cidr6"|"group", source)


def wanted_rules(group_id: str, allowed_cidr: str, public_ports: Iterable[int],
                 internal: tuple[int, int], watched: Iterable[int] = ()) -> set[Rule]:
    """SSH and the public ports from `allowed_cidr`; `internal` (a port range)
    only from the group itself, and so are the `watched` ports (the
    orchestrator's, whose /status the autostop watchdogs on the workers read)."""
    kind = "cidr6" if ":" in allowed_cidr else "cidr"
    rules = {("tcp", p, p, kind, allowed_cidr) for p in {22, *public_ports}}
    rules.add(("tcp", internal[0], internal[1], "group", group_id))
    rules |= {("tcp", p, p, "group", group_id) for p in watched}
    return rules


# A rule's kind -> where EC2 lists its sources, the source's key, and our description of it.
SOURCES = {"cidr": ("IpRanges", "CidrIp", "mlcluster: allowed address"),
           "cidr6": ("Ipv6Ranges", "CidrIpv6", "mlcluster: allowed address"),
           "group": ("UserIdGroupPairs", "GroupId", "mlcluster: inside the cluster")}


def _permission(rule: Rule) -> dict:
    protocol, start, end, kind, source = rule
    listed, key, description = SOURCES[kind]
    return {"IpProtocol": protocol, "FromPort": start, "ToPort": end,
            listed: [{key: source, "Description": description}]}


def sync_rules(aws: AWS, group: dict, wanted: set[Rule]) -> tuple[set[Rule], set[Rule]]:
    """Make the group's ingress exactly `wanted`; returns (added, removed)."""
    have = {(p["IpProtocol"], p.get("FromPort", -1), p.get("ToPort", -1), kind, r[key])
            for p in group.get("IpPermissions", []) for kind, (listed, key, _) in SOURCES.items()
            for r in p.get(listed, [])}
    added, removed = wanted - have, have - wanted
    for operation, rules in (("authorize_security_group_ingress", added), ("revoke_security_group_ingress", removed)):
        if rules:
            aws.ec2(operation, GroupId=group["GroupId"], IpPermissions=[_permission(r) for r in sorted(rules)])
    return added, removed


def delete_group(aws: AWS, group_id: str, timeout_s: float, poll_s: float, sleep: Sleep = time.sleep) -> None:
    """Delete the group, retrying while AWS still reports it in use (the
    network interfaces of just-terminated instances take a while to go)."""
    try:
        retry_while(lambda exc: exc.code == "DependencyViolation",
                    lambda: aws.ec2("delete_security_group", GroupId=group_id), timeout_s, poll_s, sleep)
    except AWSError as exc:
        if exc.code != "InvalidGroup.NotFound":
            raise
