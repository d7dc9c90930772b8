"""The controller of an ssh cluster: `python -m mlcluster.elastic.pool CONFIG`,
started by `up` on the orchestrator's host (elastic/pool_setup.py), so it heals
the cluster with the laptop closed; stopped by `down`.

Every look (once a second) it:
- asks every pool host for a trivial command over SSH (with the controller's
  own key, host keys pinned by `up`): a host that does not answer within
  PROBE_TIMEOUT_S is unreachable from then on, until it answers again;
- reads the orchestrator's /status on its admin listener (this host's loopback);
- for each of `up`'s containers the orchestrator sees down on a host that
  answers, checks whether its process (or its container: poolruntime.py) still runs there;
- applies the pure rule (placement.py): `heal` restarts a container in place,
  `move` starts a stand-in on another host of the pool and registers it,
  `return` drains the stand-in once the container serves at home again; a
  drained stand-in is stopped once the orchestrator has let it go; a stand-in
  whose process died is restarted in place, as `heal` does (`overdue`).
On an aws cluster it also replaces a lost worker instance (elastic/aws_fleet.py:
EC2 every 12 s with the orchestrator instance's profile); once the replacement
runs, its pool host is that instance (the host key pinned at the first login),
and the lost worker's containers start there as `heal` does (registered again
when the address changed).
Each decision is an event in `events.jsonl` beside its config (read over SSH by
`mlcluster events`); the stand-ins are kept in `controller-state.json`, so a
restarted controller knows them.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import requests

from ..deploy.agent import IdleClock
from ..deploy.host import ServiceSpec
from ..deploy.process import find_by_marker
from ..deploy.watchdog import RECORD
from ..errors import MlclusterError
from ..services import BIND
from . import events
from .aws_fleet import Fleet
from .events import Event
from .local import Admin
from .placement import Action, Placed, PoolHost, overdue, plan
from .poolconfig import CONFIG_FILE, STATE_FILE, PoolConfig, StandIn, WorkerSpec, dump_state, load_stand_ins
from .poolhosts import Member, PinnedKeys, marker
from .poolruntime import PoolRuntime, stand_in_service, stop_containers_here
from .poolscaler import Scaler
from .published import PUBLISHED_FILE, ControllerStatus

log = logging.getLogger("mlcluster.elastic.pool")
LOOK_S = 1.0
SERVING = ("free", "busy")


class PoolController:
    def __init__(self, config: PoolConfig, directory: Path, clock=time.monotonic):
        self.config, self.dir, self.clock = config, directory, clock
        self.store = PinnedKeys({f"{m.host.address}:{m.host.port}": m.host_key for m in config.hosts})
        self.members = {m.host.name: Member(m, self.store, clock()) for m in config.hosts}
        self.fleet = Fleet(config.aws, config.cluster, directory, self.event) if config.aws else None
        self.registry: dict[str, dict] = {}
        self.renewed: set[str] = set()  # pool hosts that are replacement instances now (aws)
        self.workers = {w.id: w for w in config.workers}
        self.runtime = PoolRuntime(config.cluster, self.members, self.renewed, config.docker, directory,  # made
                                   *((self.fleet.unready, self.fleet.ready) if self.fleet else ()))  # ready first
        self.admin = Admin(config.admin_url, config.token)
        self.stand_ins: list[StandIn] = load_stand_ins(self._read(STATE_FILE))
        self.capacity: dict[str, int] = {}  # each container's, as `up` registered it
        self.scaler = Scaler(self, config.autoscale) if config.autoscale and config.workers else None
        for name, instance_id, address, key in self.fleet.known() if self.fleet else []:
            self.replaced(name, instance_id, address, key)
        self.down_since: dict[str, float] = {}
        self.stuck: set[str] = set()  # containers said to wait for room
        self.probes = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(self.members)) + 2)
        self.idle: Optional[IdleClock] = None  # autostop: this host's agent is the controller
        if config.idle_s or config.deadline:
            self.idle = IdleClock(config.idle_s, config.deadline, last_active=time.monotonic())
        self.fired = False
        self.published: Optional[ControllerStatus] = None  # the last written, without its time
        self.published_at = 0.0
        self.config_mtime = (directory / CONFIG_FILE).stat().st_mtime if (directory / CONFIG_FILE).exists() else 0.0

    def _read(self, name: str) -> str:
        try:
            return (self.dir / name).read_text()
        except OSError:
            return ""

    # -- one look ---------------------------------------------------------------
    def look(self) -> None:
        self.reread_pids()
        empty = self.scaler.empty() if self.scaler else frozenset()  # up's instances holding only parked ones
        for name, instance_id, address in self.fleet.look(self.clock(), empty) if self.fleet else []:
            self.replaced(name, instance_id, address)
        for name in self.renewed:  # a replacement's key, learned at its first login: kept for a restart
            host = self.members[name].config.host
            if self.store.get(host.address, host.port):
                self.fleet.pin(name, host.address, self.store.get(host.address, host.port))
        answers = dict(zip(self.members, self.probes.map(lambda m: m.probe(), self.members.values())))
        now = self.clock()
        for name, answered in answers.items():
            self.members[name].observe(answered, now)
        status = self.admin.status()
        if self.idle is not None and self.watch_idle(status):
            return
        registry = self.registry = {c["id"]: c for c in status["containers"]}
        self.capacity.update({cid: c["capacity"] for cid, c in registry.items() if cid in self.workers})
        self.check_processes(registry, now)
        actions = plan(self.pool_hosts(), self.placed(registry), now, self.config.host_grace_s,
                       self.config.heal_grace_s, self.scaler.occupancy() if self.scaler else None)
        for action in actions:
            {"heal": self.heal, "move": self.move, "return": self.send_home}[action.kind](action)
        for stand_in in overdue({s.id: self.down_since[s.id] for s in self.stand_ins if s.id in self.down_since},
                                now, self.config.heal_grace_s):
            self.heal_stand_in(next(s for s in self.stand_ins if s.id == stand_in), now)
        self.say_stuck(registry, actions, now)
        self.let_go(registry)
        if self.scaler is not None:
            self.scaler.look(status, registry, now)
        self.publish(registry)

    def reread_pids(self) -> None:
        """A later `up` rewrote the config with the workers' pids as it found or started them."""
        path = self.dir / CONFIG_FILE
        mtime = path.stat().st_mtime if path.exists() else 0.0
        if mtime != self.config_mtime:
            self.config_mtime = mtime
            for w in PoolConfig.from_json(path.read_text()).workers:
                if w.id in self.workers:
                    self.workers[w.id].pid, self.workers[w.id].log = w.pid, w.log

    def pool_hosts(self) -> list[PoolHost]:
        return [PoolHost(m.name, m.reachable, m.since, m.config.slots) for m in self.members.values()]

    def placed(self, registry: dict) -> list[Placed]:
        serving = {s.of: s.host for s in self.stand_ins if not s.leaving}
        return [Placed(w.id, w.home, registry.get(w.id, {}).get("status") in SERVING, self.down_since.get(w.id),
                       serving.get(w.id, "")) for w in self.at_home()]

    def at_home(self) -> list[WorkerSpec]:
        """`up`'s containers but those scaled away (elastic/poolscaler.py): only these are healed."""
        return [w for w in self.workers.values() if self.scaler is None or w.id not in self.scaler.away]

    def check_processes(self, registry: dict, now: float) -> None:
        """Down in the orchestrator's eyes, on a host that answers: is its process
        gone? (`up`'s containers at home, and the stand-ins that are not leaving)"""
        running = [(w.id, w.home, w.pid) for w in self.at_home()] + \
                  [(s.id, s.host, s.pid) for s in self.stand_ins if not s.leaving]
        for cid, where, pid in running:
            member = self.members.get(where)
            if registry.get(cid, {}).get("status") in SERVING or member is None or member.host is None:
                self.down_since.pop(cid, None)
                continue
            try:
                alive = self.runtime.alive(member, cid, pid, marker(self.config.cluster, where))
            except MlclusterError:
                continue  # the host dropped off since its probe: the next look knows
            if alive:
                self.down_since.pop(cid, None)
            else:
                self.down_since.setdefault(cid, now)

    # -- what it does -------------------------------------------------------------
    def heal(self, action: Action) -> None:
        w, member = self.workers[action.container], self.members[action.host]
        old = w.pid
        record = self.runtime.start(member, ServiceSpec(w.id, "worker", w.port, w.env, model_dir=w.model_dir),
                                    marker(self.config.cluster, w.home))
        w.pid, w.log = record.pid, record.log
        self.save()  # its new pid, for the next `up` (pool_setup.adopt_healed)
        self.down_since.pop(w.id, None)
        address = member.config.host.private_address
        if member.name in self.renewed and self.registry.get(w.id, {}).get("host", address) != address:
            self.admin.drain(w.id)  # down: nothing in flight, it leaves at once
            self.register(w.id, address, w.port, self.capacity.get(w.id, 1))
        self.event("heal", f"{action.reason} ({_which(record, old)})", w.id)

    def move(self, action: Action) -> None:
        w, member = self.workers[action.container], self.members[action.host]
        for old in [s for s in self.stand_ins if s.of == w.id and not s.leaving]:
            self.retire(old)  # on a host that dropped off too: drained; stopped when it answers
        sid, n = f"{w.id}-on-{member.name}", 2
        while any(s.id == sid for s in self.stand_ins):  # an earlier one still draining there
            sid, n = f"{w.id}-on-{member.name}-{n}", n + 1
        port = self.free_port(member)
        record = self.runtime.start(member, self.stand_in(w, member, sid, port),
                                    marker(self.config.cluster, member.name))
        self.stand_ins.append(StandIn(sid, w.id, member.name, port, record.pid, record.log))
        self.save()  # before anything else can fail: the record names what runs
        self.register(sid, member.config.host.private_address, port, self.capacity.get(w.id, 1))
        self.stuck.discard(w.id)
        self.event("move", f"{action.reason} as {sid} (port {port})", w.id)

    def heal_stand_in(self, s: StandIn, now: float) -> None:
        w, member = self.workers[s.of], self.members[s.host]
        record = self.runtime.start(member, self.stand_in(w, member, s.id, s.port), marker(self.config.cluster, s.host))
        old, s.pid, s.log = s.pid, record.pid, record.log
        self.save()
        gone = now - self.down_since.pop(s.id)
        self.event("heal", f"its stand-in {s.id}'s process on {s.host} was gone for {gone:.0f} s: restarted in "
                           f"place ({_which(record, old)})", s.of)

    def replaced(self, name: str, instance_id: str, address: str, key: str = "") -> None:
        """Pool host `name` is now the replacement instance `instance_id` at `address`:
        its host key is `key`, else recorded at the first login and pinned from then on."""
        member = self.members.get(name)
        if member is None and self.fleet and name in self.fleet.relaunched:  # up's, scaled away, launched again
            member = self.members[name] = Member(self.config.member(name), self.store, self.clock())
        if member is None:
            if self.scaler is not None and self.fleet and name in self.fleet.grown:  # launched to scale
                self.scaler.joined(name, address, key)
            return
        old = member.config.host
        host = dataclasses.replace(old, address=address, private_address=address,
                                   bind=address if old.bind == old.private_address else old.bind)
        self.store.first_use(address, host.port, key)
        self.renewed.add(name)
        member.config = dataclasses.replace(member.config, host=host, host_key="")
        if member.host is not None:
            member.host.close()
            member.host = None
        for w in self.workers.values():
            if w.home == name and BIND in w.env and member.config.runtime != "docker":  # a container binds 0.0.0.0
                w.env[BIND] = f"{host.bind}:{w.port}"
        log.info("%s is now %s at %s", name, instance_id, address)

    def send_home(self, action: Action) -> None:
        stand_in = next(s for s in self.stand_ins if s.of == action.container and not s.leaving)
        self.retire(stand_in)
        self.event("return", f"{action.reason}: {stand_in.id} drains, then stops", action.container)

    def retire(self, stand_in: StandIn) -> None:
        self.admin.drain(stand_in.id)
        stand_in.leaving = True
        self.save()

    def let_go(self, registry: dict) -> None:
        """Stop each drained stand-in once the orchestrator has let it go (and its host answers)."""
        for s in [s for s in self.stand_ins if s.leaving and s.id not in registry]:
            member = self.members.get(s.host)
            if member is None or member.host is None:
                continue
            left = self.runtime.stop(member, s.id, s.pid, s.log, marker(self.config.cluster, s.host))
            if not left:
                member.host.run(f"rm -f {member.host.path(s.id + '.env')} {member.host.path(s.id + '.pid')}",
                                warn=True)
                self.stand_ins.remove(s)
                self.save()
                log.info("stopped %s on %s: drained", s.id, s.host)

    def say_stuck(self, registry: dict, actions: list[Action], now: float) -> None:
        """A container of a cut-off host with nowhere to go is said once (an error event)."""
        moved = {a.container for a in actions}
        for w in self.at_home():
            member = self.members[w.home]
            waiting = not member.reachable and now - member.since >= self.config.host_grace_s and \
                w.id not in moved and not any(s.of == w.id and not s.leaving for s in self.stand_ins)
            if waiting and w.id not in self.stuck:
                self.stuck.add(w.id)
                self.event("error", f"{w.home} is unreachable and no host of the pool has room for {w.id}", w.id)
            elif not waiting:
                self.stuck.discard(w.id)

    def watch_idle(self, status: Optional[dict]) -> bool:
        """Autostop, as deploy/agent.py on every other host: when the cluster has been
        idle for idle_s (or its lifetime is over), record why in autostop.json (what
        `status` reads) and stop this host's processes of the cluster, this one last."""
        self.idle.observe(status, time.monotonic())
        reason = self.idle.reason(time.monotonic(), time.time())
        if not reason:
            return False
        self.event("autostop", f"{reason}: the orchestrator's host stops its part (each other host's agent its own)")
        self.write_private(RECORD, {"reason": reason, "stopped_at": time.time(), "idle_s": self.config.idle_s,
                                    "deadline": self.config.deadline})
        found = subprocess.run(["sh", "-c", find_by_marker(marker(self.config.cluster, self.config.host))],
                               capture_output=True, text=True, timeout=30).stdout.split()
        for pid in {int(p) for p in found} - {os.getpid()}:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)
        if self.config.docker:  # a Docker orchestrator host: its containers of the cluster
            stop_containers_here(self.config.cluster, self.config.docker, self.config.local)
        self.fired = True
        return True

    def publish(self, registry: dict) -> None:
        """`status`'s `autoscale` object (read over SSH): written when it changes, and every 10 s."""
        serving = [w.id for w in self.workers.values() if registry.get(w.id, {}).get("status") in SERVING
                   or any(s.of == w.id and not s.leaving and registry.get(s.id, {}).get("status") in SERVING
                          for s in self.stand_ins)]
        away = sorted(f"{s.of} on {s.host}" for s in self.stand_ins if not s.leaving)
        healing = "healing: " + (", ".join(away) if away else "every container at home")
        status = ControllerStatus(min=None, max=None, target=None, desired=len(self.workers), current=len(serving),
                                  reason=healing, pid=os.getpid())
        if self.scaler is not None:
            status = self.scaler.published(healing)
        if status != self.published or time.time() - self.published_at > 10:
            self.write_private(PUBLISHED_FILE, dataclasses.asdict(dataclasses.replace(status, updated_at=time.time())))
            self.published, self.published_at = status, time.time()

    # -- helpers ------------------------------------------------------------------
    def free_port(self, member: Member) -> int:
        taken = {w.port for w in self.workers.values() if w.home == member.name} | \
                {s.port for s in self.stand_ins if s.host == member.name}
        return member.free_port(self.config.worker_port, taken)

    def stand_in(self, w: WorkerSpec, member: Member, sid: str, port: int) -> ServiceSpec:
        """The home container `w`'s service as `sid` on `member`'s host (elastic/poolruntime.py)."""
        return stand_in_service(w.env, w.model_dir, self.config.member(w.home), member.config, sid, port,
                                marker(self.config.cluster, member.name))

    def save(self) -> None:
        self.write_private(STATE_FILE, dump_state(self.stand_ins, list(self.workers.values()),
                                                  tuple(self.scaler.own) if self.scaler else (),
                                                  self.scaler.away if self.scaler else None))

    def register(self, sid: str, address: str, port: int, capacity: int) -> None:
        if self.config.local:  # this machine's containers: reached by name on the cluster's network
            address = self.runtime.here.container_name(sid)
        self.admin.http.post(f"{self.config.admin_url}/workers", timeout=10, json={"containers": [{
            "id": sid, "host": address, "port": port, "capacity": capacity}]}).raise_for_status()

    def write_private(self, name: str, data: dict) -> None:
        path = self.dir / name
        fd = os.open(f"{path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(f"{path}.tmp", path)

    def event(self, kind: str, reason: str, container: str = "") -> None:
        n = len(self.workers)
        events.append(self.dir, Event(time=time.time(), kind=kind, reason=reason, container=container,
                                      current=n, desired=n))
        log.info("%s %s %s", kind, container, reason)

    # -- the loop -----------------------------------------------------------------
    def run(self, stopping) -> None:
        self.event("started", f"the controller runs on the orchestrator's host: healing {len(self.workers)} "
                              f"containers on a pool of {len(self.members)} hosts"
                              + (self.scaler.started() if self.scaler else ""))
        unanswered, said = 0, ""
        while not stopping() and not self.fired:
            try:
                self.look()
                unanswered = 0
            except (requests.RequestException, ValueError, KeyError) as exc:
                if self.idle is not None:  # an orchestrator that stopped answering may be idle for good
                    self.watch_idle(None)
                unanswered += 1
                if unanswered == 10:
                    self.event("error", f"the orchestrator's admin listener does not answer ({type(exc).__name__})")
            except MlclusterError as exc:  # a start or stop that failed: said (once while it repeats), tried again
                log.exception("a look failed")
                if str(exc) != said:
                    self.event("error", f"a look failed: {exc}")
                said = str(exc)
            else:
                said = ""
            time.sleep(LOOK_S)
        if not self.fired:
            self.event("stopped", "the controller stopped; the containers are left as they are")
        self.probes.shutdown(wait=False)
        self.admin.close()


def _which(record, old_pid: int) -> str:
    """What a heal started: its container (Docker), or the process's new pid."""
    return f"container {record.container}" if record.container else f"pid {old_pid} -> {record.pid}"


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlcluster.elastic.pool")
    parser.add_argument("config", help=f"its {CONFIG_FILE} (0600), written by `up`")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    path = Path(args.config)
    config = PoolConfig.from_json(path.read_text())
    stop_asked: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop_asked.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop_asked.append(1))
    os.umask(0o077)
    PoolController(config, path.parent).run(lambda: bool(stop_asked))


if __name__ == "__main__":
    main()
