"""The load host's side of `bench --from`: `python -m mlcluster.bench.agent`.

Speaks JSON lines on stdin/stdout with the controller (`loadhosts`):

1. reads the job: the orchestrator's URL, a one-step `BenchConfig`, the bodies;
2. answers `{"ready": ..., "engine": "c" | "python"}`;
3. on the line `go`, answers at once `{"go_ns": <its monotonic clock>}` (the
   clock exchange of `merge.ClockSync`), then warms up and measures; a line
   `stop` (or the end of its input: the controller is gone) interrupts it;
4. writes `{"result": ...}`: every record, the window, its origin, and exits.

It imports only the bench's load generator and `mlcluster.errors` (no state,
no providers, no rich), so the controller can upload these modules to a host
that has the orchestrator's Python (httptools, orjson, uvloop: a venv, or the
orchestrator's image) and nothing else of ours.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
from typing import Any, BinaryIO, Iterator, Optional

import orjson

from . import engine
from .load import Target
from .runner import BenchConfig, run_bench
from .stats import RequestRecord
from .sweep import StepPolicy
from .wire import Access, now_ns

RECORD_FIELDS = [f.name for f in dataclasses.fields(RequestRecord)]


def config_to_json(config: BenchConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_json(data: dict[str, Any]) -> BenchConfig:
    return BenchConfig(**{**data, "policy": StepPolicy(**data["policy"])})


def record_row(record: RequestRecord) -> list:
    return [getattr(record, name) for name in RECORD_FIELDS]


def record_of(row: list) -> RequestRecord:
    return RequestRecord(**dict(zip(RECORD_FIELDS, row)))


class Silent:
    """The UI the runner reports to here: nothing (the controller shows progress).
    Not `mlcluster.ui.QuietUI`, which needs rich: an orchestrator's image has none."""

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    @contextlib.contextmanager
    def step(self, description: str, total: Optional[int] = None) -> Iterator["Silent"]:
        yield self

    def advance(self, n: int = 1) -> None: ...

    def update(self, description: str) -> None: ...


def _write(out: BinaryIO, message: dict) -> None:
    out.write(orjson.dumps(message) + b"\n")
    out.flush()


def _stop_when_told(inp: BinaryIO) -> None:
    """`stop` from the controller (its Ctrl-C), or the controller gone (end of
    input): interrupt the run as Ctrl-C would here, so it stops sending, waits
    briefly for what is in flight and still reports what it measured."""
    try:
        inp.readline()
    except (OSError, ValueError):
        pass
    os.kill(os.getpid(), signal.SIGINT)


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    job = orjson.loads(inp.readline())
    config = config_from_json(job["config"]).validate()
    bodies = [b.encode() for b in job["bodies"]]
    slots = max(p.concurrency for p in config.plans())
    target = Target(job["url"], timeout_s=job["timeout_s"], pool_size=slots,
                    **Access(**job.get("access", {})).target_options())
    try:
        compiled = config.mode == "closed" and engine.engine_for(target) is not None
        _write(out, {"ready": True, "engine": "c" if compiled else "python"})
        if inp.readline().strip() != b"go":
            return 1
        _write(out, {"go_ns": now_ns()})
        threading.Thread(target=_stop_when_told, args=(inp,), daemon=True).start()
        result = run_bench(config, target, bodies, ui=Silent())
    finally:
        target.close()
    _write(out, {"result": {
        "origin_ns": result.origin_ns, "window_s": list(result.window_s), "unanswered": result.unanswered,
        "model": result.model, "interrupted": result.interrupted,
        "stopped_by": result.steps[0].stopped_by if result.steps else "done",
        "records": [record_row(r) for r in result.records]}})
    return 0


def main() -> int:
    try:
        return serve(sys.stdin.buffer, sys.stdout.buffer)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
