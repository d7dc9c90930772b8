"""The aws part of the controller (elastic/pool.py) on the orchestrator's
instance: replacing a lost worker instance (issues 20 and 21).

Every `look_s` (12 s: EC2 is not asked every second) it asks EC2, with the
credentials of the orchestrator instance's profile (boto3's chain on that
host: the instance metadata service; the user's credentials never leave
their machine), which worker instances were lost (terminated, shutting
down, unknown: a reclaimed spot instance is one) and launches a tagged
replacement for each, within the cap (aws_heal.py: spot first, then on-demand
as `spot_fallback` says). Once the replacement runs, the controller is told
its name and address; it then reaches it over SSH (its key is in the
replacement's user data; the host key is recorded at the first login to
that new instance and pinned from then on, as `up` does for a new instance)
and starts the lost worker's containers there as it heals a host in place.

Scaled away is not lost: one of `up`'s worker instances whose containers
the scaler parked (elastic/poolscaler.py) is terminated on purpose
(`scale_away`) and kept as parked, never replaced; one that is terminated
or reclaimed while it holds nothing but parked containers (`look`'s
`empty`) is parked the same way. When the rule wants its containers again,
it is launched again under its name (`launch(name)`) and its containers
come back on it; `up`'s instance it was is never counted twice.

`fleet_of` (providers/aws/fleet.py) is `up`'s side: the record (elastic/poolconfig.py's AWSFleet) it
writes into the controller's config. The instances the controller launched
are kept in `controller-aws.json` beside its config (with the host key
pinned at the first login), so a restarted controller knows them; `up`,
`status` and `down` find them by tag.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import MlclusterError
from ..providers.aws import ec2, spot
from ..providers.aws.api import AWS
from ..providers.aws.ec2 import Image, LaunchSpec
from ..providers.aws.options import Market
from . import aws_heal as heal
from .poolconfig import AWSFleet

log = logging.getLogger("mlcluster.elastic.pool")
FLEET_FILE = "controller-aws.json"


class Fleet:
    """See the module docstring. `say(kind, reason, container)` writes an event."""

    def __init__(self, config: AWSFleet, cluster: str, directory: Path, say: Callable[[str, str, str], None],
                 connect: Optional[Callable[[], AWS]] = None):
        self.config, self.cluster, self.path, self.say = config, cluster, directory / FLEET_FILE, say
        self.connect = connect or (lambda: AWS(config.region, "", config.endpoint_url))
        self.aws: Optional[AWS] = None
        self.next_look = 0.0
        self.instances = dict(config.instances)
        self.pending: dict[str, str] = {}  # name -> replacement id, not running yet
        self.hosts: dict[str, dict[str, str]] = {}  # name -> {id, address, key} of a replacement reached
        self.said: set[str] = set()
        self.grown: set[str] = set()  # the instances it launched to scale (only those it terminates)
        self.next_pending = 0.0
        self.discarded: set[str] = set()  # instances terminated because they could not be made ready
        self.parked: dict[str, str] = {}  # up's instances scaled away: name -> the id terminated
        self.relaunched: set[str] = set()  # up's launched again for their parked containers, not all back yet
        try:
            saved = json.loads(self.path.read_text())
            self.instances.update(saved["instances"])
            self.pending.update(saved["pending"])
            self.hosts.update(saved.get("hosts", {}))
            self.grown.update(saved.get("grown", []))
            # parked under the instance `up` had then: a later `up` that launched it again un-parks it
            self.parked.update({n: i for n, (i, up) in saved.get("parked", {}).items()
                                if up == config.instances.get(n, "")})
            self.relaunched.update(n for n in saved.get("relaunched", []) if n in self.instances)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        for name in self.parked:
            self.instances.pop(name, None)

    def known(self) -> list[tuple[str, str, str, str]]:
        """(name, id, address, pinned key) of the replacements reached before a restart that `up` does not know yet."""
        return [(n, h["id"], h["address"], h["key"]) for n, h in self.hosts.items()
                if h["id"] == self.instances.get(n) and h["id"] != self.config.instances.get(n)]

    def pin(self, name: str, address: str, key: str) -> None:
        """The host key learned at the first login to `name`'s replacement: kept for a restarted controller."""
        found = {"id": self.instances.get(name, ""), "address": address, "key": key}
        if self.hosts.get(name) != found:
            self.hosts[name] = found
            self.save()

    def launch_spec(self) -> LaunchSpec:
        c = self.config
        return LaunchSpec(self.cluster, Image(c.image_id, c.root_device, ""), c.instance_type, c.key_name,
                          c.security_group, c.volume_gb, c.user_data)

    def look(self, now: float, empty: frozenset[str] = frozenset()) -> list[tuple[str, str, str]]:
        """Replace what was lost; (name, instance id, address) of each replacement that now runs.
        `empty`: `up`'s instances holding nothing but parked containers: one of them lost is scaled away
        (parked, not replaced)."""
        if now < self.next_look:
            if self.aws is None or not self.pending or now < self.next_pending:
                return []
            self.next_pending = now + 2.0  # one launched to scale: looked at more often than every look_s
            return self.running()
        self.next_look = now + self.config.look_s
        try:
            self.aws = self.aws or self.connect()
            own = ec2.describe(self.aws, [self.config.orchestrator]) if self.config.orchestrator else []
            if own and own[0].state != "running":  # `down` terminates the cluster: nothing new
                self.say_once("stopped", f"the orchestrator's instance is {own[0].state}: no replacement is "
                                         "launched any more", "")
                return []
            found = heal.look(self.aws, self.cluster, self.instances)
            self.lost_while_empty(found, empty)
            result = heal.heal(self.aws, self.launch_spec(), [tuple(z) for z in self.config.zones], self.instances,
                               self.config.cap, Market(self.config.spot, self.config.fallback), found=found)
            self.record(result)
            return self.running()
        except MlclusterError as exc:
            self.say_once("error", f"EC2 (with the orchestrator instance's profile): {exc.message}", "")
            self.aws = None  # a fresh session next time (its credentials may have been refreshed)
            return []

    def lost_while_empty(self, found: list, empty: frozenset[str]) -> None:
        """An empty instance of `up`'s that was terminated or reclaimed: scaled away, not replaced."""
        states = {i.id: i.state for i in found}
        for name in sorted(n for n in empty if n in self.instances and n not in self.grown):
            instance_id = self.instances[name]
            state = states.get(instance_id, "unknown to EC2")
            if state in heal.LOST_STATES or state == "unknown to EC2":
                self.park(name, instance_id)
                self.say("scale_down", f"{name} ({instance_id}) is {state} while its containers are all parked: "
                                       "scaled away, not replaced (launched again when they are wanted)", name)

    def record(self, result: heal.HealResult) -> None:
        for r in result.replaced:
            self.instances[r.name] = self.pending[r.name] = r.new_id
            self.save()
            self.say("heal", f"{r.reason}; launched {r.new_id} ({r.market}) in its place", r.name)
            if r.refused:
                self.say("spot_fallback", spot.refused_sentence(r.refused, r.new_id), r.name)
        for lost in result.held:
            self.say_once("error", f"{lost.reason}; not replaced: the cap of {self.config.cap} worker instance(s) "
                                   "is reached", lost.name)
        for lost, code in result.refused:
            self.say_once("error", f"{lost.reason}; spot capacity refused ({code}) and spot_fallback is never: "
                                   "not replaced", lost.name)

    def running(self) -> list[tuple[str, str, str]]:
        if not self.pending:
            return []
        ready = []
        for inst in ec2.describe(self.aws, list(self.pending.values())):
            name = next(n for n, i in self.pending.items() if i == inst.id)
            if inst.state == "running":
                ready.append((name, inst.id, self.config.address_map.get(name) or inst.private_ip))
                del self.pending[name]
        if ready:
            self.save()
        return ready

    # -- scaling (elastic/poolscaler.py) -------------------------------------------
    def new_name(self) -> str:
        """The next worker name: one past the highest number in use (a parked one's too)."""
        numbers = [int(n[len("worker"):]) for n in [*self.instances, *self.parked] if n[len("worker"):].isdigit()]
        return f"worker{max(numbers, default=0) + 1}"

    def coming(self) -> int:
        """Instances launched to scale that do not run yet."""
        return sum(1 for n in self.pending if n in self.grown)

    def launch(self, name: str = "") -> tuple[str, str]:
        """A tagged worker instance for containers with no room (the cap is the caller's to keep):
        (its name, a sentence), or ("", why not). `name`: one of `up`'s scaled away, launched again
        for its parked containers."""
        again, name = bool(name), name or self.new_name()
        try:
            self.aws = self.aws or self.connect()
            launched = spot.launch_worker(self.aws, self.launch_spec(), name, [tuple(z) for z in self.config.zones],
                                          lambda zone, code: None, Market(self.config.spot, self.config.fallback))
        except MlclusterError as exc:
            self.aws = None
            return "", f"EC2 (with the orchestrator instance's profile): {exc.message}"
        self.instances[name] = self.pending[name] = launched.instance.id
        if again:
            self.parked.pop(name, None)
            self.relaunched.add(name)
        else:
            self.grown.add(name)
        self.save()
        refused = f" after spot was refused ({launched.refused})" if launched.refused else ""
        return name, f"launched {name}{' again' if again else ''} ({launched.instance.id}, {launched.market}{refused})"

    def terminate(self, name: str) -> str:
        """Terminate `name`, an instance launched to scale (never the orchestrator, never up's); a sentence."""
        instance_id = self.instances.get(name, "")
        if name not in self.grown or not instance_id or instance_id == self.config.orchestrator:
            return ""
        self.aws = self.aws or self.connect()
        ec2.terminate(self.aws, [instance_id])
        for record in (self.instances, self.pending, self.hosts):
            record.pop(name, None)
        self.grown.discard(name)
        self.save()
        return f"terminated {name} ({instance_id})"

    def scale_away(self, name: str) -> str:
        """Terminate `name`, one of `up`'s worker instances whose containers are all parked (never the
        orchestrator's, never one launched to scale: `terminate`); kept as parked, never replaced as a
        lost one is. A sentence, "" when `name` is not such an instance."""
        instance_id = self.instances.get(name, "")
        if not instance_id or name in self.grown or name == "orchestrator" or instance_id == self.config.orchestrator:
            return ""
        self.aws = self.aws or self.connect()
        ec2.terminate(self.aws, [instance_id])
        self.park(name, instance_id)
        return f"terminated {name} ({instance_id})"

    def park(self, name: str, instance_id: str) -> None:
        for record in (self.instances, self.pending, self.hosts):
            record.pop(name, None)
        self.parked[name] = instance_id
        self.relaunched.discard(name)
        self.save()

    def settle(self, name: str) -> None:
        """`name`, launched again, has its containers back: an instance of the pool like any other."""
        if name in self.relaunched:
            self.relaunched.discard(name)
            self.save()

    # -- a fresh instance made ready (elastic/poolprepare.py) ----------------------------
    def ready(self, name: str, done: str) -> None:
        self.say("prepare", f"made ready before its first container: {done}", name)

    def unready(self, name: str, reason: str) -> None:
        """An instance it launched could not be made ready: said, and terminated rather than left billing
        with nothing on it (a lost worker's is replaced again at the next look, within the cap)."""
        instance_id = self.instances.get(name, "")
        if not instance_id or instance_id == self.config.instances.get(name) or instance_id in self.discarded:
            return  # one of `up`'s, or terminated already
        self.discarded.add(instance_id)
        if name in self.grown:
            done = self.terminate(name)
        elif name in self.relaunched:  # launched again for parked containers: they stay parked
            self.aws = self.aws or self.connect()
            ec2.terminate(self.aws, [instance_id])
            self.park(name, instance_id)
            done = f"terminated {name} ({instance_id}): its containers stay parked"
        else:
            self.aws = self.aws or self.connect()
            ec2.terminate(self.aws, [instance_id])
            self.pending.pop(name, None)
            self.hosts.pop(name, None)
            self.save()
            done = f"terminated {name} ({instance_id})"
        self.say("error", f"{reason}; {done}", name)

    def say_once(self, kind: str, reason: str, container: str) -> None:
        if reason not in self.said:
            self.said.add(reason)
            self.say(kind, reason, container)

    def save(self) -> None:
        fd = os.open(f"{self.path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"instances": self.instances, "pending": self.pending, "hosts": self.hosts,
                       "grown": sorted(self.grown), "relaunched": sorted(self.relaunched),
                       "parked": {n: [i, self.config.instances.get(n, "")] for n, i in self.parked.items()},
                       "saved_at": time.time()}, f)
        os.replace(f"{self.path}.tmp", self.path)
