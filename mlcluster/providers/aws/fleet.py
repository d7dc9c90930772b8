"""`up`'s side of the in-cluster controller on aws (elastic/aws_fleet.py,
elastic/aws_heal.py): how the cluster's workers are launched, written into
the controller's config (elastic/poolconfig.py's AWSFleet), and the cap on
worker instances (the billing cap)."""
from __future__ import annotations

import math

from ...elastic.poolconfig import AWSFleet
from ...state import ClusterSpec, ClusterState
from . import ec2
from .api import AWS
from .ec2 import LaunchSpec
from .options import AWSOptions, Market
from .placement import zone_order


def fleet_of(aws: AWS, state: ClusterState, o: AWSOptions, port: int) -> AWSFleet:
    """`up`'s record of how the cluster's workers are launched (on this machine, after EC2)."""
    launch, zones, market = launch_spec_of(aws, state)
    res = state.resources.aws
    mapped = {name: (m if isinstance(m, str) else m["address"]) for name, m in o.address_map.items()}
    workdirs = {name: m["workdir"] for name, m in o.address_map.items() if isinstance(m, dict) and "workdir" in m}
    return AWSFleet(region=aws.region, instances={n: i for n, i in res.instances.items() if n != "orchestrator"},
                    cap=worker_cap(state.spec), image_id=launch.image.id, root_device=launch.image.root_device,
                    instance_type=launch.instance_type, key_name=launch.key_name, security_group=launch.group_id,
                    volume_gb=launch.volume_gb, user_data=launch.user_data, zones=[list(z) for z in zones],
                    orchestrator=res.instances.get("orchestrator", ""), spot=market.spot, fallback=market.fallback,
                    user=o.user, ssh_port=port, endpoint_url=o.endpoint_url, metadata_url=o.metadata_url,
                    address_map=mapped, workdirs=workdirs)


def launch_spec_of(aws: AWS, state: ClusterState) -> tuple[LaunchSpec, list[tuple[str, str]], Market]:
    """How the cluster's workers were launched, from its state and EC2 (the
    image is the orchestrator's; only Describe calls, which the controller's
    profile allows): (launch spec, zones, market)."""
    from .hosts import user_data  # the deployment layer: only needed here
    o = AWSOptions.from_spec(state.spec)
    record = state.resources.aws
    answer = aws.ec2("describe_instances", InstanceIds=[record.instances["orchestrator"]])
    orchestrator = answer["Reservations"][0]["Instances"][0]
    image = aws.ec2("describe_images", ImageIds=[orchestrator["ImageId"]])["Images"][0]
    zones = zone_order(ec2.default_subnets(aws)[1], [ec2.Instance.from_api(orchestrator)])
    launch = LaunchSpec(state.name, ec2.Image(orchestrator["ImageId"], image.get("RootDeviceName", "/dev/xvda"),
                                              image.get("Name", "")),
                        o.instance_type, record.key_name, record.security_group, o.volume_gb, user_data(o))
    return launch, zones, o.market


def worker_cap(spec: ClusterSpec) -> int:
    """The most worker instances the cluster may have: enough hosts for
    `max_containers` with autoscaling, else the workers asked for."""
    if spec.max_containers:
        return math.ceil(spec.max_containers / spec.containers_per_worker)
    return spec.workers
