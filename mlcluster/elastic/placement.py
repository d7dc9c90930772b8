"""Healing on a pool of hosts (the ssh provider), pure: which containers to
restart in place, which to restart on another host, which to bring home.

The controller (elastic/pool.py) gathers the facts at every look and applies
what this returns through the deployment layer; nothing here does I/O or
reads a clock.

- A container whose host answers but whose process has been gone for
  `heal_grace_s` is restarted in place (`heal`).
- A container whose host has been unreachable for `host_grace_s` gets a stand-in
  on another reachable host of the pool with room (`move`); the roomiest host
  first (a spare before a loaded worker), ties by name, so the choice is stable.
  A stand-in on a host that itself dropped off is replaced the same way.
- Once the home host answers again and the container serves there (the
  orchestrator sees it free or busy), its stand-in is drained and stopped (`return`).

Room: a host holds up to `slots` containers (containers_per_worker unless the
host says otherwise); what counts there is the containers `up` placed on it
and the stand-ins running on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class PoolHost:
    name: str
    reachable: bool
    since: float        # when it last changed between reachable and not (the caller's clock)
    slots: int          # containers it may hold


@dataclass(frozen=True)
class Placed:
    """One of `up`'s containers, where it belongs and where it runs now."""
    id: str
    home: str                        # the host `up` placed it on
    serving_at_home: bool            # the orchestrator sees the home copy free or busy
    down_since: Optional[float] = None  # its process on a reachable home host is gone since
    stand_in: str = ""               # the host of its stand-in ("" none)


@dataclass(frozen=True)
class Action:
    kind: str       # heal | move | return
    container: str  # up's container id
    host: str       # heal: its home; move: the stand-in's new host; return: the stand-in's host
    reason: str


def occupancy(containers: list[Placed]) -> dict[str, int]:
    """Containers counted on each host: `up`'s, and the stand-ins."""
    count: dict[str, int] = {}
    for c in containers:
        count[c.home] = count.get(c.home, 0) + 1
        if c.stand_in:
            count[c.stand_in] = count.get(c.stand_in, 0) + 1
    return count


def plan(hosts: list[PoolHost], containers: list[Placed], now: float, host_grace_s: float,
         heal_grace_s: float, others: Optional[dict[str, int]] = None) -> list[Action]:
    """What to do now; see the module docstring. `others`: more containers on each host, taking room
    (those the controller started to scale: poolscale.py)."""
    by_name = {h.name: h for h in hosts}
    used = occupancy(containers)
    for name, n in (others or {}).items():
        used[name] = used.get(name, 0) + n
    actions: list[Action] = []

    def cut_off(name: str) -> Optional[float]:
        """Seconds the host has been unreachable, when past its grace; else None."""
        host = by_name.get(name)
        if host is None or host.reachable or now - host.since < host_grace_s:
            return None
        return now - host.since

    for c in sorted(containers, key=lambda c: c.id):
        home = by_name.get(c.home)
        if home is None:
            continue
        gone = cut_off(c.home)
        if gone is not None:
            if c.stand_in and cut_off(c.stand_in) is None:
                continue  # its stand-in serves (or its host is within its grace)
            target = roomiest(hosts, used, exclude={c.home, c.stand_in})
            if target is None:
                continue  # no room anywhere: it waits (the caller says so once)
            used[target] = used.get(target, 0) + 1
            lost = f"; its stand-in on {c.stand_in} is unreachable too" if c.stand_in else ""
            actions.append(Action("move", c.id, target, f"{c.home} unreachable for {gone:.0f} s "
                                                        f"(grace {host_grace_s:g} s){lost}: restarted on {target}"))
        elif home.reachable:
            if c.down_since is not None and now - c.down_since >= heal_grace_s:
                actions.append(Action("heal", c.id, c.home, f"its process on {c.home} was gone for "
                                                            f"{now - c.down_since:.0f} s: restarted in place"))
            elif c.stand_in and c.serving_at_home:
                actions.append(Action("return", c.id, c.stand_in, f"{c.home} answers again and {c.id} serves "
                                                                  f"there: its stand-in on {c.stand_in} leaves"))
    return actions


def roomiest(hosts: list[PoolHost], used: dict[str, int], exclude: set[str]) -> Optional[str]:
    """The reachable host with the most free slots (at least one), ties by name; None if none."""
    free = [(h.slots - used.get(h.name, 0), h.name) for h in hosts if h.reachable and h.name not in exclude]
    free = [(room, name) for room, name in free if room > 0]
    if not free:
        return None
    return min(free, key=lambda f: (-f[0], f[1]))[1]


def overdue(down_since: dict[str, float], now: float, grace_s: float) -> list[str]:
    """The stand-ins (by id) whose process has been gone for `grace_s`: restarted in place,
    as `up`'s containers are (`heal`)."""
    return sorted(k for k, since in down_since.items() if now - since >= grace_s)
