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
- aws: containers with no room anywhere need hosts: first `up`'s worker
  instances that were scaled away come back (launched again under their
  name, for the parked containers whose home they are), then as many new
  worker instances as hold the rest (`slots` each), less those already on
  the way, within the instance cap (every live worker instance counts); an
  instance the controller launched whose containers are all gone is
  terminated once nothing more is wanted (the rule wants no more, not even
  while it waits out its delay).
- aws, scaled away: one of `up`'s worker instances (never the
  orchestrator's) is empty when every one of `up`'s containers homed there
  is parked (a draining one still runs) and nothing else runs there (no
  stand-in, none of the controller's own); empty for the downscale delay
  while nothing more was wanted, it is terminated. Its parked containers stay
  counted as parked (never lost): they come back on it, launched again.
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
    empty: tuple[tuple[str, float], ...] = ()   # up's instances holding no container: (name, seconds so)
    park_after_s: float = 0.0  # seconds one of up's must stay empty before it is scaled away (downscale delay)
    parked: tuple[tuple[str, int], ...] = ()    # up's instances scaled away: (name, its parked containers)


@dataclass(frozen=True)
class ScalePlan:
    start: list[str] = field(default_factory=list)   # a host for each new container
    stop: list[str] = field(default_factory=list)    # own containers to drain, then stop
    park: list[str] = field(default_factory=list)    # `up`'s containers to drain, then stop (parked)
    unpark: list[str] = field(default_factory=list)  # parked `up`'s containers to start again at home
    launch: int = 0                                  # worker instances to launch (aws)
    relaunch: list[str] = field(default_factory=list)  # up's instances scaled away, to launch again (aws)
    terminate: list[str] = field(default_factory=list)  # instances to terminate (aws)
    scale_away: list[str] = field(default_factory=list)  # up's empty instances to terminate (aws)
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
        return ScalePlan(stop=stop, park=park, terminate=idle(hosts, used, fleet), scale_away=due(fleet))
    grow = room_to_grow(desired, current, draining, max_containers)
    unpark = returning(homes, hosts, grow)
    start = place(hosts, used, grow - len(unpark))
    missing = grow - len(unpark) - len(start)
    if fleet is None:
        return ScalePlan(start=start, unpark=unpark, held=missing)
    need, room = missing - fleet.coming, max(0, fleet.cap - fleet.live)
    relaunch = []
    for name, parked in sorted(fleet.parked, key=lambda p: _order(p[0])):  # their parked containers come back
        if need <= 0 or len(relaunch) >= room:
            break
        if parked <= 0:
            continue
        relaunch.append(name)
        need -= parked
    launch = min(math.ceil(need / max(1, fleet.slots)), room - len(relaunch)) if need > 0 else 0
    held = max(0, need - launch * fleet.slots)
    quiet = grow == 0 and not wants_more
    return ScalePlan(start=start, unpark=unpark, launch=launch, relaunch=relaunch, held=held,
                     terminate=idle(hosts, used, fleet) if quiet else [], scale_away=due(fleet) if quiet else [])


def _order(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else 0, name)


def idle(hosts: list[PoolHost], used: dict[str, int], fleet: Fleet | None) -> list[str]:
    """The instances the controller launched that hold no container (aws)."""
    if fleet is None:
        return []
    known = {h.name for h in hosts}
    return sorted(name for name in fleet.launched if name in known and used.get(name, 0) == 0)


def emptied(names: list[str], homes: list[Home], others: dict[str, int]) -> list[str]:
    """Which of `names` (`up`'s worker instances, never the orchestrator's) hold no container now: every
    one of `up`'s containers homed there parked (one draining still runs) and nothing else there
    (`others`: the stand-ins and the controller's own containers on each host, draining ones too)."""
    homed: dict[str, list[Home]] = {}
    for h in homes:
        homed.setdefault(h.host, []).append(h)
    return sorted(n for n in names if homed.get(n) and all(h.parked for h in homed[n]) and not others.get(n, 0))


def empty_since(empty: list[str], since: dict[str, float], now: float, wanting: bool = False) -> dict[str, float]:
    """When each empty instance became empty (kept from `since`, `now` for a new one); one that holds
    a container again starts over, and so does every one while the rule wants more (`wanting`): the
    downscale delay counts only time in which nothing more was wanted."""
    return {name: now if wanting else since.get(name, now) for name in empty}


def due(fleet: Fleet | None) -> list[str]:
    """`up`'s instances empty for the downscale delay: to terminate (scaled away), lowest name first."""
    if fleet is None:
        return []
    return sorted((name for name, held in fleet.empty if held >= fleet.park_after_s), key=_order)
