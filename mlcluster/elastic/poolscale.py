"""Autoscaling on a pool of hosts (ssh and aws clusters), pure: where the
containers the rule (policy.py) wants go, which leave, and on aws how many
worker instances to launch or which to terminate.

The controller (elastic/poolscaler.py) gathers the facts at every look and
applies what this returns; nothing here does I/O or reads a clock.

- The unit is a container. When the rule wants fewer, the controller's own
  containers leave first (the idlest, then the newest), then `up`'s own
  (`Home`: only one serving at home, none with a stand-in), the idlest first,
  then one on the host with the fewest of `up`'s still serving (so a host
  empties), then the highest id. The rule never wants fewer than the
  minimum, so neither does this. An `up`'s container scaled away is parked:
  its slot at home stays its own, and when the rule wants more the parked
  ones come back first (at home, lowest id first, only where the home host
  answers), and only then do new containers start.
- A new container goes on the reachable host with the most free slots (the
  same rule as a stand-in's: placement.roomiest), each host holding at most
  its slots, counting `up`'s containers, stand-ins, the controller's own and
  those still draining.
- The cap: running containers never exceed `max_containers`, counting the
  ones draining (they still run: the cap is the billing cap) and the
  stand-ins of healing only once for the container they stand in for.
- aws: containers with no room anywhere need hosts: as many worker
  instances as hold them (`slots` each), less those already on the way,
  within the instance cap; an instance the controller launched whose
  containers are all gone is terminated once nothing more is wanted (the
  rule wants no more, not even while it waits out its delay).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .placement import PoolHost, roomiest


@dataclass(frozen=True)
class Own:
    """A container the controller started to scale."""
    id: str
    host: str
    in_flight: int = 0   # the orchestrator's figure
    serial: int = 0      # the higher, the newer


@dataclass(frozen=True)
class Home:
    """One of `up`'s containers as scaling sees it."""
    id: str
    host: str                # its home
    in_flight: int = 0       # the orchestrator's figure
    serving: bool = True     # serving at home with no stand-in: it may be drained
    parked: bool = False     # scaled away (drained, stopped): it may come back


@dataclass(frozen=True)
class Fleet:
    """The aws side: what the instance cap leaves (absent on ssh)."""
    cap: int                   # the most worker instances that may exist
    live: int                  # worker instances now (pending ones included)
    slots: int                 # containers a new instance holds
    coming: int = 0            # containers the instances on their way will hold
    launched: tuple[str, ...] = ()  # instances the controller launched (only those are terminated)


@dataclass(frozen=True)
class ScalePlan:
    start: list[str] = field(default_factory=list)   # a host for each new container
    stop: list[str] = field(default_factory=list)    # own containers to drain, then stop
    park: list[str] = field(default_factory=list)    # `up`'s containers to drain, then stop (parked)
    unpark: list[str] = field(default_factory=list)  # parked `up`'s containers to start again at home
    launch: int = 0                                  # worker instances to launch (aws)
    terminate: list[str] = field(default_factory=list)  # instances to terminate (aws)
    held: int = 0                                    # containers wanted that have nowhere to go yet


def room_to_grow(desired: int, current: int, draining: int, max_containers: int) -> int:
    """How many containers may start now: towards `desired`, never past the cap with the draining ones."""
    return max(0, min(desired, max_containers - draining) - current)


def place(hosts: list[PoolHost], used: dict[str, int], count: int) -> list[str]:
    """A host for each of up to `count` new containers (the roomiest first); fewer when the pool is full."""
    used, chosen = dict(used), []
    for _ in range(count):
        host = roomiest(hosts, used, exclude=set())
        if host is None:
            break
        used[host] = used.get(host, 0) + 1
        chosen.append(host)
    return chosen


def leaving(own: list[Own], count: int) -> list[str]:
    """Up to `count` of the controller's containers to drain: the idlest first, then the newest."""
    return [o.id for o in sorted(own, key=lambda o: (o.in_flight, -o.serial, o.id))[:max(0, count)]]


def parking(homes: list[Home], count: int) -> list[str]:
    """Up to `count` of `up`'s serving containers to drain: the idlest, then one on the host with the
    fewest still serving (recounted after each choice, so a host empties), then the highest id."""
    left = [h for h in homes if h.serving and not h.parked]
    chosen: list[str] = []
    while left and len(chosen) < count:
        serving: dict[str, int] = {}
        for h in left:
            serving[h.host] = serving.get(h.host, 0) + 1
        pick = min(left, key=lambda h: (h.in_flight, serving[h.host], _descending(h.id)))
        chosen.append(pick.id)
        left.remove(pick)
    return chosen


def _descending(text: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in text) + (1,)


def returning(homes: list[Home], hosts: list[PoolHost], count: int) -> list[str]:
    """Up to `count` parked containers to start again at home (its slot is kept): lowest id first,
    only where the home host answers."""
    reachable = {h.name for h in hosts if h.reachable}
    back = sorted(h.id for h in homes if h.parked and h.host in reachable)
    return back[:max(0, count)]


def plan_scale(desired: int, current: int, draining: int, max_containers: int, hosts: list[PoolHost],
               used: dict[str, int], own: list[Own], fleet: Fleet | None = None, wants_more: bool = False,
               homes: list[Home] | None = None) -> ScalePlan:
    """What to do for `desired` containers when `current` count (and `draining` still run); see the docstring.
    `wants_more`: the rule is waiting out its delay for more (an empty instance then stays). `homes`: `up`'s
    containers (their slots are counted in `used`, a parked one's too)."""
    homes = homes or []
    if desired < current:
        stop = leaving(own, current - desired)
        park = parking(homes, current - desired - len(stop))
        return ScalePlan(stop=stop, park=park, terminate=idle(hosts, used, fleet))
    grow = room_to_grow(desired, current, draining, max_containers)
    unpark = returning(homes, hosts, grow)
    start = place(hosts, used, grow - len(unpark))
    missing = grow - len(unpark) - len(start)
    if fleet is None:
        return ScalePlan(start=start, unpark=unpark, held=missing)
    launch = 0
    if missing > fleet.coming:
        launch = min(math.ceil((missing - fleet.coming) / max(1, fleet.slots)), max(0, fleet.cap - fleet.live))
    held = max(0, missing - fleet.coming - launch * fleet.slots)
    terminate = idle(hosts, used, fleet) if grow == 0 and not wants_more else []
    return ScalePlan(start=start, unpark=unpark, launch=launch, held=held, terminate=terminate)


def idle(hosts: list[PoolHost], used: dict[str, int], fleet: Fleet | None) -> list[str]:
    """The instances the controller launched that hold no container (aws)."""
    if fleet is None:
        return []
    known = {h.name for h in hosts}
    return sorted(name for name in fleet.launched if name in known and used.get(name, 0) == 0)
