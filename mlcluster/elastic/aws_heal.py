"""Replacing lost worker instances, for the in-cluster controller (issues 20
and 21): a reclaimed spot instance, one terminated by hand or by AWS.

`decide` is the pure rule (instances in, what to launch out); `heal` does
the EC2 calls and returns typed records, so the caller (the controller, on
the orchestrator's instance, with the profile iam.py makes) deploys onto
the new instance, registers it and writes the event. Only lost instances
are replaced, never more than the cap allows: every live worker instance
tagged for the cluster counts, a pending one too.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..providers.aws import ec2, spot
from ..providers.aws.api import AWS
from ..providers.aws.ec2 import Instance, LaunchSpec
from ..providers.aws.fleet import launch_spec_of, worker_cap
from ..providers.aws.options import AWSOptions, Market
from ..providers.aws.record import remember
from ..state import ClusterState
from .events import Event, append

LOST_STATES = ("shutting-down", "terminated")
ALL_STATES = ec2.NOT_TERMINATED + ("terminated",)


@dataclass(frozen=True)
class Lost:
    """A recorded worker instance that no longer serves."""
    name: str       # worker<i>
    old_id: str
    reason: str     # a sentence: "i-... was terminated" / "i-... is unknown to EC2"


@dataclass(frozen=True)
class HealPlan:
    replace: list[Lost]     # launch a replacement for each, now
    held: list[Lost]        # lost too, but the cap leaves no room
    live: int               # worker instances counted against the cap


@dataclass(frozen=True)
class Replacement:
    """What `heal` launched for one lost worker."""
    name: str
    old_id: str
    new_id: str
    market: str         # spot | on-demand
    reason: str         # why the old one was replaced
    refused: str = ""   # the spot refusal it fell back from ("" when none)


@dataclass(frozen=True)
class HealResult:
    replaced: list[Replacement] = field(default_factory=list)
    held: list[Lost] = field(default_factory=list)                  # the cap held them back
    refused: list[tuple[Lost, str]] = field(default_factory=list)   # spot refused, fallback never: (lost, code)


def _order(name: str) -> tuple[int, str]:
    digits = re.sub(r"\D", "", name)
    return (int(digits) if digits else 0, name)


def decide(recorded: dict[str, str], found: list[Instance], cap: int) -> HealPlan:
    """Which recorded workers are lost and how many may be replaced.

    `recorded`: instance name -> id as the state has it (the orchestrator is
    ignored); `found`: what EC2 describes of the cluster (by tag, any state,
    and the recorded ids); `cap`: the most worker instances that may exist.
    A worker is lost when its instance is shutting down, terminated or
    unknown, unless a live instance already carries its name (replaced, the
    record not yet updated). Live workers (pending to stopped) count against
    the cap."""
    by_id = {i.id: i for i in found}
    live = {i.id: i for i in found if i.state in ec2.UP_STATES and i.name != "orchestrator"}
    live_names = {i.name for i in live.values()}
    lost = []
    for name, instance_id in sorted(recorded.items(), key=lambda item: _order(item[0])):
        if name == "orchestrator" or name in live_names:
            continue
        inst = by_id.get(instance_id)
        if inst is None:
            lost.append(Lost(name, instance_id, f"{instance_id} is unknown to EC2"))
        elif inst.state in LOST_STATES:
            lost.append(Lost(name, instance_id, f"{instance_id} is {inst.state} (reclaimed or terminated)"))
    room = max(0, cap - len(live))
    return HealPlan(lost[:room], lost[room:], len(live))


def look(aws: AWS, cluster: str, recorded: dict[str, str]) -> list[Instance]:
    """What EC2 knows of the cluster: by tag in any state, and the recorded ids."""
    found = {i.id: i for i in ec2.find_instances(aws, cluster, ALL_STATES)}
    unseen = [i for i in recorded.values() if i not in found]
    found.update({i.id: i for i in ec2.describe(aws, unseen)})
    return list(found.values())


def heal(aws: AWS, launch: LaunchSpec, zones: list[tuple[str, str]], recorded: dict[str, str], cap: int,
         market: Market, on_capacity: Callable[[str, str], None] = lambda zone, code: None,
         found: Optional[list[Instance]] = None) -> HealResult:
    """Replace the lost workers the cap allows (spot first when `market.spot`,
    then on-demand unless the fallback is never); see `decide`. `found`: what
    `look` just answered (else it is asked). A worker scaled away on purpose
    (aws_fleet.py's parked) is not in `recorded`: it is not lost."""
    plan = decide(recorded, look(aws, launch.cluster, recorded) if found is None else found, cap)
    replaced, refused = [], []
    for lost in plan.replace:
        try:
            launched = spot.launch_worker(aws, launch, lost.name, zones, on_capacity, market)
        except spot.SpotRefused as exc:
            refused.append((lost, exc.code))
            continue
        replaced.append(Replacement(lost.name, lost.old_id, launched.instance.id, launched.market, lost.reason,
                                    launched.refused))
    return HealResult(replaced, plan.held, refused)


def record(state: ClusterState, aws: AWS, result: HealResult) -> None:
    """Put the replacements in the state (name -> new id and market)."""
    if not result.replaced:
        return
    res = state.resources.aws
    remember(state, aws, instances={**res.instances, **{r.name: r.new_id for r in result.replaced}},
             markets={**res.markets, **{r.name: r.market for r in result.replaced}})


def replace_lost_workers(state: ClusterState, cap: Optional[int] = None,
                         clock: Callable[[], float] = time.time) -> HealResult:
    """The controller's entry point on an aws cluster, once per look: replace
    the lost worker instances (within `cap`, default `worker_cap`), record
    them in the state and write a `heal` event for each (and a
    `spot_fallback` one when spot was refused, an `error` one when spot was
    refused and the fallback is never). Credentials: boto3's chain (on the
    orchestrator's instance, its instance profile). Deploying onto the new
    instances and registering their containers is the caller's."""
    o = AWSOptions.from_spec(state.spec)
    aws = AWS(state.resources.aws.region or o.region, o.profile, o.endpoint_url)
    launch, zones, market = launch_spec_of(aws, state)
    result = heal(aws, launch, zones, state.resources.aws.instances,
                  worker_cap(state.spec) if cap is None else cap, market)
    record(state, aws, result)
    for r in result.replaced:
        append(state.dir, Event(clock(), "heal", f"{r.reason}; launched {r.new_id} ({r.market}) in its place",
                                container=r.name))
        if r.refused:
            append(state.dir, Event(clock(), "spot_fallback", spot.refused_sentence(r.refused, r.new_id),
                                    container=r.name))
    for lost, code in result.refused:
        append(state.dir, Event(clock(), "error", f"{lost.reason}; spot capacity refused ({code}) and "
                                "spot_fallback is never: not replaced", container=lost.name))
    return result
