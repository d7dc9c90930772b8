"""One PNG with four named panels. Uses matplotlib's object API with the Agg
canvas (no pyplot, no global state, no display needed)."""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .report import Report
from .runner import BenchResult
from .stats import StepSummary

PANELS = ("Latency over time", "Latency distribution", "Throughput per sweep step", "Requests per container")


def make_figure(result: BenchResult, data: Report) -> Figure:
    """The figure for a run; `data` is its report (figures per step)."""
    fig = Figure(figsize=(13, 9), layout="constrained")
    FigureCanvasAgg(fig)
    over_time, distribution, per_step, per_container = fig.subplots(2, 2).flat
    fig.suptitle(_headline(data))
    _latency_over_time(over_time, result)
    _distribution(distribution, result, data)
    _per_step(per_step, data)
    _per_container(per_container, data)
    return fig


def save_plot(result: BenchResult, data: Report, path: Path) -> list[str]:
    """Write the PNG; returns the panel titles drawn (also in the PNG's metadata)."""
    fig = make_figure(result, data)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    fig.savefig(path, format="png", dpi=90,
                metadata={"Title": "mlcluster bench", "Description": "panels: " + "; ".join(titles)})
    return titles


def _headline(data: Report) -> str:
    setup = data.setup
    load = f"open loop {data.rate} req/s" if data.mode == "open" else f"closed loop, concurrency {data.concurrency}"
    who = setup.get("cluster") or setup.get("orchestrator_url") or ""
    return f"mlcluster bench {who}, {setup.get('time', '')}\n{load}; model {setup.get('model')}"


def _latency_over_time(ax, result: BenchResult) -> None:
    ax.set_title(PANELS[0])
    steps = sorted({r.step for r in result.records})
    for step in steps:
        ok = [r for r in result.records if r.step == step and r.ok]
        label = _step_label(result.steps[step]) if step < len(result.steps) else str(step)
        ax.scatter([r.scheduled_s for r in ok], [r.latency_ms for r in ok], s=4, alpha=0.6, label=label)
    failed = [r for r in result.records if not r.ok]
    if failed:
        ax.scatter([r.scheduled_s for r in failed], [r.latency_ms for r in failed], s=12, marker="x",
                   color="red", label="errors")
    ax.set_xlabel("time the request was due (s)")
    ax.set_ylabel("latency (ms)")
    if len(steps) > 1 or failed:
        ax.legend(fontsize="small", markerscale=3)


def _distribution(ax, result: BenchResult, data: Report) -> None:
    ax.set_title(PANELS[1])
    latencies = [r.latency_ms for r in result.records if r.ok]
    if latencies:
        ax.hist(latencies, bins=min(60, max(10, len(latencies) // 10)), color="tab:blue", alpha=0.7)
    lat = data.summary.latency_ms
    for key, value, color in (("p50", lat.p50, "green"), ("p90", lat.p90, "orange"), ("p99", lat.p99, "red")):
        if value is not None:
            ax.axvline(value, color=color, linestyle="--", label=f"{key} {value:,.1f} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    if latencies:
        ax.legend(fontsize="small")


def _per_step(ax, data: Report) -> None:
    ax.set_title(PANELS[2])
    steps = data.steps or [StepSummary(0, _single(data.concurrency), _single(data.rate), "done", data.summary)]
    labels = [_step_label(s) for s in steps]
    xs = range(len(steps))
    bars = ax.bar(xs, [s.summary.throughput_rps for s in steps], width=0.6 if len(steps) > 1 else 0.3,
                  color="tab:blue", label="throughput")
    knee = data.knee.step if data.knee else None
    if knee is not None:
        bars[knee].set_color("tab:green")
        ax.annotate("knee", (knee, steps[knee].summary.throughput_rps), xytext=(0, 4), textcoords="offset points",
                    ha="center", color="tab:green", weight="bold")
    ax.set_xticks(list(xs), labels, rotation=30 if len(steps) > 6 else 0)
    ax.set_ylabel("answered per second")
    p99 = ax.twinx()
    p99.plot(list(xs), [s.summary.latency_ms.p99 or 0 for s in steps], color="red", marker="o", label="p99 (ms)")
    p99.set_ylabel("p99 latency (ms)")
    p99.set_ylim(bottom=0)
    handles = [h for h in (bars, *p99.get_lines())]
    ax.legend(handles, [h.get_label() for h in handles], fontsize="small", loc="upper left")


def _per_container(ax, data: Report) -> None:
    ax.set_title(PANELS[3])
    per = data.summary.per_container
    ax.bar(range(len(per)), list(per.values()), color="tab:purple")
    ax.set_xticks(range(len(per)), list(per), rotation=30 if len(per) > 6 else 0)
    ax.set_ylabel("requests served")


def _step_label(step: StepSummary) -> str:
    return f"{step.rate:g}/s" if step.rate else f"c={step.concurrency}"


def _single(value):
    """A run's concurrency or rate as one step's (a sweep's list has its steps instead)."""
    return None if isinstance(value, list) else value
