"""What a person reads (Rich tables on stdout) and what scripts read (JSON,
CSV), from one BenchResult; and `compare` of two saved JSON results.

A `Report` is the run as `--json` writes it; `Report.from_json` reads such a
file back, `read_csv` the rows `write_csv` wrote."""
from __future__ import annotations

import csv
import dataclasses
import json
import operator
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from rich.console import Console, Group
from rich.table import Table

from ..errors import MlclusterError
from .outcome import capacity_table, slo_table
from .runner import BenchResult
from .search import CapacityResult
from .slo import SLOOutcome
from .stats import CSV_FIELDS, RequestRecord, StepSummary, Summary

BREAKDOWN_ROWS = [
    ("client", "client latency (what a user waits)"),
    ("send_delay", "  client late to send (open loop)"),
    ("server_total", "  orchestrator, arrival to answer"),
    ("queue", "    waiting for a container"),
    ("inference", "    inference in the worker"),
    ("forwarding", "    forwarding to the worker and back"),
    ("network", "  network and HTTP to the orchestrator"),
]


@dataclass
class Knee:
    """The knee of a sweep (see sweep.find_knee)."""
    step: int
    concurrency: Optional[int]
    rate: Optional[float]
    throughput_rps: float
    p99_ms: Optional[float]
    factor: float


