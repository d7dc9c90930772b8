"""Autostop inside the controller of a local process cluster (one agent per
cluster, not two): the watchdog agent's idle clock (deploy/agent.py), fed the
orchestrator's /status at every look; when it fires, the agent's record
(`autostop.json`, so `status` says the cluster stopped itself and when) and
the agent's stop: every process of the cluster (deploy/watchdog.py), the
controller last, by leaving its loop."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ..deploy import watchdog
from ..deploy.agent import IdleClock
from ..durations import seconds_or_none
from ..state import ClusterState, write_private_json


def idle_clock(state: ClusterState) -> Optional[IdleClock]:
    """The clock for the spec's autostop / max_lifetime, or None when neither is set.
    The lifetime counts from the first `up` with one (`resources.autostop_started`)."""
    idle = seconds_or_none(state.spec.autostop, "autostop")
    lifetime = seconds_or_none(state.spec.max_lifetime, "max_lifetime")
    if idle is None and lifetime is None:
        return None
    started = state.resources.autostop_started or time.time()
    clock = IdleClock(idle or 0.0, started + lifetime if lifetime else 0.0)
    clock.last_active = time.monotonic()
    return clock


def stop_cluster(name: str, directory: Path, reason: str, clock: IdleClock) -> None:
    """Record why and when, then stop every process of the cluster but this one."""
    write_private_json(directory / watchdog.RECORD, {"reason": reason, "stopped_at": time.time(),
                                                     "idle_s": clock.idle_s, "deadline": clock.deadline})
    watchdog.stop_local_cluster(name)
