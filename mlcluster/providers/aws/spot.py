"""Spot workers with an on-demand fallback (docs/providers.md#spot says what is
asked of EC2 and what each refusal does). Only workers: the orchestrator's
instance is always on-demand, as it holds the queue.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...elastic.events import Event, append
from ...errors import MlclusterError
from . import ec2
from .api import AWS, AWSError
from .ec2 import ON_DEMAND, SPOT, Instance, LaunchSpec
from .options import FALLBACK_NEVER, Market


@dataclass(frozen=True)
class Launched:
    """One launched worker: its instance, the market it runs in, and the
    spot refusal it fell back from ("" when it did not)."""
    instance: Instance
    market: str
    refused: str = ""


class SpotRefused(MlclusterError):
    """Spot capacity was refused and the fallback is `never`."""

    def __init__(self, name: str, code: str, cluster: str):
        super().__init__(f"AWS refused spot capacity for {name} ({code}) and spot_fallback is \"never\"",
                         f"run `mlcluster up` again later, or allow on-demand (--spot-fallback on-demand); "
                         f"`mlcluster down --name {cluster}` removes what was started", names_cleanup=True)
        self.code, self.name = code, name


def launch_worker(aws: AWS, spec: LaunchSpec, name: str, zones: list[tuple[str, str]],
                  on_capacity: Callable[[str, str], None], market: Market, profile: str = "") -> Launched:
    """Launch worker `name` as `market` says: spot first when asked, then
    on-demand if allowed (the orchestrator: `Market()`, with the controller's
    `profile`). Raises SpotRefused (fallback never) or AWSError."""
    if not market.spot:
        return Launched(ec2.launch(aws, spec, name, zones, on_capacity, profile=profile), ON_DEMAND)
    try:
        return Launched(ec2.launch(aws, spec, name, zones, on_capacity, market=SPOT), SPOT)
    except AWSError as exc:
        if exc.code not in ec2.SPOT_REFUSED:
            raise
        refused = exc.code
    if market.fallback == FALLBACK_NEVER:
        raise SpotRefused(name, refused, spec.cluster)
    return Launched(ec2.launch(aws, spec, name, zones, on_capacity), ON_DEMAND, refused)


def refused_sentence(code: str, instance_id: str) -> str:
    return f"spot capacity refused ({code}); launched {instance_id} on-demand instead (billed at the on-demand price)"


def record_fallback(cluster_dir: Path, name: str, launched: Launched, clock: Callable[[], float] = time.time) -> None:
    """The event `mlcluster events` lists for a fallback (`container`: the instance's name)."""
    append(cluster_dir, Event(clock(), "spot_fallback", refused_sentence(launched.refused, launched.instance.id),
                              container=name))
