"""`mlcluster events`: every heal and scale decision of a cluster's controller,
with its time and reason (library: elastic/events.py)."""
from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from .cli_options import Name
from .elastic import events as event_log
from .state import ClusterState

JsonFlag = Annotated[bool, typer.Option("--json", help="One JSON object on stdout (with --follow: one a line).")]


def events(name: Name = "default", as_json: JsonFlag = False,
           follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
           last: Annotated[Optional[int], typer.Option("--last", min=1, help="Only the last N events.")] = None,
           ) -> None:
    """The controller's decisions (heal, scale_up, scale_down...) and each roll's waves, with their time and reason."""
    state = ClusterState.load(name)  # an unknown cluster is a known error, not an empty list
    remote = state.spec.provider in ("ssh", "aws")  # its controller writes them on the orchestrator's host
    if not follow:
        found = event_log.read(state.dir, last)
        if remote:
            from .elastic.pool_setup import remote_events
            found = sorted(found + remote_events(state), key=lambda e: e.time)[-(last or 0):]
        if as_json:
            print(json.dumps({"name": name, "events": [e.to_json() for e in found]}, indent=2))
        elif not found:
            print(f"cluster {name!r} has no events yet (its controller writes one for each heal and scale decision)",
                  file=sys.stderr)
        for event in found if not as_json else ():
            print(event.line())
        return
    try:
        if remote:
            from .elastic.pool_setup import follow_remote
        for event in follow_remote(state, last) if remote else event_log.follow(state.dir, last):
            print(json.dumps(event.to_json()) if as_json else event.line(), flush=True)
    except KeyboardInterrupt:
        pass
