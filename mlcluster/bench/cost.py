"""What a cluster costs per hour, from its provider's cost plan (the one `up`
shows before it creates anything): on-demand prices; None where the provider
has no plan (local and ssh clusters cost mlcluster nothing it knows of)."""
from __future__ import annotations

from typing import Optional

from ..errors import MlclusterError
from ..state import ClusterState


def hourly_cost(state: Optional[ClusterState]) -> tuple[Optional[float], str]:
    """(USD per hour or None, a note saying where it came from or why there is none)."""
    if state is None:
        return None, "no cost: the cluster was given by --url"
    if state.provider == "local":
        return None, "no cost: a local cluster"
    from ..providers import get_provider  # lazily: a provider module loads its cloud's library
    try:
        plan = get_provider(state.provider).plan(state.spec)
    except MlclusterError as exc:
        return None, f"no cost: the cost plan could not be made ({exc.message})"
    if plan is None:
        return None, f"no cost: the {state.provider} provider has no cost plan"
    if plan.hourly is None:
        return None, f"no cost: {plan.instance_type} is not in mlcluster's price table"
    return plan.hourly, f"{state.provider} cost plan, on-demand prices"
