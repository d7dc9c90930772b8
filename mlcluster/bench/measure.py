"""One measurement, wherever its load comes from: in this process (`--from
here`, today's bench) or split over load hosts (`loadhosts`). `bench` and the
capacity search call it alike."""
from __future__ import annotations

import platform
from typing import Any, Optional, Sequence

from .engine import engine_for
from .load import Target
from .loadhosts import LoadHost, run_from_hosts
from .runner import BenchConfig, BenchResult, run_bench
from .wire import Access


class Measurer:
    def __init__(self, url: str, hosts: Sequence[LoadHost], bodies: Sequence[bytes], timeout_s: float, ui,
                 access: Access = Access()):
        self.url, self.hosts, self.bodies, self.timeout_s, self.ui = url, list(hosts), bodies, timeout_s, ui
        self.access = access  # the API key and the pinned certificate, here and on every load host
        self.last: Optional[BenchResult] = None
        self.engine = ""   # here: what closed loops ran on

    def __call__(self, config: BenchConfig) -> BenchResult:
        if self.hosts:
            self.last = run_from_hosts(config, self.hosts, self.bodies, self.timeout_s, self.ui, self.access)
            return self.last
        slots = max(p.concurrency for p in config.plans())
        target = Target(self.url, timeout_s=self.timeout_s, pool_size=slots, **self.access.target_options())
        try:
            self.last = run_bench(config, target, self.bodies, ui=self.ui)
            closed = config.mode == "closed" and engine_for(target) is not None
            self.engine = "c" if closed else "python"
        finally:
            target.close()
        return self.last

    def origins(self) -> list[dict[str, Any]]:
        """Where the load came from, for the report's setup."""
        if not self.hosts:
            return [{"host": f"here ({platform.node()})", "url": self.url, "engine": self.engine}]
        return [{"host": h.name, "url": h.url, "engine": h.engine} for h in self.hosts]
