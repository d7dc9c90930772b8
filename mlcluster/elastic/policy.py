"""The autoscaling rule, pure: the orchestrator's figures, the settings, the
rule's memory and the time in; a desired container count and a sentence out.

Like Ray Serve's (`autoscaling_policy.py`): desired = ceil(ongoing / target)
clipped to [min, max], where ongoing = requests in flight + requests queued
(the queue counts: Ray #20977 saw only in-flight ones). A change waits until
the wish has held for `upscale_delay_s` / `downscale_delay_s` of real seconds,
measured with the clock passed in (not control-loop ticks: Ray #62004), except
that requests queueing on a cluster at its minimum scale it up at once.

Against flapping (Ray #18925): a wish must hold without a break for its whole
delay (one look the other way starts it over), and the count it settles on is
the one that fits the busiest look of that time when shrinking and the
quietest when growing, so a dip or a spike inside the window moves nothing
further than the window supports. The maximum is a hard cap (the billing cap:
SkyServe #3255): nothing here ever returns more than `max_containers`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class AutoscaleConfig:
    min_containers: int
    max_containers: int
    target_ongoing: float           # requests in flight + queued per container that the rule aims for
    upscale_delay_s: float = 30.0   # real seconds a wish for more must hold
    downscale_delay_s: float = 600.0  # ... and one for fewer

    def problem(self) -> Optional[str]:
        """What is wrong with these settings (a sentence), or None."""
        if self.min_containers < 1:
            return "--min-containers must be at least 1 (a cluster of none could not queue a request)"
        if self.max_containers < 1:
            return "--max-containers must be at least 1"
        if self.min_containers > self.max_containers:
            return f"--min-containers ({self.min_containers}) is above --max-containers ({self.max_containers})"
        if not self.target_ongoing > 0:
            return "--target-ongoing must be above 0"
        if self.upscale_delay_s < 0 or self.downscale_delay_s < 0:
            return "the upscale and downscale delays cannot be negative"
        return None


@dataclass(frozen=True)
class Figures:
    """What the orchestrator reports, and what the controller holds."""
    queued: int        # requests waiting for a container
    in_flight: int     # requests on containers (draining ones included: they still hold them)
    current: int       # containers that count: serving or starting, not draining

    @property
    def ongoing(self) -> int:
        return self.queued + self.in_flight


@dataclass(frozen=True)
class Memory:
    """The rule's memory between looks: which way it has wanted to move
    (+1 more, -1 fewer, 0 neither), since when, and the extreme load seen since
    (the quietest while wanting more, the busiest while wanting fewer)."""
    direction: int = 0
    since: float = 0.0
    extreme: int = 0


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    memory: Memory

    def changes(self, current: int) -> bool:
        return self.desired != current


def wanted(ongoing: int, config: AutoscaleConfig) -> int:
    """ceil(ongoing / target), clipped to [min, max]."""
    raw = math.ceil(ongoing / config.target_ongoing) if ongoing > 0 else 0
    return max(config.min_containers, min(config.max_containers, raw))


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def load_phrase(f: Figures) -> str:
    return f"{f.ongoing} ongoing ({f.in_flight} in flight + {f.queued} queued) over {plural(f.current, 'container')}"


def decide(figures: Figures, config: AutoscaleConfig, memory: Memory, now: float) -> Decision:
    """The desired count for these figures; see the module docstring."""
    current, target = figures.current, config.target_ongoing
    if current > config.max_containers:  # the cap holds whatever happened before
        return Decision(config.max_containers, f"{plural(current, 'container')} > the maximum "
                                               f"{config.max_containers} -> {config.max_containers}", Memory())
    if current < config.min_containers:
        return Decision(config.min_containers, f"{plural(current, 'container')} < the minimum "
                                               f"{config.min_containers} -> {config.min_containers}", Memory())
    want = wanted(figures.ongoing, config)
    if want == current:
        return Decision(current, f"{load_phrase(figures)}: within target {target:g}", Memory())
    direction = 1 if want > current else -1
    if direction == 1 and figures.queued > 0 and current <= config.min_containers:
        return Decision(want, f"{load_phrase(figures)} at the minimum: requests queue -> "
                              f"{plural(want, 'container')} at once", Memory())
    if memory.direction != direction:  # a new wish, or one that turned: its delay starts now
        memory = Memory(direction, now, figures.ongoing)
    elif direction == 1:
        memory = Memory(direction, memory.since, min(memory.extreme, figures.ongoing))
    else:
        memory = Memory(direction, memory.since, max(memory.extreme, figures.ongoing))
    held, delay = now - memory.since, config.upscale_delay_s if direction == 1 else config.downscale_delay_s
    settled = wanted(memory.extreme, config)  # what the whole window supports
    if held < delay:
        return Decision(current, f"{load_phrase(figures)}: wants {plural(want, 'container')} for "
                                 f"{held:.0f} s of {delay:g} s", memory)
    side = ">" if direction == 1 else "<"
    return Decision(settled, f"{load_phrase(figures)} for {held:.0f} s {side} target {target:g} -> "
                             f"{plural(settled, 'container')}", Memory())
