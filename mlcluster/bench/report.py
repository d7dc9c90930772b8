"""What a person reads (Rich tables on stdout) and what scripts read (JSON,
CSV), from one BenchResult; and `compare` of two saved JSON results."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

from rich.console import Console, Group
from rich.table import Table

from ..errors import MlclusterError
from .runner import BenchResult
from .stats import CSV_FIELDS

BREAKDOWN_ROWS = [
    ("client", "client latency (what a user waits)"),
    ("send_delay", "  client late to send (open loop)"),
    ("server_total", "  orchestrator, arrival to answer"),
    ("queue", "    waiting for a container"),
    ("inference", "    inference in the worker"),
    ("forwarding", "    forwarding to the worker and back"),
    ("network", "  network and HTTP to the orchestrator"),
]


def to_json(result: BenchResult, setup: dict) -> dict:
    """The run as one object: the figures of the whole run at the top level,
    the setup beside them, and one entry per sweep step."""
    config = result.config
    data: dict[str, Any] = {"setup": setup, "mode": config.mode}
    data.update(result.summary)
    data["concurrency"] = config.sweep or (config.concurrency if config.mode == "closed" else None)
    data["rate"] = config.rate_sweep or config.rate
    data["interrupted"] = result.interrupted
    data["unanswered"] = result.unanswered
    data["steps"] = result.steps if config.is_sweep else []
    data["knee"] = _knee(result)
    return data


def _knee(result: BenchResult) -> Optional[dict]:
    if result.knee is None:
        return None
    step = result.steps[result.knee]
    return {"step": result.knee, "concurrency": step["concurrency"], "rate": step["rate"],
            "throughput_rps": step["throughput_rps"], "p99_ms": step["latency_ms"]["p99"],
            "factor": result.config.knee_factor}


def write_json(data: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def write_csv(result: BenchResult, path: Path) -> None:
    """One row per measured request (warm-up excluded)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in result.records:
            writer.writerow([getattr(r, name) if getattr(r, name) is not None else "" for name in CSV_FIELDS[:-1]]
                            + [round(r.latency_ms, 3)])


def _rate(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:,.1f} req/s"


def _ms(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:,.1f}"


def summary_table(data: dict, title: str = "Benchmark summary") -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("figure", style="bold")
    table.add_column("value", justify="right")
    load = f"open loop, {data['rate']} req/s" if data["mode"] == "open" else f"closed loop, concurrency {data['concurrency']}"
    table.add_row("load", load)
    table.add_row("requests sent", str(data["requests"]))
    table.add_row("succeeded", str(data["ok"]))
    kinds = ", ".join(f"{k}: {v}" for k, v in data["errors_by_kind"].items())
    table.add_row("errors", f"{data['errors']}" + (f" ({kinds})" if kinds else ""))
    table.add_row("duration", f"{data['duration_s']:.2f} s")
    if data.get("offered_rps") is not None:
        table.add_row("offered rate", f"{data['offered_rps']:,.1f} req/s")
        table.add_row("sent rate (achieved by the client)", _rate(data["sent_rps"]))
    table.add_row("throughput (answered ok)", f"{data['throughput_rps']:,.1f} req/s")
    lat = data["latency_ms"]
    for key in ("p50", "p90", "p99", "max"):
        table.add_row(f"latency {key}", f"{_ms(lat[key])} ms")
    if data.get("interrupted"):
        table.add_row("[yellow]interrupted[/]", f"{data.get('unanswered', 0)} request(s) unanswered at the stop")
    return table


def breakdown_table(data: dict) -> Table:
    table = Table(title="Where the time goes (ms, successful requests)", title_justify="left")
    table.add_column("part")
    for key in ("p50", "p90", "p99", "max"):
        table.add_column(key, justify="right")
    breakdown = data["breakdown_ms"]
    for key, label in BREAKDOWN_ROWS:
        d = breakdown.get(key) or {}
        if not d.get("count") or (key == "send_delay" and data["mode"] != "open"):
            continue
        table.add_row(label, *(_ms(d[k]) for k in ("p50", "p90", "p99", "max")))
    return table


def container_table(data: dict) -> Table:
    table = Table(title="Requests per container", title_justify="left")
    table.add_column("container")
    table.add_column("served", justify="right")
    table.add_column("share", justify="right")
    total = sum(data["per_container"].values()) or 1
    for cid, count in data["per_container"].items():
        table.add_row(cid, str(count), f"{100 * count / total:.0f}%")
    return table


