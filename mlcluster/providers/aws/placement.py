"""Where a cluster's instances go: matching found instances to the names
wanted, the order of availability zones, and what to say when AWS refuses
more instances. Pure functions over ec2.Instance records (no AWS call)."""
from __future__ import annotations

from ...errors import MlclusterError
from ...ui import QuietUI
from .api import AWSError
from .ec2 import Instance
from .options import PRICES

STANDARD_QUOTA = "'Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances' (quota code L-1216C47A)"


def match(found: list[Instance], names: list[str]) -> tuple[dict[str, Instance], list[Instance]]:
    """One instance per wanted name (running ones first); the rest are extra."""
    chosen: dict[str, Instance] = {}
    extra: list[Instance] = []
    for inst in sorted(found, key=lambda i: (i.state != "running", i.id)):
        if inst.name in names and inst.name not in chosen:
            chosen[inst.name] = inst
        else:
            extra.append(inst)
    return chosen, extra


def zone_order(subnets: list[tuple[str, str]], placed) -> list[tuple[str, str]]:
    """Subnets with the zones of already placed instances first (less
    cross-zone traffic), in their given order otherwise."""
    used = {i.zone for i in placed}
    return [s for s in subnets if s[0] in used] + [s for s in subnets if s[0] not in used]


def skip_zone(zones: list[tuple[str, str]], zone: str, code: str, ui: QuietUI) -> None:
    """A zone without capacity goes to the end of the list for the rest of `up`."""
    ui.warn(f"{zone}: {code}; trying the next availability zone")
    zones[:] = [z for z in zones if z[0] != zone] + [z for z in zones if z[0] == zone]


def limit_error(exc: AWSError, region: str, instance_type: str, total: int, existing: int,
                 cluster: str) -> MlclusterError:
    vcpus = PRICES.get(instance_type, (0, 0))[1]
    need = f"at least {vcpus * total} vCPUs" if vcpus else "enough vCPUs"
    family = instance_type.split(".")[0]
    quota = STANDARD_QUOTA if family[:1] in "acdhimrtz" else f"the Running On-Demand quota for {family} instances"
    return MlclusterError(
        f"AWS refused more {instance_type} instances in {region}: your account's vCPU limit is reached "
        f"({exc.code}; {existing} of this cluster's {total} instance(s) exist)",
        f"ask AWS (Service Quotas, EC2) to raise {quota} in {region} to {need} plus what else you run there, "
        f"or use fewer --workers; `mlcluster down --name {cluster}` removes what was started",
        names_cleanup=True)
