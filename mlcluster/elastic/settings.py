"""A cluster's autoscaling settings, from its spec (state.ClusterSpec: the
`up` flags and the [autoscale] table). Imports nothing of mlcluster at run
time, so state.py can check a spec with it."""
from __future__ import annotations

from typing import Optional, Protocol

from .policy import AutoscaleConfig


class ClusterSpec(Protocol):
    """The fields of state.ClusterSpec read here (not imported: state.py imports this module)."""
    provider: str
    min_containers: int
    max_containers: int
    target_ongoing: float
    upscale_delay: float
    downscale_delay: float
    heal_grace: float


ELASTIC_PROVIDERS = ("local", "ssh", "aws")  # where a controller adds and removes containers (elastic/poolscaler.py)


def autoscale_config(spec: ClusterSpec, capacity: int) -> Optional[AutoscaleConfig]:
    """The rule's settings, or None when the cluster is fixed (no --max-containers).
    `capacity`: requests a container takes at once, the default target."""
    if spec.max_containers <= 0:
        return None
    return AutoscaleConfig(min_containers=spec.min_containers or 1, max_containers=spec.max_containers,
                           target_ongoing=spec.target_ongoing or float(capacity),
                           upscale_delay_s=spec.upscale_delay, downscale_delay_s=spec.downscale_delay)


def autoscale_problem(spec: ClusterSpec) -> Optional[str]:
    """What is wrong with the spec's autoscaling settings (a sentence), or None."""
    if spec.heal_grace < 0:
        return "heal_grace cannot be negative"
    if spec.max_containers <= 0:
        if spec.min_containers or spec.target_ongoing:
            return "--min-containers and --target-ongoing need --max-containers (the cap)"
        return None
    if spec.provider not in ELASTIC_PROVIDERS:
        return f"autoscaling (--max-containers) is not available on the {spec.provider} provider yet"
    if spec.target_ongoing < 0:
        return "--target-ongoing must be above 0"
    return autoscale_config(spec, 1).problem()
