"""The cluster's life, the same for every provider: up, status, down, logs.

The provider starts machines and containers; this module registers the
containers with the orchestrator, waits until they are ready, reads the
orchestrator's /status, and removes the state once everything is gone.
"""
from __future__ import annotations

import copy
import dataclasses
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import requests

from mlcluster_contract import BATCH_DEFAULTS, OVERHEAD_TEST

from . import security
from .deploy import watchdog
from .elastic.local import controller_started, running as controller_running
from .elastic.published import published
from .errors import MlclusterError
from .models import served_model
from .providers import get_provider
from .providers.base import Provider
from .rollout import local as rollout_local, record as rollout_record
from .rollout.local import RollOptions
from .state import (
    ClusterSpec,
    ClusterState,
    ContainerRecord,
    cluster_dir,
    home,
    remove_cluster_dir,
    write_private,
    write_private_json,
)
from .ui import QuietUI

READY_TIMEOUT_S = 600.0


def up(spec: ClusterSpec, ui: QuietUI = QuietUI(), ready_timeout_s: float = READY_TIMEOUT_S,
       prepare: Optional[Callable[[ClusterState], None]] = None, roll: RollOptions = RollOptions()) -> ClusterState:
    """Start what is missing of the cluster, register its containers and wait
    until all are ready. Safe to run again: it reconciles. On a running
    cluster asked to serve something else it rolls (mlcluster/rollout)."""
    spec.validate()
    state = ClusterState.load_or_none(spec.name)
    if state is not None and state.provider != spec.provider:
        raise MlclusterError(f"cluster {spec.name!r} already exists with the {state.provider} provider",
                             f"`mlcluster down --name {spec.name}` first, or pick another --name")
    new = state is None
    if state is not None and state.containers and (_serving(state.spec) != _serving(spec) or roll.changes()
                                                   or rollout_record.load(spec.name) is not None):
        state = _update(state, spec, ui, roll)
        if roll.changes() or state.spec == spec:
            return state
        # A roll changed what it serves; the rest of the spec is reconciled below, as by any `up`.
    if roll.changes():
        raise MlclusterError(f"--canary and --promote change a running cluster; {spec.name!r} has no containers yet",
                             f"`mlcluster up --name {spec.name}` without them starts it")
    if state is None:
        state = ClusterState(name=spec.name, provider=spec.provider, token=secrets.token_urlsafe(32))
    if not state.worker_token:  # also for a state written before workers had a credential
        state.worker_token = secrets.token_urlsafe(32)
    state.spec = copy.deepcopy(spec)  # the provider may add to it (aws adds the [ssh] table it made)
    if prepare is not None:  # TLS and API keys (security.py): recorded before the orchestrator starts
        prepare(state)
    state.save()
    provider = get_provider(spec.provider)
    try:
        # The ONNX backends get a model exported here, once: the provider ships that directory.
        served = dataclasses.replace(spec, model=served_model(spec, ui))
        deployment = provider.up(served, state, ui)
        state.orchestrator_url = deployment.orchestrator_url
        capacity = container_capacity(spec)
        known = {(c.host, c.port): c for c in state.containers}  # a rolled container keeps its id and version
        state.containers = [dataclasses.replace(c, capacity=capacity, **_labels(known.get((c.host, c.port))))
                            for c in deployment.containers]
        state.save()
        register(state, ui)
        wait_ready(state, ui, ready_timeout_s)
    except KeyboardInterrupt:
        state.save()
        raise MlclusterError("interrupted: what was started so far is recorded",
                             f"`mlcluster down --name {spec.name}` removes it, `mlcluster up` finishes it",
                             exit_code=130) from None
    except MlclusterError:
        if new and state.resources.is_empty():
            remove_cluster_dir(spec.name)  # nothing was created: leave no trace of a failed first `up`
        raise
    return state


