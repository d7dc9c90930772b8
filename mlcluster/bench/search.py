"""`bench --find-capacity`: run open-loop steps at the rates `capacity.next_rate`
chooses, each held until its throughput is stable (the sweep's step policy),
judge each against the objectives, and report the highest rate that met them
all, with what a million requests cost there when the cluster has a cost plan."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..ui import QuietUI
from .capacity import Probe, SearchPolicy, capacity, next_rate, per_million
from .runner import BenchConfig, BenchResult
from .slo import SLO, Verdict, goodput, judge
from .stats import Summary

KEEP_UP = 0.95  # a step whose client sent less than this share of the offered rate measured the client


@dataclass
class CapacityStep:
    """One rate tried: whether every objective held there, and why not."""
    rate: float
    held: bool
    stopped_by: str                 # stable | time limit | done | interrupted
    verdicts: list[Verdict]
    goodput_rps: Optional[float]
    summary: Summary
    client_limited: bool = False    # the client could not send the offered rate: not the cluster's figure

    def to_json(self) -> dict[str, Any]:
        return {"rate": self.rate, "held": self.held, "stopped_by": self.stopped_by,
                "verdicts": [asdict(v) for v in self.verdicts], "goodput_rps": self.goodput_rps,
                "client_limited": self.client_limited, **self.summary.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CapacityStep":
        return cls(data["rate"], data["held"], data["stopped_by"], [Verdict(**v) for v in data["verdicts"]],
                   data["goodput_rps"], Summary.from_json(data), data.get("client_limited", False))


@dataclass
class CapacityResult:
    """The search's answer: capacity (None: no rate met every objective) and its cost."""
    slos: list[str]
    steps: list[CapacityStep] = field(default_factory=list)
    capacity_rps: Optional[float] = None
    hourly_usd: Optional[float] = None          # the cluster's cost plan (None: none, e.g. local)
    usd_per_million: Optional[float] = None     # at capacity_rps
    cost_note: str = ""                         # where the hourly cost came from, or why there is none
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"slos": self.slos, "capacity_rps": self.capacity_rps, "hourly_usd": self.hourly_usd,
                "usd_per_million": self.usd_per_million, "cost_note": self.cost_note,
                "interrupted": self.interrupted, "steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CapacityResult":
        return cls(data["slos"], [CapacityStep.from_json(s) for s in data["steps"]], data["capacity_rps"],
                   data["hourly_usd"], data["usd_per_million"], data.get("cost_note", ""),
                   data.get("interrupted", False))


def judge_step(rate: float, result: BenchResult, slos: Sequence[SLO]) -> CapacityStep:
    """One measured rate against the objectives."""
    step = result.steps[0] if result.steps else None
    summary = step.summary if step else result.summary
    verdicts = judge(slos, result.records, result.unanswered)
    # Behind an overloaded cluster the client also sends late (its slots are full): that is the
    # cluster's failing. Sending late while every objective held is the client's.
    met = all(v.held for v in verdicts)
    sent = summary.sent_rps
    client_limited = met and sent is not None and sent < KEEP_UP * rate
    held = met and not client_limited and not result.interrupted
    return CapacityStep(rate, held, step.stopped_by if step else "done", verdicts,
                        goodput(slos, result.records, summary.duration_s), summary, client_limited)


def find_capacity(slos: Sequence[SLO], measure: Callable[[float], BenchResult], policy: SearchPolicy,
                  hourly_usd: Optional[float] = None, cost_note: str = "", ui=None) -> CapacityResult:
    """Search rates with `measure(rate)` (one open-loop step at `rate`, held
    until stable) until `next_rate` says the search is over."""
    ui = ui or QuietUI()
    result = CapacityResult([s.text for s in slos], hourly_usd=hourly_usd, cost_note=cost_note)
    probes: list[Probe] = []
    while (rate := next_rate(probes, policy)) is not None:
        measured = measure(rate)
        step = judge_step(rate, measured, slos)
        result.steps.append(step)
        probes.append(Probe(rate, step.held))
        why = ("every objective held" if step.held else "the client could not keep up" if step.client_limited
               else "missed " + ", ".join(v.slo for v in step.verdicts if not v.held))
        ui.info(f"{rate:g} req/s: {why} ({step.summary.throughput_rps:,.1f} req/s answered)")
        if measured.interrupted:
            result.interrupted = True
            break
    result.capacity_rps = capacity(probes)
    result.usd_per_million = per_million(hourly_usd, result.capacity_rps)
    return result


def step_config(config: BenchConfig, rate: float) -> BenchConfig:
    """`config` as one open-loop step at `rate`, held until stable (or its time limit)."""
    return dataclasses.replace(config, rate=None, sweep=None, rate_sweep=[rate], requests=None, duration_s=None)
