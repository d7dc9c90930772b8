"""Tables a person reads. Data goes to stdout; progress and errors to stderr."""
from __future__ import annotations

from typing import Optional

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .providers.base import CostPlan
from .state import ClusterState

STATUS_STYLE = {"free": "green", "busy": "yellow", "down": "red", "draining": "magenta"}
# The provider's details per container, and their short headers (80 columns).
DETAIL_COLUMNS = {"instance_id": "instance", "instance_type": "type", "zone": "zone", "instance_state": "state",
                  "host_address": "public IP", "market": "market", "serves": "serves (version)"}


def cluster_table(state: ClusterState) -> Table:
    table = Table(title=f"cluster {state.name} ({state.provider}, {state.runtime}, {state.spec.backend})")
    table.add_column("container")
    table.add_column("worker")
    table.add_column("address")
    for c in state.containers:
        table.add_row(c.id, c.worker, f"{c.host}:{c.port}")
    return table


def cluster_list_table(rows: list[dict]) -> Table:
    """`mlcluster list`: one row per known cluster, with a header."""
    table = Table(box=None, pad_edge=False)
    for column in ("name", "provider", "containers", "orchestrator"):
        table.add_column(column, no_wrap=True, justify="right" if column == "containers" else "left")
    for r in rows:
        table.add_row(r["name"], r["provider"], str(r["containers"]),
                      r.get("error") and f"unreadable: {r['error']}" or r["orchestrator_url"] or "-")
    return table


def status_table(snapshot: dict) -> Group:
    """`status`: the serving figures per container, then (when the provider
    has them) its details per container in a second table, so that each
    stays readable at 80 columns."""
    containers = sorted(snapshot["containers"], key=lambda c: c["id"])
    extra = [col for col in DETAIL_COLUMNS if any(col in c for c in containers)]
    table = Table(title=f"cluster {snapshot['name']} ({snapshot.get('backend', '?')}) — {snapshot['orchestrator_url']}",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("container", "address", "status", "in-flight", "served", "failed", "ms"):
        table.add_column(column, min_width=len(column), overflow="fold",
                         justify="right" if column in ("in-flight", "served", "failed", "ms") else "left")
    for c in containers:
        latency = c.get("recent_latency_ms")
        table.add_row(c["id"], f"{c['host']}:{c['port']}",
                      Text(c["status"], style=STATUS_STYLE.get(c["status"], "")),
                      str(c["in_flight"]), str(c["served"]), str(c["failed"]),
                      f"{latency:.1f}" if latency is not None else "-")
    queue = snapshot["queue"]
    up = sum(1 for c in containers if c["status"] in ("free", "busy"))
    table.caption = (f"{up}/{len(containers)} containers up · queue {queue['depth']}/{queue['limit']} · "
                     f"in flight {snapshot['in_flight']} · served {snapshot['served']} · failed {snapshot['failed']} · "
                     f"up {snapshot.get('uptime_s', 0):.0f} s · ms: recent latency")
    watch = snapshot.get("autostop")
    if watch:
        cost = watch["cost_so_far_usd"]
        table.caption += (f"\nautostop {watch['autostop'] or 'off'} idle · "
                          f"stops by {watch['deadline'] or 'no deadline'}"
                          f" · cost so far {'unknown' if cost is None else f'${cost:.2f}'}")
    elastic = snapshot.get("autoscale")
    if elastic:
        table.caption += "\n" + autoscale_line(elastic)
    if not extra:
        return Group(table)
    details = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("container", *[DETAIL_COLUMNS[col] for col in extra]):
        details.add_column(header, min_width=len(header), overflow="fold")
    for c in containers:
        details.add_row(c["id"], *[str(c.get(col, "")) for col in extra])
    return Group(table, details)


def autoscale_line(elastic: dict) -> str:
    """The controller's state in one line (status --json's `autoscale` object)."""
    if not elastic.get("running", True):
        return "controller: not running (`mlcluster up` starts it again); last state: " + elastic["reason"]
    if elastic["max"] is None:
        return f"controller: heals dead workers · {elastic['current']} containers (fixed size)"
    return (f"autoscale {elastic['min']}..{elastic['max']} at {elastic['target']:g} ongoing each · "
            f"{elastic['current']} → {elastic['desired']} containers · {elastic['reason']}")


def _money(value: Optional[float], up_to: bool = False) -> str:
    return "unknown" if value is None else f"{'up to ' if up_to else ''}${value:.3f}"


def plan_rows(plan: CostPlan) -> list[list[str]]:
    """The plan as a table: a header, one row per resource, the total."""
    table = [["resource", "count", "kind", "USD/hour each", "USD/hour"]]
    for row in plan.lines:
        table.append([row.what, str(row.count), row.unit, _money(row.hourly_each, row.up_to),
                      _money(row.hourly, row.up_to)])
    table.append(["total (estimate)", "", "", "", _money(plan.hourly, any(row.up_to for row in plan.lines))])
    return table


def plan_text(plan: CostPlan) -> str:
    """The plan as the text `up` shows before asking to go on."""
    rows = plan_rows(plan)
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    text = [f"Plan for cluster {plan.cluster!r} in {plan.region or 'the default region'}:"]
    text += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(text + [f"  {note}" for note in plan.notes])