def _update(state: ClusterState, spec: ClusterSpec, ui: QuietUI, roll: RollOptions) -> ClusterState:
    """Change what a running cluster serves: roll, start or promote a canary, or remove one."""
    why = rollout_local.refusal(state)
    if why is not None:  # refused, never recorded: its containers would go on serving what they serve
        raise MlclusterError(f"cluster {spec.name!r} already serves {state.spec.model} with backend "
                             f"{state.spec.backend} (batch_max {state.spec.batch_max}, batch_wait_ms "
                             f"{state.spec.batch_wait_ms}); {why}",
                             f"`mlcluster down --name {spec.name}` first to change what or how it serves")
    canary = rollout_record.load(spec.name)
    if roll.promote:
        if canary is None:
            raise MlclusterError(f"cluster {spec.name!r} has no canary to promote",
                                 "`mlcluster up --model NEW --canary P` starts one")
        spec = canary.spec
    if (spec.workers, spec.containers_per_worker) != (state.spec.workers, state.spec.containers_per_worker):
        raise MlclusterError("a roll changes what the containers serve, not how many there are",
                             f"run `up` with {state.spec.workers} worker(s) x {state.spec.containers_per_worker} "
                             "first, then again with the new size")
    roller = rollout_local.LocalRoll(state, ui, container_capacity(spec), roll)
    if _serving(spec) == _serving(state.spec):
        if canary is None:
            raise MlclusterError(f"cluster {spec.name!r} already serves {state.spec.model} with backend "
                                 f"{state.spec.backend}: a canary needs another model, backend or batching")
        return roller.rollback()
    return roller.roll(spec, served_model(spec, ui))


def _labels(previous: Optional[ContainerRecord]) -> dict:
    return {"id": previous.id, "model": previous.model, "version": previous.version} if previous else {}


def _serving(spec: ClusterSpec) -> tuple:
    """What the containers serve and how: a change of any of it needs new containers."""
    model = Path(spec.model).expanduser()
    return (str(model.resolve()) if model.is_dir() else spec.model), spec.backend, spec.batch_max, spec.batch_wait_ms


def container_capacity(spec: ClusterSpec) -> int:
    """How many requests a container takes at once: its batch size (the
    worker's own per-backend default unless `batch_max` is set)."""
    if spec.batch_max > 0:
        return spec.batch_max
    return BATCH_DEFAULTS[OVERHEAD_TEST if spec.model == OVERHEAD_TEST else spec.backend].max_requests


def register(state: ClusterState, ui: QuietUI) -> None:
    """Tell the orchestrator about every container, and drain the ones it knows
    that are no longer part of the cluster (a reconciled `up` moved them).
    These calls carry the token, so they go through the provider's admin
    channel (loopback, or SSH to the orchestrator's host), never in cleartext."""
    wanted = {(c.host, c.port) for c in state.containers}
    current = orchestrator_status(state)["containers"]
    known = {(x["host"], x["port"]) for x in current}
    elastic = controller_started(state)  # the controller's own containers are not `up`'s to drain
    stale = [c["id"] for c in current if (c["host"], c["port"]) not in wanted and c["id"] not in elastic]
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
        with security.http_session(state) as http:  # pinned to the cluster's certificate over HTTPS
            response = http.get(f"{state.orchestrator_url}/status", timeout=timeout)
        response.raise_for_status()
        return response.json()
    except requests.exceptions.SSLError:
        raise MlclusterError(f"the TLS certificate at {state.orchestrator_url} is not the one recorded for cluster "
                             f"{state.name!r}: refused",
                             "if it was replaced on purpose, run `mlcluster up` again to record it") from None
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
    records = {c.id: c for c in state.containers}
    labelled = any(c.version for c in state.containers)  # a roll or a canary: each says what it serves
    ports = {sid: p.port for sid, p in state.resources.services.items()}  # a rolled container is its slot's service
    for container in snapshot["containers"]:
        slot = container["id"].split(".", 1)[0]
        container.update(details.get(container["id"]) or (details.get(slot, {}) if ports.get(slot) == container["port"]
                                                             else {}))
        record = records.get(container["id"])
        if record and record.worker:
            container.setdefault("worker", record.worker)
        container["model"] = record.model if record and record.model else state.spec.model
        if labelled:
            container["serves"] = f"{Path(container['model']).name} {container.get('version') or ''}".strip()
    snapshot.update(name=state.name, provider=state.provider, runtime=state.runtime,
                    orchestrator_url=state.orchestrator_url, model=state.spec.model,
                    backend=state.spec.backend)
    plan = provider.plan(state.spec)
    watch = watchdog.summary(state.spec.autostop, state.spec.max_lifetime, state.resources.autostop_started,
                             plan.hourly if plan else 0.0)
    if watch:
        snapshot["autostop"] = watch
    canary = rollout_record.load(name)
    if canary is not None:
        snapshot["canary"] = {"version": canary.version, "percent": canary.percent, "model": canary.spec.model,
                              "backend": canary.spec.backend}
    controller = published(state.dir)  # the elastic controller's own account (mlcluster/elastic)
    if controller is not None:  # with whether it still runs: its file outlives it
        snapshot["autoscale"] = {**controller.to_json(), "running": controller_running(controller.pid, name)}
    elif state.provider in ("ssh", "aws"):  # its controller publishes on the orchestrator's host
        from .elastic.pool_setup import remote_status
        if (remote := remote_status(state)) is not None:
            snapshot["autoscale"] = remote
    return snapshot


