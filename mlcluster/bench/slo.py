"""Service-level objectives: `--slo 'p99<=200ms'`, `--slo 'errors<=0.1%'`.

Pure functions: parse an objective's text, judge a measurement's records
against objectives (exact nearest-rank percentiles over every record, as
`stats`), and the goodput: requests answered ok within the latency limit,
per second. Nothing here reads a clock or prints.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from .stats import RequestRecord, percentile

# metric name -> the percentile it is (max: the 100th)
LATENCY_METRICS = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9, "max": 100.0}
_PATTERN = re.compile(r"^\s*([a-z0-9]+)\s*<=\s*([0-9]*\.?[0-9]+)\s*(ms|s|%)?\s*$")


@dataclass(frozen=True)
class SLO:
    """One objective: `metric` (p50|p90|p99|p999|max|errors) at most `limit`
    (milliseconds for a latency, a fraction of the requests for errors)."""
    metric: str
    limit: float
    text: str

    @property
    def is_latency(self) -> bool:
        return self.metric in LATENCY_METRICS


def parse_slo(text: str) -> SLO:
    """'p99<=200ms' -> SLO('p99', 200.0); 'errors<=0.1%' -> SLO('errors', 0.001).
    Raises ValueError with one sentence on anything else."""
    match = _PATTERN.match(text.lower())
    example = "like 'p99<=200ms', 'max<=1.5s' or 'errors<=0.1%'"
    if not match:
        raise ValueError(f"--slo {text!r} is not an objective {example}")
    metric, number, unit = match.group(1), float(match.group(2)), match.group(3)
    if metric == "errors":
        if unit != "%":
            raise ValueError(f"--slo {text!r}: an error objective is a percentage of the requests, like 'errors<=0.1%'")
        if number > 100:
            raise ValueError(f"--slo {text!r}: an error percentage is at most 100%")
        return SLO("errors", number / 100.0, text.strip())
    if metric not in LATENCY_METRICS:
        raise ValueError(f"--slo {text!r}: {metric!r} is not one of p50, p90, p99, p999, max or errors")
    if unit not in ("ms", "s"):
        raise ValueError(f"--slo {text!r}: give the latency with its unit, ms or s, like 'p99<=200ms'")
    limit = number * 1000.0 if unit == "s" else number
    if limit <= 0:
        raise ValueError(f"--slo {text!r}: a latency limit must be above zero")
    return SLO(metric, limit, text.strip())


def parse_slos(texts: Sequence[str]) -> list[SLO]:
    """Every objective of the command line, in order (ValueError on the first bad one)."""
    return [parse_slo(text) for text in texts]


@dataclass
class Verdict:
    """One objective judged: what was measured against it and whether it held."""
    slo: str              # its text, as given
    metric: str
    limit: float          # ms, or a fraction (errors)
    measured: Optional[float]  # None: nothing to measure (no answers)
    held: bool


def latency_limit(slos: Sequence[SLO]) -> Optional[float]:
    """The latency a request must be answered within to count as good: the
    limit of the objective at the highest percentile (p99<=200ms: 99% of the
    requests within 200 ms, so an answer within 200 ms is within the SLO).
    None when no objective is on latency."""
    latency = [s for s in slos if s.is_latency]
    if not latency:
        return None
    return max(latency, key=lambda s: (LATENCY_METRICS[s.metric], s.limit)).limit


def judge(slos: Sequence[SLO], records: Sequence[RequestRecord], unanswered: int = 0) -> list[Verdict]:
    """Each objective against `records` (one measurement). Latencies are the
    successful requests' (from when each was due); errors count failed and
    unanswered requests among all sent. No answer at all misses every latency
    objective."""
    ok = sorted(r.latency_ms for r in records if r.ok)
    sent = len(records) + unanswered
    failed = sum(1 for r in records if not r.ok) + unanswered
    verdicts = []
    for slo in slos:
        if slo.is_latency:
            value = percentile(ok, LATENCY_METRICS[slo.metric])
            measured = None if value is None else round(value, 3)
            held = value is not None and value <= slo.limit
        else:
            measured = failed / sent if sent else None
            held = measured is not None and measured <= slo.limit + 1e-12
        verdicts.append(Verdict(slo.text, slo.metric, slo.limit, measured, held))
    return verdicts


def goodput(slos: Sequence[SLO], records: Sequence[RequestRecord], duration_s: float) -> Optional[float]:
    """Requests answered ok within the latency limit (`latency_limit`), per
    second of the measurement; None when no objective is on latency."""
    limit = latency_limit(slos)
    if limit is None or duration_s <= 0:
        return None
    good = sum(1 for r in records if r.ok and r.latency_ms <= limit)
    return round(good / duration_s, 3)


@dataclass
class SLOOutcome:
    """A run judged: each objective's verdict, the goodput, and whether all held."""
    verdicts: list[Verdict]
    goodput_rps: Optional[float]
    latency_limit_ms: Optional[float]

    @property
    def held(self) -> bool:
        return all(v.held for v in self.verdicts)

    def to_json(self) -> dict:
        return {"held": self.held, "goodput_rps": self.goodput_rps, "latency_limit_ms": self.latency_limit_ms,
                "verdicts": [dataclasses.asdict(v) for v in self.verdicts]}

    @classmethod
    def from_json(cls, data: dict) -> "SLOOutcome":
        return cls([Verdict(**v) for v in data["verdicts"]], data["goodput_rps"], data["latency_limit_ms"])


def outcome(slos: Sequence[SLO], records: Sequence[RequestRecord], duration_s: float,
            unanswered: int = 0) -> SLOOutcome:
    """`judge` and `goodput` of one measurement."""
    return SLOOutcome(judge(slos, records, unanswered), goodput(slos, records, duration_s), latency_limit(slos))


def describe(verdict: Verdict) -> str:
    """The measured figure in the objective's unit ('183.2 ms', '0.05%')."""
    if verdict.measured is None:
        return "–"
    if verdict.metric == "errors":
        return f"{verdict.measured * 100:.3g}%"
    return f"{verdict.measured:,.1f} ms"


def limit_text(verdict: Verdict) -> str:
    return f"{verdict.limit * 100:g}%" if verdict.metric == "errors" else f"{verdict.limit:g} ms"