@dataclass
class Report:
    """A run as `mlcluster bench --json` writes it: the whole run's summary
    (its fields at the top level of the JSON), the setup beside it, the load,
    and one entry per sweep step."""
    setup: dict[str, Any]                  # mlcluster.bench.setup.describe_setup
    mode: str                              # closed | open
    summary: Summary
    concurrency: Union[int, list[int], None]
    rate: Union[float, list[float], None]
    interrupted: bool = False
    unanswered: int = 0
    steps: list[StepSummary] = dataclasses.field(default_factory=list)
    knee: Optional[Knee] = None
    slo: Optional[SLOOutcome] = None            # --slo: the verdicts and goodput
    capacity: Optional[CapacityResult] = None   # --find-capacity

    def to_json(self) -> dict[str, Any]:
        return {"setup": self.setup, "mode": self.mode, **self.summary.to_json(), "concurrency": self.concurrency,
                "rate": self.rate, "interrupted": self.interrupted, "unanswered": self.unanswered,
                "steps": [s.to_json() for s in self.steps],
                "knee": dataclasses.asdict(self.knee) if self.knee else None,
                "slo": self.slo.to_json() if self.slo else None,
                "capacity": self.capacity.to_json() if self.capacity else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Report":
        """Raises KeyError or TypeError when `data` is not a report."""
        return cls(setup=data["setup"], mode=data["mode"], summary=Summary.from_json(data),
                   concurrency=data["concurrency"], rate=data["rate"], interrupted=data["interrupted"],
                   unanswered=data["unanswered"], steps=[StepSummary.from_json(s) for s in data["steps"]],
                   knee=Knee(**data["knee"]) if data["knee"] else None,
                   slo=SLOOutcome.from_json(data["slo"]) if data.get("slo") else None,
                   capacity=CapacityResult.from_json(data["capacity"]) if data.get("capacity") else None)


def report_of(result: BenchResult, setup: dict[str, Any]) -> Report:
    """The report of a run: its figures, its load, `setup` beside them."""
    config = result.config
    knee = None
    if result.knee is not None:
        step = result.steps[result.knee]
        knee = Knee(result.knee, step.concurrency, step.rate, step.summary.throughput_rps,
                    step.summary.latency_ms.p99, config.knee_factor)
    return Report(setup=setup, mode=config.mode, summary=result.summary,
                  concurrency=config.sweep or (config.concurrency if config.mode == "closed" else None),
                  rate=config.rate_sweep or config.rate, interrupted=result.interrupted,
                  unanswered=result.unanswered, steps=result.steps if config.is_sweep else [], knee=knee)


def write_json(data: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def write_csv(result: BenchResult, path: Path) -> None:
    """One row per measured request (warm-up excluded); None is written as ""."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        values = operator.attrgetter(*CSV_FIELDS[:-1])
        # csv writes None as "" itself; one attrgetter call per row instead of two getattr per cell.
        writer.writerows((*values(r), round(r.latency_ms, 3)) for r in result.records)


def read_csv(path: Path) -> list[RequestRecord]:
    """The records a `write_csv` file holds (its derived latency_ms column is not read);
    KeyError or ValueError when the file is not one."""
    hints = typing.get_type_hints(RequestRecord)
    with open(path, newline="") as f:
        return [RequestRecord(**{name: _parse(row[name], hints[name]) for name in CSV_FIELDS[:-1]})
                for row in csv.DictReader(f)]


def _parse(text: str, hint: Any) -> Any:
    """A CSV cell as the field's type: "" is None for an Optional field."""
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
    if len(kinds) < len(typing.get_args(hint)) and text == "":
        return None
    return kinds[0](text)


def _rate(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:,.1f} req/s"


def _ms(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:,.1f}"


def summary_table(report: Report, title: str = "Benchmark summary") -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("figure", style="bold")
    table.add_column("value", justify="right")
    s = report.summary
    table.add_row("load", f"open loop, {report.rate} req/s" if report.mode == "open"
                  else f"closed loop, concurrency {report.concurrency}")
    table.add_row("requests sent", str(s.requests))
    table.add_row("succeeded", str(s.ok))
    kinds = ", ".join(f"{k}: {v}" for k, v in s.errors_by_kind.items())
    table.add_row("errors", f"{s.errors}" + (f" ({kinds})" if kinds else ""))
    table.add_row("duration", f"{s.duration_s:.2f} s")
    if s.offered_rps is not None:
        table.add_row("offered rate", f"{s.offered_rps:,.1f} req/s")
        table.add_row("sent rate (achieved by the client)", _rate(s.sent_rps))
    table.add_row("throughput (answered ok)", f"{s.throughput_rps:,.1f} req/s")
    lat = s.latency_ms
    for key, value in (("p50", lat.p50), ("p90", lat.p90), ("p99", lat.p99), ("max", lat.max)):
        table.add_row(f"latency {key}", f"{_ms(value)} ms")
    if report.interrupted:
        table.add_row("[yellow]interrupted[/]", f"{report.unanswered} request(s) unanswered at the stop")
    return table


def breakdown_table(report: Report) -> Table:
    table = Table(title="Where the time goes (ms, successful requests)", title_justify="left")
    table.add_column("part")
    for key in ("p50", "p90", "p99", "max"):
        table.add_column(key, justify="right")
    breakdown = report.summary.breakdown_ms
    for key, label in BREAKDOWN_ROWS:
        d = breakdown.get(key)
        if d is None or not d.count or (key == "send_delay" and report.mode != "open"):
            continue
        table.add_row(label, *(_ms(v) for v in (d.p50, d.p90, d.p99, d.max)))
    return table


def container_table(report: Report) -> Table:
    table = Table(title="Requests per container", title_justify="left")
    table.add_column("container")
    table.add_column("served", justify="right")
    table.add_column("share", justify="right")
    per_container = report.summary.per_container
    total = sum(per_container.values()) or 1
    for cid, count in per_container.items():
        table.add_row(cid, str(count), f"{100 * count / total:.0f}%")
    return table


def sweep_table(report: Report) -> Table:
    table = Table(title="Sweep", title_justify="left")
    by_rate = report.mode == "open"
    table.add_column("step", justify="right")
    table.add_column("rate" if by_rate else "concurrency", justify="right")
    for column in ("req/s", "p50 ms", "p90 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right")
    table.add_column("ended by")
    table.add_column("")
    knee = report.knee.step if report.knee else None
    for i, step in enumerate(report.steps):
        s, lat = step.summary, step.summary.latency_ms
        table.add_row(str(i + 1), f"{step.rate:g}" if by_rate else str(step.concurrency),
                      f"{s.throughput_rps:,.1f}", _ms(lat.p50), _ms(lat.p90), _ms(lat.p99),
                      str(s.errors), step.stopped_by, "[bold green]knee[/]" if i == knee else "")
    if report.knee:
        table.caption = (f"knee: the last step whose p99 stays within {report.knee.factor:g}× the first step's "
                         "(with under 1% errors)")
    else:
        table.caption = "no knee: even the first step had no answers or too many errors"
    return table


def render(report: Report) -> Group:
    if report.capacity is not None:
        return Group(capacity_table(report.capacity))
    parts = [summary_table(report)]
    if report.steps:
        parts.append(sweep_table(report))
    parts += [breakdown_table(report), container_table(report)]
    if report.slo is not None:
        parts.append(slo_table(report.slo))
    return Group(*parts)


def print_result(report: Report, console: Optional[Console] = None) -> None:
    (console or Console()).print(render(report))


# -- compare ------------------------------------------------------------------
Figure = Callable[[Summary], Optional[float]]
COMPARED: list[tuple[str, Figure]] = [
    ("requests", lambda s: s.requests), ("succeeded", lambda s: s.ok), ("errors", lambda s: s.errors),
    ("throughput (req/s)", lambda s: s.throughput_rps),
    ("latency p50 (ms)", lambda s: s.latency_ms.p50), ("latency p90 (ms)", lambda s: s.latency_ms.p90),
    ("latency p99 (ms)", lambda s: s.latency_ms.p99), ("latency max (ms)", lambda s: s.latency_ms.max),
    ("queue wait p50 (ms)", lambda s: _part(s, "queue")),
    ("inference p50 (ms)", lambda s: _part(s, "inference")),
    ("network p50 (ms)", lambda s: _part(s, "network")),
]
STEP_COMPARED: list[tuple[str, Figure]] = [("throughput", lambda s: s.throughput_rps),
                                           ("p99 (ms)", lambda s: s.latency_ms.p99)]


def _part(s: Summary, name: str) -> Optional[float]:
    part = s.breakdown_ms.get(name)
    return part.p50 if part else None


def load_result(path: Path) -> Report:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MlclusterError(f"{path} does not exist", "give two files written by `mlcluster bench --json`") from None
    except (OSError, ValueError) as exc:
        raise MlclusterError(f"{path} is not a JSON file: {exc}") from None
    try:
        return Report.from_json(data)
    except (KeyError, TypeError, AttributeError):
        raise MlclusterError(f"{path} is not a result of `mlcluster bench --json`") from None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """b / a, or None when it has no meaning."""
    if a is None or b is None or a == 0:
        return None
    return b / a


def compare_rows(a: Report, b: Report) -> list[tuple[str, Optional[float], Optional[float], Optional[float]]]:
    """(figure, A, B, B/A) for each compared figure, then per matching sweep step."""
    rows = [(label, get(a.summary), get(b.summary), ratio(get(a.summary), get(b.summary))) for label, get in COMPARED]
    steps_b = {(s.concurrency, s.rate): s for s in b.steps}
    for step in a.steps:
        other = steps_b.get((step.concurrency, step.rate))
        if other is None:
            continue
        name = f"rate {step.rate:g}" if step.rate else f"concurrency {step.concurrency}"
        for label, get in STEP_COMPARED:
            x, y = get(step.summary), get(other.summary)
            rows.append((f"{name}: {label}", x, y, ratio(x, y)))
    return rows


def compare_table(a: Report, b: Report, name_a: str, name_b: str) -> Table:
    table = Table(title=f"A = {name_a}\nB = {name_b}", title_justify="left")
    table.add_column("figure")
    table.add_column("A", justify="right")
    table.add_column("B", justify="right")
    table.add_column("B / A", justify="right")
    for key in ("model", "mode", "concurrency", "rate", "time"):
        sa, sb = a.setup.get(key), b.setup.get(key)
        if sa is not None or sb is not None:
            table.add_row(f"[dim]{key}[/]", f"[dim]{sa}[/]", f"[dim]{sb}[/]", "")
    ca, cb = len(a.setup.get("containers") or []), len(b.setup.get("containers") or [])
    table.add_row("[dim]containers[/]", f"[dim]{ca}[/]", f"[dim]{cb}[/]", "")
    for label, x, y, r in compare_rows(a, b):
        table.add_row(label, _num(x), _num(y), "–" if r is None else f"{r:.2f}×")
    return table


def _num(value: Optional[float]) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:,.1f}"
