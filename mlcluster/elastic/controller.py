"""The controller of a local process cluster: `python -m mlcluster.elastic.controller NAME --settings JSON`,
started by `up` beside the orchestrator, stopped by `down` (it carries the marker).

Every look (twice a second) it reads the orchestrator's /status on the admin
listener and:
- heals, always: a worker process gone for `heal_grace` seconds is restarted
  in place (its port when free) and registered again;
- autoscales, with --max-containers: applies the rule (policy.py) to the
  queue and in-flight figures; starts and registers workers up to the
  desired count, or drains the surplus (the orchestrator gives them no new
  request) and stops each once the orchestrator has let it go.
With autostop or max_lifetime set it is also the cluster's watchdog (autostop.py).
Every decision is an event (events.py); its state is published for `status`
(published.py). The rule is pure; this module is only the loop that applies it.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Optional

import requests

from ..cluster import container_capacity
from ..deploy import localhost
from ..state import ClusterState, cluster_dir
from . import autostop, events, local
from .events import Event
from .local import Admin, WorkerProcess, WorkerTemplate
from .policy import Decision, Figures, Memory, decide, plural
from .published import ControllerStatus, publish
from .settings import autoscale_config

log = logging.getLogger("mlcluster.elastic")
LOOK_S = 0.5


class Controller:
    def __init__(self, state: ClusterState, clock=time.monotonic):
        self.name, self.dir = state.name, cluster_dir(state.name)
        self.clock = clock
        self.capacity = state.containers[0].capacity if state.containers else container_capacity(state.spec)
        self.config = autoscale_config(state.spec, self.capacity)
        self.grace_s = state.spec.heal_grace
        self.admin = Admin(local.admin_url(state), state.token)
        self.workers: list[WorkerProcess] = local.workers_of_up(state) + local.load_own(self.name)
        self.template: Optional[WorkerTemplate] = None
        self.dead_since: dict[str, float] = {}
        self.retiring: set[str] = set()
        self.memory = Memory()
        self.decision: Optional[Decision] = None
        self.autostop = autostop.idle_clock(state)
        self.fired = False  # autostop stopped the cluster: the loop ends
        self.published: Optional[ControllerStatus] = None  # the last one written, without its time
        self.published_at = 0.0
        self.serial = itertools.count(1 + max((int(w.id.rsplit("-", 1)[1]) for w in self.workers
                                               if w.own and w.id.rsplit("-", 1)[1].isdigit()), default=0))

    # -- one look ---------------------------------------------------------------
    def look(self) -> None:
        localhost.reap()  # the workers this process started and stopped
        status = self.admin.status()
        if self.autostop is not None:
            self.watch_idle(status)
            if self.fired:
                return
        registry = {c["id"]: c for c in status["containers"]}
        self.follow_up()
        self.keep_template()
        self.heal(registry)
        self.reregister(registry)
        if self.config is not None:
            self.scale(status)
        else:
            self.retire_own()
        self.let_go(registry)
        self.publish()

    def watch_idle(self, status: Optional[dict]) -> None:
        """Autostop (autostop.py): the cluster stops itself when idle or too old."""
        self.autostop.observe(status, time.monotonic())
        reason = self.autostop.reason(time.monotonic(), time.time())
        if reason:
            self.event("autostop", f"{reason}: the cluster stops itself")
            autostop.stop_cluster(self.name, self.dir, reason, self.autostop)
            self.fired = True

    def follow_up(self) -> None:
        """`up`'s workers as state.json lists them now: a later `up` may have
        started, restarted or stopped some (those are not ours to heal)."""
        state = ClusterState.load_or_none(self.name)
        if state is None:
            return
        current = {w.id: w for w in local.workers_of_up(state)}
        kept = []
        for w in self.workers:
            if w.own:
                kept.append(w)
            elif w.id in current:
                kept.append(current.pop(w.id))  # its pid and port as `up` recorded them
            else:
                self.dead_since.pop(w.id, None)
        self.workers = [*kept, *current.values()]

    def keep_template(self) -> None:
        if self.template is None:
            for w in self.workers:
                if local.running(w.pid, self.name):
                    self.template = WorkerTemplate.of(w.pid)
                    if self.template is not None:
                        return

    def heal(self, registry: dict) -> None:
        now = self.clock()
        for w in self.workers:
            if w.id in self.retiring or local.running(w.pid, self.name):
                self.dead_since.pop(w.id, None)
                continue
            since = self.dead_since.setdefault(w.id, now)
            if now - since < self.grace_s or self.template is None:
                continue
            old_pid, old_port = w.pid, w.port
            w.port = local.port_for(w.port)
            if w.port != old_port and w.id in registry:
                self.admin.drain(w.id)  # its old address leaves; the id comes back with the new one
            w.pid = self.template.start(w.id, w.port, Path(w.log))
            self.dead_since.pop(w.id)
            self.saved(w)  # before anything else can fail: the record always names the running process
            self.admin.register(w, self.capacity)
            self.event("heal", f"its process (pid {old_pid}) was gone for {now - since:.0f} s; restarted as "
                               f"pid {w.pid} on port {w.port}", container=w.id)

    def reregister(self, registry: dict) -> None:
        """A worker of ours the orchestrator no longer knows (a later `up` drained it, or
        the orchestrator was restarted without its records) is registered again."""
        for w in self.workers:
            if w.own and w.id not in registry and w.id not in self.retiring and local.running(w.pid, self.name):
                self.admin.register(w, self.capacity)

    def counted(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.id not in self.retiring]

    def scale(self, status: dict) -> None:
        config, counted = self.config, self.counted()
        figures = Figures(queued=status["queue"]["depth"], in_flight=status["in_flight"], current=len(counted))
        decision = decide(figures, config, self.memory, self.clock())
        self.memory, self.decision = decision.memory, decision
        # Draining ones still run: they count against the cap (the billing cap holds for processes).
        room = min(decision.desired, config.max_containers - len(self.retiring)) - figures.current
        if room > 0 and self.template is not None:
            for _ in range(room):
                self.start_one()
            self.event("scale_up", decision.reason, figures.current, figures.current + room)
        elif decision.desired < figures.current:
            in_flight = {c["id"]: c["in_flight"] for c in status["containers"]}
            # Ours before `up`'s, the idlest first, the newest first.
            order = sorted(counted, key=lambda w: (not w.own, in_flight.get(w.id, 0), -counted.index(w)))
            for w in order[:figures.current - decision.desired]:
                self.retiring.add(w.id)
                self.admin.drain(w.id)
            self.event("scale_down", decision.reason, figures.current, decision.desired)

    def retire_own(self) -> None:
        """A fixed cluster (autoscaling turned off by a later `up`) is `up`'s
        containers only: the controller's own are drained and stopped."""
        leaving = [w for w in self.workers if w.own and w.id not in self.retiring]
        if leaving:
            before = len(self.counted())
            for w in leaving:
                self.retiring.add(w.id)
                self.admin.drain(w.id)
            after = before - len(leaving)
            self.event("scale_down", f"autoscaling is off: the fixed size is up's {plural(after, 'container')}",
                       before, after)

    def start_one(self) -> None:
        worker_id = f"elastic-{next(self.serial)}"
        port = localhost.free_port()
        logfile = str(self.dir / "logs" / f"{worker_id}.log")
        w = WorkerProcess(id=worker_id, port=port, pid=self.template.start(worker_id, port, Path(logfile)),
                          log=logfile)
        self.workers.append(w)
        local.save_own(self.name, self.workers)
        self.admin.register(w, self.capacity)  # out of rotation until its health check sees it ready

    def let_go(self, registry: dict) -> None:
        """Stop each drained worker once the orchestrator has let it go."""
        for w in [w for w in self.workers if w.id in self.retiring and w.id not in registry]:
            local.stop(w.pid)
            self.workers.remove(w)
            self.retiring.discard(w.id)
            if w.own:
                local.save_own(self.name, self.workers)
            else:
                local.record_in_state(self.name, w, remove=True)
            log.info("stopped %s (pid %s): drained", w.id, w.pid)

    def saved(self, w: WorkerProcess) -> None:
        if w.own:
            local.save_own(self.name, self.workers)
        else:
            local.record_in_state(self.name, w)

    # -- what it says -------------------------------------------------------------
    def event(self, kind: str, reason: str, current: Optional[int] = None, desired: Optional[int] = None,
              container: str = "") -> None:
        n = len(self.counted())
        events.append(self.dir, Event(time=time.time(), kind=kind, reason=reason, container=container,
                                      current=n if current is None else current,
                                      desired=n if desired is None else desired))
        log.info("%s %s %s", kind, container, reason)

    def publish(self) -> None:
        """Write the state for `status` when it changed (or every 10 s, to show the controller lives)."""
        config, n = self.config, len(self.counted())
        status = ControllerStatus(
            min=config.min_containers if config else None, max=config.max_containers if config else None,
            target=config.target_ongoing if config else None,
            desired=self.decision.desired if self.decision else n, current=n,
            reason=self.decision.reason if self.decision else "fixed size: healing only",
            pid=os.getpid(), updated_at=time.time())
        if self.published is None or dataclasses.replace(status, updated_at=0) != self.published \
                or time.time() - self.published_at > 10:
            publish(self.dir, status)
            self.published, self.published_at = dataclasses.replace(status, updated_at=0), time.time()

    # -- the loop -----------------------------------------------------------------
    def run(self, stopping) -> None:
        self.event("started", "the controller runs: healing" + (
            f", autoscaling {self.config.min_containers}..{self.config.max_containers} containers at "
            f"{self.config.target_ongoing:g} ongoing each" if self.config else " (fixed size)"))
        unanswered = 0
        while not stopping() and not self.fired:
            try:
                self.look()
                unanswered = 0
            except (requests.RequestException, ValueError, KeyError) as exc:
                if self.autostop is not None:  # an orchestrator that stopped answering may be idle for good
                    self.watch_idle(None)
                unanswered += 1
                if unanswered == 20:  # ten seconds: say it once
                    self.event("error", f"the orchestrator's admin listener does not answer ({type(exc).__name__})")
            except OSError as exc:  # a worker that could not be started or stopped: said, and tried again
                log.exception("a look failed")
                self.event("error", f"a look failed: {exc}")
            time.sleep(LOOK_S)
        if not self.fired:
            self.event("stopped", f"the controller stopped; {plural(len(self.counted()), 'container')} "
                                  "left as they are")
        self.admin.close()


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlcluster.elastic.controller")
    parser.add_argument("name")
    parser.add_argument("--settings", default="{}", help="what `up` started it with (a change restarts it)")
    args = parser.parse_args(argv)
    json.loads(args.settings)  # only a key: the settings themselves are read from the state
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop_asked = []
    signal.signal(signal.SIGTERM, lambda *_: stop_asked.append(True))
    state = ClusterState.load(args.name)
    Controller(state).run(lambda: bool(stop_asked))


if __name__ == "__main__":
    main()
