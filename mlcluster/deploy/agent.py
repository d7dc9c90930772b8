"""The autostop watchdog: stops a cluster that has served nothing for its idle
time, or whose lifetime is over, with nobody's laptop involved.

It runs on the cluster's hosts (deploy/watchdog.py) with the host's own python3,
so it uses the standard library only and is uploaded as this one file:

    python3 watchdog.py --status-url http://127.0.0.1:8000/status --idle-s 1800 \\
        --deadline 1767225600 --record /path/autostop.json -- sh -c 'what stops this host'

Every `--interval-s` it reads the orchestrator's public /status (no token) into an
`IdleClock`; when that says stop, it writes why and when to `--record` (JSON) and
runs the stop command given after `--` in its place (exec).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class IdleClock:
    """Decides from /status snapshots (or None: no answer) when to stop: after `idle_s` (0: never)
    without a request in flight or queued or a change of the served and failed counts, or once the
    wall clock passes `deadline`. The caller passes the times in (monotonic for idleness, wall
    clock for the deadline), so the decision is exact and testable."""
    idle_s: float
    deadline: float = 0.0           # epoch seconds; 0: no lifetime limit
    last_active: float = 0.0        # monotonic
    _seen: Optional[tuple] = field(default=None, repr=False)
    _ready: bool = field(default=False, repr=False)

    def observe(self, snapshot: Optional[dict], now: float) -> None:
        if snapshot is None:
            if self._seen is None:
                self.last_active = now  # never reached yet (starting, or a firewall): no idleness known
            return  # no answer after answers: it may have stopped; nothing served that we know of
        containers = snapshot.get("containers") or []
        if not self._ready:
            # Starting: idleness counts from when every container first is ready.
            self._ready = bool(containers) and all(c.get("status") in ("free", "busy") for c in containers)
            self.last_active = now
        counts = (snapshot.get("served", 0), snapshot.get("failed", 0))
        working = snapshot.get("in_flight", 0) > 0 or (snapshot.get("queue") or {}).get("depth", 0) > 0
        if working or (self._seen is not None and counts != self._seen):
            self.last_active = now
        self._seen = counts

    def reason(self, now: float, wall: float) -> Optional[str]:
        """Why the cluster should stop now, or None."""
        if self.deadline and wall >= self.deadline:
            return "max_lifetime"
        if self.idle_s and now - self.last_active >= self.idle_s:
            return "autostop"
        return None


def fetch(url: str, timeout: float = 3.0) -> Optional[dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return json.loads(answer.read())
    except (OSError, ValueError):
        return None


def watch(clock: IdleClock, url: str, interval_s: float, sleep: Callable[[float], None] = time.sleep) -> str:
    """Observe until a reason to stop comes up; returns it."""
    clock.last_active = time.monotonic()
    while True:
        clock.observe(fetch(url), time.monotonic())
        reason = clock.reason(time.monotonic(), time.time())
        if reason:
            return reason
        sleep(interval_s)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="watchdog.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--status-url", required=True)
    parser.add_argument("--idle-s", type=float, default=0.0)
    parser.add_argument("--deadline", type=float, default=0.0)
    parser.add_argument("--interval-s", type=float, default=10.0)
    parser.add_argument("--record", required=True)
    parser.add_argument("stop", nargs=argparse.REMAINDER, help="-- the command that stops this host's part")
    args = parser.parse_args(argv)
    command = args.stop[1:] if args.stop[:1] == ["--"] else args.stop
    if not command or not (args.idle_s or args.deadline):
        parser.error("give a stop command after -- and --idle-s or --deadline")
    reason = watch(IdleClock(args.idle_s, args.deadline), args.status_url, args.interval_s)
    record = {"reason": reason, "stopped_at": time.time(), "idle_s": args.idle_s, "deadline": args.deadline}
    with open(args.record + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(args.record + ".tmp", args.record)
    print(f"mlcluster watchdog: {reason}: running {command}", flush=True)
    # Become the stop command (same pid: whatever stops the cluster's processes
    # may end this one's group too), without the cluster's marker, so it is not
    # itself among the processes it stops.
    env = {k: v for k, v in os.environ.items() if k != "MLCLUSTER_MARKER"}
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())
