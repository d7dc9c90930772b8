"""The roll of a local process cluster: `up` with another model, backend or
batching on a running cluster replaces its worker processes wave by wave
(policy.waves). For each container of a wave a new worker process is started,
registered with its version label and waited on until the orchestrator's
health check has it ready; only then are the wave's old containers drained
(the orchestrator gives them no new request and lets them go once their
requests are answered) and their processes stopped. A new worker that dies
or is not ready in time stops the roll: the wave's new workers are drained
and stopped, the old ones never left, and `up` exits 1 with the reason.

state.json is updated wave by wave (each container's record names its model
and version, so `status` shows old and new during the roll); its spec names
the new model only once every container serves it. The elastic controller is
stopped for the roll (it would heal with the old template) and started again
after it; the workers it had added are drained and stopped at the end (it
adds new-version ones as the load asks).

`--canary P` starts one wave's worth of new workers beside the old ones and
has the orchestrator send P % of requests to them (canary.json records
it); `--promote` (or `up` with the canary's settings) finishes the roll;
`up` with the cluster's own settings removes the canary (a rollback)."""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import requests

from .. import services
from ..deploy import localhost
from ..deploy.localhost import LOOPBACK
from ..elastic import events, local
from ..elastic.events import Event
from ..errors import MlclusterError
from ..models import resolve_model
from ..state import ClusterSpec, ClusterState, ContainerRecord, cluster_dir
from ..ui import QuietUI
from . import record
from .policy import Slot, canary_size, version_label, waves
from .record import CanaryRecord, NewWorker

DRAIN_TIMEOUT_S = 120.0
POLL_S = 0.2


@dataclass(frozen=True)
class RollOptions:
    max_unavailable: Optional[int] = None  # containers replaced per wave (default: one host's)
    canary: Optional[float] = None         # percent of requests to the new version; stops there
    promote: bool = False                  # finish the canary's roll
    ready_timeout_s: float = 180.0         # for each new worker to load its model

    def changes(self) -> bool:
        """Asks for a change of a running cluster's version by itself."""
        return self.canary is not None or self.promote


def refusal(state: ClusterState) -> Optional[str]:
    """Why this cluster cannot be rolled (None: it can)."""
    if state.provider != "local" or state.runtime != "process":
        where = state.provider if state.provider != "local" else f"local {state.runtime}"
        return f"rolling updates are local-process only for now (this cluster is {where})"
    return None


def serving_version(spec: ClusterSpec) -> str:
    model = Path(spec.model).expanduser()
    ref = str(model.resolve()) if model.is_dir() else spec.model
    return version_label(ref, spec.backend, spec.batch_max, spec.batch_wait_ms)


