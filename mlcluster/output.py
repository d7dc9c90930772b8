"""Tables a person reads. Data goes to stdout; progress and errors to stderr."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text

from .state import ClusterState

STATUS_STYLE = {"free": "green", "busy": "yellow", "down": "red", "draining": "magenta"}
DETAIL_COLUMNS = ("instance_id", "instance_type", "zone", "instance_state", "host_address")


def cluster_table(state: ClusterState) -> Table:
    table = Table(title=f"cluster {state.name} ({state.provider}, {state.runtime})")
    table.add_column("container")
    table.add_column("worker")
    table.add_column("address")
    for c in state.containers:
        table.add_row(c.id, c.worker, f"{c.host}:{c.port}")
    return table


def status_table(snapshot: dict) -> Table:
    containers = snapshot["containers"]
    extra = [col for col in DETAIL_COLUMNS if any(col in c for c in containers)]
    table = Table(title=f"cluster {snapshot['name']} — {snapshot['orchestrator_url']}")
    for column in ["container", "address", "status", "in-flight", "served", "failed", "recent ms", *extra]:
        table.add_column(column, no_wrap=column in ("container", "address"),
                         justify="right" if column in ("in-flight", "served", "failed", "recent ms") else "left")
    for c in sorted(containers, key=lambda c: c["id"]):
        latency = c.get("recent_latency_ms")
        table.add_row(c["id"], f"{c['host']}:{c['port']}",
                      Text(c["status"], style=STATUS_STYLE.get(c["status"], "")),
                      str(c["in_flight"]), str(c["served"]), str(c["failed"]),
                      f"{latency:.1f}" if latency is not None else "-",
                      *[str(c.get(col, "")) for col in extra])
    queue = snapshot["queue"]
    up = sum(1 for c in containers if c["status"] in ("free", "busy"))
    table.caption = (f"{up}/{len(containers)} containers up · queue {queue['depth']}/{queue['limit']} · "
                     f"in flight {snapshot['in_flight']} · served {snapshot['served']} · failed {snapshot['failed']} · "
                     f"up {snapshot.get('uptime_s', 0):.0f} s")
    return table