@dataclass
class DownReport:
    """What `down` did: `left` names what could not be removed (empty: all
    gone); `forgotten` says the state was removed (always, with `purge`);
    `archive` is where the logs were kept (None: there was no state);
    `where` (with something left) says where to look for it."""
    name: str
    left: list[str]
    forgotten: bool
    archive: Optional[Path] = None
    where: str = ""


def _lost_state(name: str, spec: Optional[ClusterSpec]) -> Optional[ClusterState]:
    """The state, or the stand-in `down` works from when it is lost; raises
    when nothing says the cluster ever existed here."""
    state = ClusterState.load_or_none(name)
    if state is None and spec is not None:
        state = ClusterState(name=name, provider=spec.provider, token="", spec=spec)
    if state is None and not cluster_dir(name).exists():
        raise MlclusterError(f"no cluster named {name!r} is known here",
                             "`mlcluster list` shows the known ones; for a cluster whose state was lost, "
                             "--provider (and --config) say where to look for it")
    return state


def removal_question(name: str, spec: Optional[ClusterSpec] = None) -> str:
    """The confirmation `down` asks: what will be removed, and where."""
    state = _lost_state(name, spec)
    if state is None:
        return f"remove what cluster {name!r} left running on this machine (its state is lost)?"
    where = get_provider(state.provider).describe(state)
    return (f"remove cluster {name!r} ({state.provider}; {len(state.containers)} container(s); {where}) "
            f"and everything it started?")


def down(name: str, ui: QuietUI = QuietUI(), spec: Optional[ClusterSpec] = None, purge: bool = False) -> DownReport:
    """Remove everything of the cluster; keep its logs in the archive; remove
    its state once nothing is left, or anyway with `purge` (the report then
    says where to look for what may be left). Without a state file, `spec`
    (from --provider/--config) says where to look; with neither, the local
    provider looks by marker, and a name never seen here is an error."""
    state = _lost_state(name, spec)
    provider = get_provider(state.provider if state else "local")
    archive = archive_logs(state, provider, ui) if state is not None and state.token else None
    left = provider.down(name, state, ui)
    where = provider.describe(state) if left and state is not None else ""
    if not left or purge:
        remove_cluster_dir(name)
    return DownReport(name, left, forgotten=not left or purge, archive=archive, where=where)


def archive_logs(state: ClusterState, provider: Provider, ui: QuietUI, budget_s: float = 120.0) -> Path:
    """Every service's whole log (what the provider can still reach) and the
    state without its token, into `<home>/archive/<name>-<time>/`, private.
    A host that fails once is not asked again; the whole takes at most `budget_s`."""
    archive = home() / "archive" / f"{state.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    kept = dataclasses.replace(state, token="", worker_token="")  # the archive keeps no credential
    write_private_json(archive / "state.json", dataclasses.asdict(kept))
    targets = [("orchestrator", None)] + [(c.id, c.host) for c in state.containers]
    deadline, failed_hosts, missing = time.monotonic() + budget_s, set(), []
    with ui.step(f"keeping the logs of {len(targets)} service(s) in {archive}"):
        for target, host in targets:
            if host in failed_hosts or time.monotonic() > deadline:
                missing.append(f"{target}: not fetched (its host failed before, or time ran out)")
                continue
            try:
                lines = list(provider.logs(state, target, False, 0))
            except MlclusterError as exc:
                failed_hosts.add(host)
                missing.append(f"{target}: {exc}")
                continue
            write_private(archive / f"{target}.log",
                          "".join(line if line.endswith("\n") else line + "\n" for line in lines))
    if missing:
        write_private(archive / "MISSING.txt", "\n".join(missing) + "\n")
    return archive


def logs(name: str, target: Optional[str], follow: bool, tail: int) -> Iterator[str]:
    state = ClusterState.load(name)
    return get_provider(state.provider).logs(state, target, follow, tail)


__all__ = ["up", "down", "DownReport", "removal_question", "archive_logs", "status", "logs", "register", "wait_ready",
           "orchestrator_status", "ContainerRecord"]