class LocalRoll:
    def __init__(self, state: ClusterState, ui: QuietUI, capacity: int, options: RollOptions):
        self.state, self.name, self.ui, self.capacity, self.options = state, state.name, ui, capacity, options
        self.admin = local.Admin(local.admin_url(state), state.token)
        self.dir = cluster_dir(state.name)

    # -- the commands ---------------------------------------------------------
    def roll(self, spec: ClusterSpec, served_model: str) -> ClusterState:
        """Roll (or start a canary of) `spec`; `served_model` is what its workers load."""
        version = serving_version(spec)
        canary = record.load(self.name)
        if canary is not None and canary.version != version:
            raise MlclusterError(f"cluster {self.name!r} has a canary of another version in place",
                                 f"`mlcluster up --name {self.name}` with its current settings removes it first")
        old = self.old_slots(version, {w.id for w in canary.workers} if canary else set())
        per_wave = waves(old, self.options.max_unavailable, self.state.spec.containers_per_worker)
        local.stop_controller(self.state)
        try:
            if self.options.canary is not None and not self.options.promote:
                if canary is not None:  # the same canary again: only its share changes
                    canary.percent = self.options.canary
                    record.save(self.name, canary)
                    self.set_canary((version, canary.percent))
                    return self.state
                return self.start_canary(spec, served_model, version, old, per_wave)
            self.set_canary(None)
            stand_ins = {w.slot: w for w in canary.workers} if canary else {}
            for number, wave in enumerate(per_wave, 1):
                self.wave(wave, spec, served_model, version, stand_ins, f"wave {number}/{len(per_wave)}")
            self.retire_elastic_workers()
            record.forget(self.name)
            # What it serves changed; the rest of `spec` is the caller's to apply (as any `up` does).
            self.state.spec = dataclasses.replace(self.state.spec, model=spec.model, backend=spec.backend,
                                                  batch_max=spec.batch_max, batch_wait_ms=spec.batch_wait_ms)
            self.state.save()
            self.event(f"roll done: every container serves {spec.model} ({spec.backend}), version {version}")
            return self.state
        except requests.RequestException as exc:
            raise MlclusterError(f"the orchestrator's admin listener stopped answering during the roll "
                                 f"({type(exc).__name__}); what was done so far is recorded",
                                 f"`mlcluster status --name {self.name}` shows it; `up` again resumes") from None
        finally:
            local.ensure_controller(self.state)
            self.admin.close()

    def rollback(self) -> ClusterState:
        """Remove the canary: its workers drained and stopped, no split."""
        canary = record.load(self.name)
        self.set_canary(None)
        if canary is not None:
            self.retire([w.id for w in canary.workers], [w.pid for w in canary.workers])
            self.state.containers = [c for c in self.state.containers if c.version != canary.version]
            self.state.save()
            record.forget(self.name)
            self.event(f"canary of version {canary.version} removed: every request goes to "
                       f"{self.state.spec.model} again")
        self.admin.close()
        return self.state

    # -- the steps ---------------------------------------------------------------
    def old_slots(self, version: str, stand_ins: set[str]) -> list[Slot]:
        """`up`'s workers that do not serve `version` yet (a roll cut short resumes;
        a canary's workers stand beside old ones, which are still to replace)."""
        done = {c.id.split(".", 1)[0] for c in self.state.containers if c.version == version and c.id not in stand_ins}
        return [Slot(sid, p.worker) for sid, p in self.state.resources.of_kind("worker").items() if sid not in done]

    def start_canary(self, spec: ClusterSpec, served_model: str, version: str, old: list[Slot],
                     per_wave: list[list[Slot]]) -> ClusterState:
        percent = self.options.canary
        size = canary_size(len(old), percent, len(per_wave[0]) if per_wave else 1)
        canary = CanaryRecord(version=version, percent=percent, spec=copy.deepcopy(spec))
        started = [self.start(slot, spec, served_model, version) for slot in old[:size]]
        canary.workers = started
        record.save(self.name, canary)
        self.wait_ready(started)
        self.set_canary((version, percent))
        self.event(f"canary: {size} container(s) of {spec.model} ({spec.backend}), version {version}, beside "
                   f"{len(old)} of {self.state.spec.model}; {percent:g} % of requests go to them")
        return self.state

    def wave(self, wave: list[Slot], spec: ClusterSpec, served_model: str, version: str,
             stand_ins: dict[str, NewWorker], what: str) -> None:
        new = [stand_ins.get(slot.id) or self.start(slot, spec, served_model, version) for slot in wave]
        self.wait_ready(new)
        procs = self.state.resources.services
        old_ids = self.old_containers({slot.id for slot in wave}, version)
        self.retire(old_ids, [procs[slot.id].pid for slot in wave])
        for slot, worker in zip(wave, new):
            p = procs[slot.id]
            p.pid, p.port, p.log = worker.pid, worker.port, worker.log
        done = {w.id for w in new}
        self.state.containers = [c for c in self.state.containers if c.id not in old_ids and c.id not in done]
        self.state.containers += [ContainerRecord(id=w.id, host=LOOPBACK, port=w.port, worker=slot.worker,
                                                  capacity=self.capacity, model=spec.model, version=version)
                                  for slot, w in zip(wave, new)]
        self.state.save()
        self.event(f"{what}: {', '.join(w.id for w in new)} ({spec.model}, version {version}) replaced "
                   f"{', '.join(old_ids)}")

    def old_containers(self, slots: set[str], version: str) -> list[str]:
        """The containers of these slots that do not serve `version`: as recorded, and as the
        orchestrator has them (the controller re-registers a worker it healed under its slot's name)."""
        registered = [(c["id"], c.get("version", "")) for c in self.admin.status()["containers"]]
        recorded = [(c.id, c.version) for c in self.state.containers]
        found = [cid for cid, v in recorded + registered if cid.split(".", 1)[0] in slots and v != version]
        return list(dict.fromkeys(found)) or sorted(slots)

    def start(self, slot: Slot, spec: ClusterSpec, served_model: str, version: str) -> NewWorker:
        """A new worker process for `slot`, registered (out of rotation until its health check sees it ready)."""
        container_id = f"{slot.id}.{version}"
        port = localhost.free_port()
        log = self.dir / "logs" / f"{container_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        model = resolve_model(served_model, self.ui)
        n = len(self.state.resources.of_kind("worker"))
        env = services.worker_env(model=model.ref, port=port, torch_threads=max(1, (os.cpu_count() or 1) // n),
                                  worker_id=container_id, service_ms=spec.service_ms,
                                  marker=localhost.marker(self.name),
                                  **services.cluster_worker_settings(spec, self.state))
        if model.local:
            env["HF_HUB_OFFLINE"] = "1"
        worker = NewWorker(slot=slot.id, id=container_id, port=port, log=str(log),
                           pid=localhost.spawn(services.worker_command(), "worker", env, log))
        self.state.containers.append(ContainerRecord(id=container_id, host=LOOPBACK, port=port, worker=slot.worker,
                                                     capacity=self.capacity, model=spec.model, version=version))
        self.state.save()  # recorded the moment it exists: `status` shows it, `down` stops it
        body = {"containers": [{"id": container_id, "host": LOOPBACK, "port": port, "capacity": self.capacity,
                                "version": version}]}
        response = self.admin.http.post(f"{self.admin.url}/workers", json=body, timeout=10)
        if response.status_code != 201:
            self.fail([worker], f"the orchestrator refused {container_id} ({response.status_code})")
        return worker

    def wait_ready(self, new: list[NewWorker]) -> None:
        deadline = time.monotonic() + self.options.ready_timeout_s
        with self.ui.step(f"waiting for {len(new)} new container(s) to load the model and report ready"):
            while True:
                localhost.reap()
                registry = {c["id"]: c["status"] for c in self.admin.status()["containers"]}
                dead = [w for w in new if not local.running(w.pid, self.name)]
                if dead:
                    self.fail(new, f"{dead[0].id} exited before it was ready; its log ends:\n{tail(dead[0].log)}")
                for w in new:
                    broken = load_error(w) if registry.get(w.id) not in ("free", "busy") else None
                    if broken:
                        self.fail(new, f"{w.id} cannot serve: {broken}")
                if all(registry.get(w.id) in ("free", "busy") for w in new):
                    return
                if time.monotonic() > deadline:
                    late = next(w for w in new if registry.get(w.id) not in ("free", "busy"))
                    self.fail(new, f"{late.id} was not ready after {self.options.ready_timeout_s:.0f} s; its log "
                                   f"ends:\n{tail(late.log)}")
                time.sleep(POLL_S)

    def fail(self, new: list[NewWorker], reason: str) -> None:
        """Stop the roll: the new workers go, the old ones keep serving."""
        canary = record.load(self.name)
        if canary is not None and any(w.id in {c.id for c in canary.workers} for w in new):
            record.forget(self.name)
            self.set_canary(None)
        self.retire([w.id for w in new], [w.pid for w in new])
        gone = {w.id for w in new}
        self.state.containers = [c for c in self.state.containers if c.id not in gone]
        self.state.save()
        self.event(f"roll stopped: {reason.splitlines()[0]}; the old containers keep serving", kind="error")
        raise MlclusterError(f"the roll stopped: {reason}\nthe old containers keep serving "
                             f"{self.state.spec.model}; nothing else was changed",
                             f"`mlcluster logs --name {self.name} CONTAINER` shows more")

    def retire(self, ids: list[str], pids: list[int]) -> None:
        """Drain the containers, wait until the orchestrator has let them go, stop the processes."""
        for container_id in ids:
            self.admin.drain(container_id)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            if not {c["id"] for c in self.admin.status()["containers"]} & set(ids):
                break
            time.sleep(POLL_S)
        for pid in pids:
            if local.running(pid, self.name):
                local.stop(pid)
        localhost.reap()

    def retire_elastic_workers(self) -> None:
        own = local.load_own(self.name)
        if own:
            self.retire([w.id for w in own], [w.pid for w in own])
            local.save_own(self.name, [])

    def set_canary(self, split: Optional[tuple[str, float]]) -> None:
        url = f"{self.admin.url}/canary"
        try:
            if split is None:
                response = self.admin.http.delete(url, timeout=10)
            else:
                response = self.admin.http.put(url, json={"version": split[0], "percent": split[1]}, timeout=10)
        except requests.RequestException as exc:
            raise MlclusterError(f"the orchestrator's admin listener did not answer ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise MlclusterError(f"the orchestrator refused the canary setting ({response.status_code})")

    def event(self, reason: str, kind: str = "roll") -> None:
        n = len(self.state.containers)
        events.append(self.dir, Event(time=time.time(), kind=kind, reason=reason, current=n, desired=n))
        self.ui.info(reason)


def load_error(worker: NewWorker) -> Optional[str]:
    """The worker's own account of a model it could not load (None: loading, or ready)."""
    try:
        reason = requests.get(f"http://{LOOPBACK}:{worker.port}/ready", timeout=2).json().get("reason", "")
    except (requests.RequestException, ValueError, AttributeError):
        return None  # not answering yet
    return reason if "could not be loaded" in reason else None


def tail(log: str, lines: int = 10) -> str:
    return "".join(localhost.read_log(Path(log), False, lines)) or "(empty)"
