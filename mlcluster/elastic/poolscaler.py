"""Autoscaling on an ssh or aws cluster: the part of the controller on the
orchestrator's host (elastic/pool.py) that follows the queue, with
--max-containers.

Every look it reads the orchestrator's figures (queued + in flight), asks the
rule (policy.py) for a desired count, and applies what the pure placement of
poolscale.py returns:
- a new container starts on the roomiest pool host (`[ssh]` workers and
  spares; on aws the worker instances) with `up`'s environment for a
  worker, and is registered; the orchestrator sends it requests once its
  health check sees it ready;
- a container chosen to leave is drained (no new request), and stopped once
  the orchestrator has let it go (it holds nothing then): no request fails;
- on aws, containers with no room launch a tagged worker instance (the
  Fleet's launch, spot as the settings say) within the instance cap; once it
  runs and answers, the model is copied onto it from a worker host and the
  containers start there; an instance it launched whose containers are all
  gone is terminated (never the orchestrator's, never `up`'s).
- on aws, one of `up`'s worker instances whose containers are all parked,
  with nothing else on it, for the downscale delay is terminated: scaled
  away (aws_fleet.py keeps it parked, never replaced as a lost one); when
  the rule wants more and no host has room, it is launched again under its
  name and its parked containers come back on it (within the cap).
- below `up`'s count (--min-containers under workers x containers_per_worker),
  its own containers leave first, then `up`'s (poolscale.parking): drained,
  stopped once let go, parked (`away`, kept in the state file); their home
  slot stays theirs and they come back first (started at home, registered)
  when the rule wants more. A parked container that serves again (a second
  `up` started it) is counted again; the rule drains it after its delay.
Each decision is an event (scale_up / scale_down) with the rule's reason.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from shlex import quote
from typing import Optional

from ..deploy.host import RemoteHost, ServiceSpec
from ..errors import MlclusterError
from . import events
from .events import Event
from .placement import occupancy
from .policy import AutoscaleConfig, Decision, Figures, Memory, decide, plural
from .poolconfig import STATE_FILE, Scaled, load_away, load_scaled
from .poolhosts import Member, marker
from .poolscale import Fleet, Home, Own, emptied, empty_since, plan_scale
from .published import ControllerStatus

log = logging.getLogger("mlcluster.elastic.pool")
SERVING = ("free", "busy")


class Scaler:
    """`pool`: the PoolController (elastic/pool.py) it is part of: its hosts, containers and admin client."""

    def __init__(self, pool, config: AutoscaleConfig):
        self.pool, self.config = pool, config
        try:
            text = (pool.dir / STATE_FILE).read_text()
        except OSError:
            text = ""
        self.own: list[Scaled] = load_scaled(text)
        # `up`'s containers scaled away: id -> "draining" (stopped once let go) or "parked" (stopped)
        self.away: dict[str, str] = {k: v for k, v in load_away(text).items() if k in pool.workers}
        self.memory = Memory()
        self.decision: Optional[Decision] = None
        self.down_since: dict[str, float] = {}
        self.unready: set[str] = set()  # aws instances it launched that have no model yet
        self.awaited = 0  # containers decided on that wait for an instance on its way (aws): they count
        self.launch_after = 0.0  # after a failed launch, the next try
        self.serial = 1 + max((s.serial for s in self.own), default=0)
        self.empty_since: dict[str, float] = {}  # aws: up's instances holding only parked containers, since

    # -- what the pool controller asks of it ----------------------------------------
    def occupancy(self) -> dict[str, int]:
        """Its containers on each host (those draining too: they still run there)."""
        used: dict[str, int] = {}
        for s in self.own:
            used[s.host] = used.get(s.host, 0) + 1
        return used

    def everything(self, registry: dict) -> dict[str, int]:
        """Containers on each pool host: `up`'s, the stand-ins (leaving ones too) and its own."""
        used = occupancy(self.pool.placed(registry))
        for host in [self.pool.workers[cid].home for cid in self.away] + \
                [s.host for s in self.pool.stand_ins if s.leaving] + [s.host for s in self.own]:
            used[host] = used.get(host, 0) + 1
        return used

    def forget(self, name: str) -> None:
        """Pool host `name` is gone (an instance it terminated)."""
        member = self.pool.members.pop(name, None)
        if member is not None and member.host is not None:
            member.host.close()
        self.pool.renewed.discard(name)

    def empty(self) -> frozenset[str]:
        """aws: `up`'s instances that held only parked containers at the last look."""
        return frozenset(self.empty_since)

    def parked_at(self, name: str) -> list[str]:
        """`up`'s parked containers whose home is `name`."""
        return sorted(cid for cid, state in self.away.items()
                      if state == "parked" and self.pool.workers[cid].home == name)

    def settle(self) -> None:
        """aws: an instance scaled away (or lost while empty, or not made ready when launched again) leaves
        the pool; one launched again whose containers are all back is a host like any other."""
        f = self.pool.fleet
        for name in [n for n in f.parked if n in self.pool.members]:
            self.forget(name)
            self.empty_since.pop(name, None)
        for name in [n for n in f.relaunched if n in self.pool.members and not self.parked_at(n)]:
            f.settle(name)

    def homecoming(self) -> int:
        """aws: parked containers whose home is launched again and not yet a host of the pool that answers."""
        members = self.pool.members
        return sum(len(self.parked_at(n)) for n in self.pool.fleet.relaunched
                   if n not in members or not members[n].reachable)

    def counted(self) -> int:
        """Containers that count: `up`'s (a stand-in stands for one of them) and its own not draining."""
        return len(self.pool.workers) - len(self.away) + sum(1 for s in self.own if not s.leaving)

    def target(self) -> AutoscaleConfig:
        """The settings, the target a container's capacity unless one was given."""
        if self.config.target_ongoing > 0:
            return self.config
        capacity = next(iter(self.pool.capacity.values()), 1)
        return dataclasses.replace(self.config, target_ongoing=float(capacity))

    def joined(self, name: str, address: str, key: str = "") -> None:
        """An instance it launched runs at `address`: a pool host from now on (its host key pinned at the
        first login, as for a replacement), once the model is there."""
        template = self.pool.config.hosts[0]
        old = template.host
        host = dataclasses.replace(old, name=name, address=address, private_address=address,
                                   bind=address if old.bind == old.private_address else old.bind,
                                   workdir=self.pool.config.aws.workdirs.get(name, old.workdir))
        self.pool.store.first_use(address, host.port, key)
        config = dataclasses.replace(template, host=host, host_key="")  # its runtime, images, python, slots
        self.pool.members[name] = Member(config, self.pool.store, self.pool.clock())
        self.pool.renewed.add(name)
        self.unready.add(name)
        self.event("scale_up", f"{name} runs at {address}: a host of the pool from now on")

    # -- one look ---------------------------------------------------------------
    def look(self, status: dict, registry: dict, now: float) -> None:
        self.heal(registry, now)
        self.let_go(registry)
        self.park(registry)
        for name in sorted(self.unready):
            self.bring_model(name)
        config, current = self.target(), self.counted()
        fleet = self.fleet(now)
        # Processes that run beyond the counted containers: its own and stand-ins draining, and a stand-in
        # whose container serves at home again (until it is sent home): the cap counts them.
        draining = sum(1 for s in self.own if s.leaving) + sum(1 for v in self.away.values() if v == "draining") + sum(
            1 for s in self.pool.stand_ins if s.leaving or registry.get(s.of, {}).get("status") in SERVING)
        used = self.everything(registry)
        hosts = [h for h in self.pool.pool_hosts() if h.name not in self.unready]
        ready = sum(max(0, h.slots - used.get(h.name, 0)) for h in hosts if fleet and h.name in fleet.launched)
        self.awaited = min(self.awaited, fleet.coming + ready if fleet else 0)
        figures = Figures(queued=status["queue"]["depth"], in_flight=status["in_flight"],
                          current=current + self.awaited)
        decision = decide(figures, config, self.memory, now)
        self.memory, self.decision = decision.memory, decision
        own = [Own(s.id, s.host, registry.get(s.id, {}).get("in_flight", 0), s.serial)
               for s in self.own if not s.leaving]
        away = {s.of for s in self.pool.stand_ins if not s.leaving}
        homes = [Home(w.id, w.home, registry.get(w.id, {}).get("in_flight", 0),
                      serving=w.id not in away and registry.get(w.id, {}).get("status") in SERVING,
                      parked=self.away.get(w.id) == "parked") for w in self.pool.workers.values()
                 if self.away.get(w.id) != "draining"]
        plan = plan_scale(decision.desired, current, draining, config.max_containers, hosts, used, own, fleet,
                          wants_more=decision.memory.direction == 1, homes=homes)
        done = [self.bring_back(cid) for cid in plan.unpark] + [self.start(host) for host in plan.start]
        for sid in plan.stop:
            self.retire(next(s for s in self.own if s.id == sid))
        if plan.stop:
            done.append(f"draining {', '.join(plan.stop)}")
        for cid in plan.park:
            self.pool.admin.drain(cid)
            self.away[cid] = "draining"
        if plan.park:
            self.pool.save()
            done.append(f"draining {', '.join(plan.park)} (up's)")
        for again in (plan.relaunch + [""] * plan.launch) if now >= self.launch_after else []:
            name, sentence = self.pool.fleet.launch(again)  # again: one of up's scaled away, for its parked ones
            if not name:  # said once; tried again after EC2's look interval, not every look
                self.pool.fleet.say_once("error", f"no instance launched for containers with no room: {sentence}", "")
                self.launch_after = now + self.pool.fleet.config.look_s
                break
            back = self.parked_at(again) if again else []
            done.append(sentence + (f" for {', '.join(back)} (up's, parked): they come back on it" if back else ""))
            self.awaited += len(back) if again else fleet.slots
        self.awaited = min(self.awaited, max(0, decision.desired - current - len(plan.start) - len(plan.unpark)))
        for name in plan.terminate:
            sentence = self.pool.fleet.terminate(name)
            if sentence:
                self.forget(name)
                done.append(sentence + ": it held no container")
        for name in plan.scale_away:
            held, parked = now - self.empty_since.get(name, now), self.parked_at(name)
            sentence = self.pool.fleet.scale_away(name)
            if sentence:
                self.forget(name)
                self.empty_since.pop(name, None)
                done.append(f"{sentence}: scaled away, up's {', '.join(parked)} parked and nothing else on it for "
                            f"{held:.0f} s (downscale delay {config.downscale_delay_s:g} s); launched again when "
                            "they are wanted")
        if done:
            kind = "scale_up" if plan.start or plan.unpark or self.awaited else "scale_down"
            after = current + len(plan.unpark) + len(plan.start) - len(plan.stop) - len(plan.park) + self.awaited
            self.event(kind, f"{decision.reason}: {'; '.join(done)}", current, after)

    def fleet(self, now: float) -> Optional[Fleet]:
        """The instance cap, what is on its way and which of `up`'s instances are empty or scaled away (aws),
        or None (ssh)."""
        f, slots = self.pool.fleet, self.pool.config.hosts[0].slots
        if f is None:
            return None
        self.settle()
        # one launched again is a candidate once it is ready for its parked containers (the model is there)
        ups = [n for n, i in f.instances.items() if n in self.pool.members and n not in f.grown
               and n not in self.unready and n != self.pool.config.host and i != f.config.orchestrator]
        others: dict[str, int] = {}
        for host in [s.host for s in self.pool.stand_ins] + [s.host for s in self.own]:
            others[host] = others.get(host, 0) + 1
        homes = [Home(w.id, w.home, parked=self.away.get(w.id) == "parked") for w in self.pool.workers.values()]
        self.empty_since = empty_since(emptied(ups, homes, others), self.empty_since, now,
                                       wanting=self.memory.direction == 1)
        return Fleet(cap=f.config.cap, live=len(f.instances), slots=slots,
                     coming=(f.coming() + len(self.unready)) * slots + self.homecoming(),
                     launched=tuple(sorted(f.grown)), empty=tuple((n, now - t) for n, t in self.empty_since.items()),
                     park_after_s=self.target().downscale_delay_s,
                     parked=tuple((n, len(self.parked_at(n))) for n in sorted(f.parked)))

    def start(self, name: str) -> str:
        """A new container on pool host `name`, registered; a sentence."""
        member, template = self.pool.members[name], next(iter(self.pool.workers.values()))
        sid = f"{name}-scale{self.serial}"
        self.serial += 1
        port = member.free_port(self.pool.config.worker_port, self.ports(name))
        record = self.pool.runtime.start(member, self.pool.stand_in(template, member, sid, port),
                                         marker(self.pool.config.cluster, name))
        self.own.append(Scaled(sid, name, port, record.pid, record.log, self.serial - 1))
        self.pool.save()  # before anything else can fail: the record names what runs
        self.pool.register(sid, member.config.host.private_address, port, self.pool.capacity.get(template.id, 1))
        return f"started {sid} on {name} (port {port})"

    def bring_back(self, cid: str) -> str:
        """A parked `up`'s container started again at home and registered; a sentence."""
        w = self.pool.workers[cid]
        member = self.pool.members[w.home]
        record = self.pool.runtime.start(member, ServiceSpec(w.id, "worker", w.port, w.env, model_dir=w.model_dir),
                                         marker(self.pool.config.cluster, w.home))
        w.pid, w.log = record.pid, record.log
        del self.away[cid]
        self.pool.save()
        self.pool.register(cid, member.config.host.private_address, w.port, self.pool.capacity.get(cid, 1))
        return f"{cid} back on {w.home} (up's, port {w.port})"

    def park(self, registry: dict) -> None:
        """`up`'s containers drained: stopped once the orchestrator has let them go (parked); a parked one
        that serves again (a second `up` started it) counts again."""
        for cid, state in list(self.away.items()):
            w, member = self.pool.workers[cid], self.pool.members.get(self.pool.workers[cid].home)
            if state == "parked" and registry.get(cid, {}).get("status") in SERVING:
                del self.away[cid]
                self.pool.save()
                self.event("scale_up", f"{cid} serves again (a later `up` started it): counted again", container=cid)
            elif state == "draining" and cid not in registry and member is not None and member.host is not None:
                if not self.pool.runtime.stop(member, cid, w.pid, w.log, marker(self.pool.config.cluster, w.home)):
                    self.away[cid] = "parked"
                    self.pool.save()
                    log.info("stopped %s on %s: drained (parked)", cid, w.home)

    def ports(self, name: str) -> set[int]:
        return {w.port for w in self.pool.workers.values() if w.home == name} | \
               {s.port for s in self.pool.stand_ins if s.host == name} | {s.port for s in self.own if s.host == name}

    def retire(self, s: Scaled) -> None:
        self.pool.admin.drain(s.id)
        s.leaving = True
        self.pool.save()

    def heal(self, registry: dict, now: float) -> None:
        """One of its containers whose process is gone on a host that answers: restarted in place; one on
        a host unreachable past its grace: drained (stopped when the host answers again; until then it counts
        against the cap), so the rule may start another where there is room."""
        for s in [s for s in self.own if not s.leaving]:
            member = self.pool.members.get(s.host)
            if member is not None and not member.reachable and now - member.since >= self.pool.config.host_grace_s:
                self.retire(s)
                self.event("scale_down", f"{s.host} unreachable for {now - member.since:.0f} s (grace "
                                         f"{self.pool.config.host_grace_s:g} s): {s.id} drained", container=s.id)
                continue
            if registry.get(s.id, {}).get("status") in SERVING or member is None or member.host is None:
                self.down_since.pop(s.id, None)
                continue
            try:
                alive = self.pool.runtime.alive(member, s.id, s.pid, marker(self.pool.config.cluster, s.host))
            except MlclusterError:
                continue
            if alive:
                self.down_since.pop(s.id, None)
                continue
            since = self.down_since.setdefault(s.id, now)
            if now - since < self.pool.config.heal_grace_s:
                continue
            template = next(iter(self.pool.workers.values()))
            old, record = s.pid, self.pool.runtime.start(member, self.pool.stand_in(template, member, s.id, s.port),
                                                          marker(self.pool.config.cluster, s.host))
            s.pid, s.log = record.pid, record.log
            self.pool.save()
            del self.down_since[s.id]
            self.event("heal", f"its process on {s.host} was gone for {now - since:.0f} s: restarted in place "
                               f"(pid {old} -> {s.pid})", container=s.id)

    def let_go(self, registry: dict) -> None:
        """Stop each drained container once the orchestrator has let it go (and its host answers)."""
        for s in [s for s in self.own if s.leaving and s.id not in registry]:
            member = self.pool.members.get(s.host)
            if member is None or member.host is None:
                continue
            if not self.pool.runtime.stop(member, s.id, s.pid, s.log, marker(self.pool.config.cluster, s.host)):
                member.host.run(f"rm -f {member.host.path(s.id + '.env')} {member.host.path(s.id + '.pid')}",
                                warn=True)
                self.own.remove(s)
                self.pool.save()
                log.info("stopped %s on %s: drained", s.id, s.host)

    def bring_model(self, name: str) -> None:
        """The model onto an instance it launched, from the first worker host that answers."""
        member = self.pool.members[name]
        if member.host is None:
            return  # not reached yet: its probe connects
        source = next((m for m in (self.pool.members.get(h.host.name) for h in self.pool.config.hosts)
                       if m is not None and m.host is not None and m.name not in self.unready), None)
        if source is None:
            return
        model = source.config.model
        if model.startswith(source.host.workdir + "/"):
            model = copy_model(source.host, model, member.host)
        member.config = dataclasses.replace(member.config, model=model)
        self.unready.discard(name)

    # -- what it says -------------------------------------------------------------
    def published(self, healing: str) -> ControllerStatus:
        """`status`'s `autoscale` object: min, max, target, desired, current, the rule's reason and `healing`'s."""
        config, current = self.target(), self.counted()
        reason = self.decision.reason if self.decision else "autoscaling: no look yet"
        parked = tuple(sorted(cid for cid, state in self.away.items() if state == "parked"))
        away = tuple(sorted(self.pool.fleet.parked)) if self.pool.fleet else ()
        if parked:
            reason += f"; parked: {', '.join(parked)}" + (f" (scaled away: {', '.join(away)})" if away else "")
        return ControllerStatus(min=config.min_containers, max=config.max_containers, target=config.target_ongoing,
                                desired=self.decision.desired if self.decision else current, current=current,
                                reason=f"{reason}; {healing}", pid=os.getpid(), parked=parked, scaled_away=away)

    def event(self, kind: str, reason: str, current: Optional[int] = None, desired: Optional[int] = None,
              container: str = "") -> None:
        n = self.counted()
        events.append(self.pool.dir, Event(time=time.time(), kind=kind, reason=reason, container=container,
                                           current=n if current is None else current,
                                           desired=n if desired is None else desired))
        log.info("%s %s %s", kind, container, reason)

    def started(self) -> str:
        c = self.target()
        return (f"; autoscaling {c.min_containers}..{c.max_containers} containers at {c.target_ongoing:g} "
                f"ongoing each ({plural(len(self.own), 'container')} of its own now)")


def copy_model(source: RemoteHost, path: str, target: RemoteHost) -> str:
    """The model directory `path` on `source` copied to `target`'s workdir (once: a re-run finds it);
    its path there. The bytes pass through the controller (the hosts need not reach each other)."""
    where = target.path(path.rstrip("/").rsplit("/", 1)[1])
    if target.run(f"test -f {quote(where)}/.complete", warn=True).ok:
        return where
    data = source.run(f"tar -C {quote(path)} -cz . | base64 -w0", timeout=600).stdout
    staging = quote(where + ".partial")
    target.conn.run(f"rm -rf {staging} && mkdir -p {staging} && base64 -d | tar -C {staging} -xz && "
                    f"touch {staging}/.complete && rm -rf {quote(where)} && mv {staging} {quote(where)}",
                    timeout=600, stdin=data.encode())
    return where
