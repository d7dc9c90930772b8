"""The cluster's life, the same for every provider: up, status, down, logs.

The provider starts machines and containers; this module registers the
containers with the orchestrator, waits until they are ready, reads the
orchestrator's /status, and removes the state once everything is gone.
"""
from __future__ import annotations

import copy
import secrets
import time
from typing import Iterator, Optional

import requests

from . import autostop
from .errors import MlclusterError
from .providers import get_provider
from .state import ClusterSpec, ClusterState, ContainerRecord, remove_cluster_dir
from .ui import QuietUI

READY_TIMEOUT_S = 600.0


def up(spec: ClusterSpec, ui: QuietUI = QuietUI(), ready_timeout_s: float = READY_TIMEOUT_S) -> ClusterState:
    """Start what is missing of the cluster, register its containers and wait
    until all are ready. Safe to run again: it reconciles."""
    spec.validate()
    state = ClusterState.load_or_none(spec.name)
    if state is not None and state.provider != spec.provider:
        raise MlclusterError(f"cluster {spec.name!r} already exists with the {state.provider} provider",
                             f"`mlcluster down --name {spec.name}` first, or pick another --name")
    new = state is None
    if state is None:
        state = ClusterState(name=spec.name, provider=spec.provider, token=secrets.token_urlsafe(32))
    state.spec = copy.deepcopy(spec)  # the provider may add to it (aws adds the [ssh] table it made)
    state.save()
    provider = get_provider(spec.provider)
    try:
        deployment = provider.up(spec, state, ui)
        state.orchestrator_url = deployment.orchestrator_url
        state.containers = deployment.containers
        state.save()
        register(state, ui)
        wait_ready(state, ui, ready_timeout_s)
    except KeyboardInterrupt:
        state.save()
        raise MlclusterError("interrupted: what was started so far is recorded",
                             f"`mlcluster down --name {spec.name}` removes it, `mlcluster up` finishes it",
                             exit_code=130) from None
    except MlclusterError:
        if new and not any(state.resources.values()):
            remove_cluster_dir(spec.name)  # nothing was created: leave no trace of a failed first `up`
        raise
    return state


def register(state: ClusterState, ui: QuietUI) -> None:
    """Tell the orchestrator about every container, and drain the ones it knows
    that are no longer part of the cluster (a reconciled `up` moved them).
    These calls carry the token, so they go through the provider's admin
    channel (loopback, or SSH to the orchestrator's host), never in cleartext."""
    wanted = {(c.host, c.port) for c in state.containers}
    current = orchestrator_status(state)["containers"]
    known = {(x["host"], x["port"]) for x in current}
    stale = [c["id"] for c in current if (c["host"], c["port"]) not in wanted]
    body = {"containers": [{"id": c.id, "host": c.host, "port": c.port, "capacity": c.capacity}
                           for c in state.containers if (c.host, c.port) not in known]}
    if not stale and not body["containers"]:
        ui.info(f"all {len(state.containers)} container(s) are registered with the orchestrator")
        return
    with get_provider(state.provider).admin_channel(state) as admin, requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {state.token}"
        try:
            for container_id in stale:
                http.delete(f"{admin}/workers/{container_id}", timeout=10)
            response = http.post(f"{admin}/workers", json=body, timeout=10) if body["containers"] else None
        except requests.RequestException as exc:
            raise MlclusterError(f"the orchestrator's admin endpoints did not answer ({type(exc).__name__})",
                                 f"`mlcluster logs --name {state.name}` shows the orchestrator's log") from None
    if response is not None and response.status_code != 201:
        raise MlclusterError(f"the orchestrator refused the registration ({response.status_code}): "
                             f"{_error_text(response)}")
    ui.info(f"registered {len(state.containers)} container(s) with the orchestrator")


def wait_ready(state: ClusterState, ui: QuietUI, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    total = len(state.containers)
    with ui.step("waiting for the containers to load the model and report ready", total=total) as step:
        done = 0
        while True:
            containers = orchestrator_status(state)["containers"]
            ready = sum(1 for c in containers if c["status"] in ("free", "busy"))
            step.advance(ready - done)
            done = ready
            if ready >= total:
                return
            if time.monotonic() > deadline:
                down = ", ".join(c["id"] for c in containers if c["status"] == "down")
                raise MlclusterError(f"{total - ready} container(s) not ready after {timeout_s:.0f} s: {down}",
                                     f"`mlcluster logs --name {state.name} CONTAINER` shows why")
            time.sleep(0.5)


def _error_text(response: requests.Response) -> str:
    try:
        return response.json().get("error", response.text)
    except ValueError:
        return response.text[:200]


def orchestrator_status(state: ClusterState, timeout: float = 5.0) -> dict:
    if not state.orchestrator_url:
        raise MlclusterError(f"cluster {state.name!r} has no orchestrator running",
                             f"`mlcluster up --name {state.name}` starts it")
    try:
        response = requests.get(f"{state.orchestrator_url}/status", timeout=timeout)
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError) as exc:
        raise MlclusterError(f"the orchestrator of cluster {state.name!r} at {state.orchestrator_url} is not answering "
                             f"({type(exc).__name__})",
                             f"`mlcluster up --name {state.name}` restarts what is missing; "
                             f"`mlcluster logs --name {state.name}` shows its log") from None


def status(name: str) -> dict:
    """The orchestrator's /status, with each container's provider details and
    the cluster's own facts, as one JSON-ready object."""
    state = ClusterState.load(name)
    provider = get_provider(state.provider)
    try:
        snapshot = orchestrator_status(state)
    except MlclusterError:
        fired = provider.stopped_itself(state) if state.spec.autostop or state.spec.max_lifetime else None
        if fired:
            raise MlclusterError(f"cluster {name!r} stopped itself ({fired})",
                                 f"`mlcluster down --name {name}` removes what is left") from None
        raise
    details = provider.details(state)
    for container in snapshot["containers"]:
        container.update(details.get(container["id"], {}))
    snapshot.update(name=state.name, provider=state.provider, runtime=state.runtime,
                    orchestrator_url=state.orchestrator_url, model=state.spec.model)
    plan = provider.plan(state.spec)
    watch = autostop.summary(state.spec.autostop, state.spec.max_lifetime,
                             state.resources.get("ssh", {}).get("autostop_started"), plan.hourly if plan else 0.0)
    if watch:
        snapshot["autostop"] = watch
    return snapshot


def down(name: str, ui: QuietUI = QuietUI(), spec: Optional[ClusterSpec] = None) -> list[str]:
    """Remove everything of the cluster and its state; returns what could not
    be removed. Without a state file, `spec` (from --provider/--config) says
    where to look; with neither, the local provider looks by marker."""
    state = ClusterState.load_or_none(name)
    if state is None and spec is not None:
        state = ClusterState(name=name, provider=spec.provider, token="", spec=spec)
    left = get_provider(state.provider if state else "local").down(name, state, ui)
    if not left:
        remove_cluster_dir(name)
    return left


def logs(name: str, target: Optional[str], follow: bool, tail: int) -> Iterator[str]:
    state = ClusterState.load(name)
    return get_provider(state.provider).logs(state, target, follow, tail)


__all__ = ["up", "down", "status", "logs", "register", "wait_ready", "orchestrator_status", "ContainerRecord"]