def sweep_table(data: dict) -> Table:
    table = Table(title="Sweep", title_justify="left")
    by_rate = data["mode"] == "open"
    table.add_column("step", justify="right")
    table.add_column("rate" if by_rate else "concurrency", justify="right")
    for column in ("req/s", "p50 ms", "p90 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right")
    table.add_column("ended by")
    table.add_column("")
    knee = (data.get("knee") or {}).get("step")
    for i, step in enumerate(data["steps"]):
        lat = step["latency_ms"]
        table.add_row(str(i + 1), f"{step['rate']:g}" if by_rate else str(step["concurrency"]),
                      f"{step['throughput_rps']:,.1f}", _ms(lat["p50"]), _ms(lat["p90"]), _ms(lat["p99"]),
                      str(step["errors"]), step["stopped_by"], "[bold green]knee[/]" if i == knee else "")
    if data.get("knee"):
        table.caption = (f"knee: the last step whose p99 stays within {data['knee']['factor']:g}× the first step's "
                         "(with under 1% errors)")
    else:
        table.caption = "no knee: even the first step had no answers or too many errors"
    return table


def render(data: dict) -> Group:
    parts = [summary_table(data)]
    if data["steps"]:
        parts.append(sweep_table(data))
    parts += [breakdown_table(data), container_table(data)]
    return Group(*parts)


def print_result(data: dict, console: Optional[Console] = None) -> None:
    (console or Console()).print(render(data))


# -- compare ------------------------------------------------------------------
COMPARED = [
    ("requests", ("requests",)), ("succeeded", ("ok",)), ("errors", ("errors",)),
    ("throughput (req/s)", ("throughput_rps",)),
    ("latency p50 (ms)", ("latency_ms", "p50")), ("latency p90 (ms)", ("latency_ms", "p90")),
    ("latency p99 (ms)", ("latency_ms", "p99")), ("latency max (ms)", ("latency_ms", "max")),
    ("queue wait p50 (ms)", ("breakdown_ms", "queue", "p50")),
    ("inference p50 (ms)", ("breakdown_ms", "inference", "p50")),
    ("network p50 (ms)", ("breakdown_ms", "network", "p50")),
]


def load_result(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MlclusterError(f"{path} does not exist", "give two files written by `mlcluster bench --json`") from None
    except (OSError, ValueError) as exc:
        raise MlclusterError(f"{path} is not a JSON file: {exc}") from None
    if not isinstance(data, dict) or "latency_ms" not in data or "throughput_rps" not in data:
        raise MlclusterError(f"{path} is not a result of `mlcluster bench --json`")
    return data


def _get(data: dict, path: tuple) -> Optional[float]:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, (int, float)) and not isinstance(data, bool) else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """b / a, or None when it has no meaning."""
    if a is None or b is None or a == 0:
        return None
    return b / a


def compare_rows(a: dict, b: dict) -> list[tuple[str, Optional[float], Optional[float], Optional[float]]]:
    """(figure, A, B, B/A) for each compared figure, then per matching sweep step."""
    rows = [(label, _get(a, path), _get(b, path), ratio(_get(a, path), _get(b, path))) for label, path in COMPARED]
    steps_b = {(s.get("concurrency"), s.get("rate")): s for s in b.get("steps") or []}
    for step in a.get("steps") or []:
        other = steps_b.get((step.get("concurrency"), step.get("rate")))
        if other is None:
            continue
        name = f"rate {step['rate']:g}" if step.get("rate") else f"concurrency {step['concurrency']}"
        for label, path in (("throughput", ("throughput_rps",)), ("p99 (ms)", ("latency_ms", "p99"))):
            x, y = _get(step, path), _get(other, path)
            rows.append((f"{name}: {label}", x, y, ratio(x, y)))
    return rows


def compare_table(a: dict, b: dict, name_a: str, name_b: str) -> Table:
    table = Table(title=f"A = {name_a}\nB = {name_b}", title_justify="left")
    table.add_column("figure")
    table.add_column("A", justify="right")
    table.add_column("B", justify="right")
    table.add_column("B / A", justify="right")
    for key in ("model", "mode", "concurrency", "rate", "time"):
        sa, sb = (a.get("setup") or {}).get(key), (b.get("setup") or {}).get(key)
        if sa is not None or sb is not None:
            table.add_row(f"[dim]{key}[/]", f"[dim]{sa}[/]", f"[dim]{sb}[/]", "")
    ca, cb = len((a.get("setup") or {}).get("containers") or []), len((b.get("setup") or {}).get("containers") or [])
    table.add_row("[dim]containers[/]", f"[dim]{ca}[/]", f"[dim]{cb}[/]", "")
    for label, x, y, r in compare_rows(a, b):
        table.add_row(label, _num(x), _num(y), "–" if r is None else f"{r:.2f}×")
    return table


def _num(value: Optional[float]) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:,.1f}"
