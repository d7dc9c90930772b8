"""The bench's verdicts as people read them: the SLO table, the capacity
search, and `compare` of several saved results' capacities and costs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from rich.table import Table

from ..errors import MlclusterError
from .search import CapacityResult
from .slo import SLOOutcome, Verdict, describe, limit_text


def _held(held: bool) -> str:
    return "[bold green]held[/]" if held else "[bold red]missed[/]"


def slo_table(outcome: SLOOutcome) -> Table:
    table = Table(title="Service-level objectives", title_justify="left")
    for column, justify in (("objective", "left"), ("limit", "right"), ("measured", "right"), ("verdict", "left")):
        table.add_column(column, justify=justify)
    for v in outcome.verdicts:
        table.add_row(v.slo, limit_text(v), describe(v), _held(v.held))
    if outcome.goodput_rps is not None:
        table.caption = (f"goodput: {outcome.goodput_rps:,.1f} req/s answered ok within "
                         f"{outcome.latency_limit_ms:g} ms")
    return table


def _missed(verdicts: Sequence[Verdict]) -> str:
    return ", ".join(v.slo for v in verdicts if not v.held)


def capacity_table(result: CapacityResult) -> Table:
    table = Table(title=f"Capacity at {' and '.join(result.slos)}", title_justify="left")
    for column in ("step", "offered req/s", "answered req/s", "goodput req/s", "p50 ms", "p99 ms", "errors",
                   "ended by", "verdict"):
        table.add_column(column, justify="left" if column in ("ended by", "verdict") else "right")
    for i, step in enumerate(result.steps):
        s = step.summary
        verdict = _held(True) if step.held else ("[yellow]client could not keep up[/]" if step.client_limited
                                                 else f"[red]missed {_missed(step.verdicts)}[/]")
        table.add_row(str(i + 1), f"{step.rate:g}", f"{s.throughput_rps:,.1f}",
                      "–" if step.goodput_rps is None else f"{step.goodput_rps:,.1f}",
                      _ms(s.latency_ms.p50), _ms(s.latency_ms.p99), str(s.errors), step.stopped_by, verdict)
    table.caption = capacity_line(result)
    return table


def capacity_line(result: CapacityResult) -> str:
    if result.capacity_rps is None:
        return "no rate tried met every objective"
    line = f"capacity: {result.capacity_rps:g} req/s"
    if result.usd_per_million is not None:
        line += (f" · ${result.usd_per_million:,.2f} per million requests at ${result.hourly_usd:,.3f}/hour "
                 "(on-demand)")
    elif result.cost_note:
        line += f" · {result.cost_note}"
    return line


def _ms(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:,.1f}"


# -- compare capacities ---------------------------------------------------------
def load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MlclusterError(f"{path} does not exist", "give files written by `mlcluster bench --json`") from None
    except (OSError, ValueError) as exc:
        raise MlclusterError(f"{path} is not a JSON file: {exc}") from None


def capacity_of(data: dict[str, Any], path: Path) -> CapacityResult:
    try:
        return CapacityResult.from_json(data["capacity"])
    except (KeyError, TypeError):
        raise MlclusterError(f"{path} holds no capacity", "write it with `mlcluster bench --find-capacity --json`") \
            from None


def compare_capacities(results: Sequence[tuple[str, dict[str, Any], CapacityResult]]) -> Table:
    """One column per saved result: its setup, capacity and cost per million."""
    table = Table(title="Capacity at SLO, side by side", title_justify="left")
    table.add_column("figure")
    for name, _, _ in results:
        table.add_column(name, justify="right")

    def setup(key: str) -> list[str]:
        return [str(data.get("setup", {}).get(key) if data.get("setup", {}).get(key) is not None else "–")
                for _, data, _ in results]

    for key in ("provider", "model", "workers", "containers_per_worker", "instance_types"):
        table.add_row(f"[dim]{key}[/]", *(f"[dim]{v}[/]" for v in setup(key)))
    table.add_row("objectives", *(" and ".join(c.slos) for _, _, c in results))
    table.add_row("capacity (req/s)",
                  *("–" if c.capacity_rps is None else f"{c.capacity_rps:g}" for _, _, c in results))
    table.add_row("cluster $/hour", *("–" if c.hourly_usd is None else f"{c.hourly_usd:,.3f}" for _, _, c in results))
    table.add_row("$ per million requests",
                  *("–" if c.usd_per_million is None else f"{c.usd_per_million:,.2f}" for _, _, c in results))
    return table
