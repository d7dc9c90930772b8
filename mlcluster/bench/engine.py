"""The compiled engine (`_engine_loop.c`, `_engine.c`) for closed loops: the
same requests and records as the Python loop (`load.LoadRun`), at a C
client's cost per request; `load.EngineRun` runs a step on it.

Why: at 64 connections on a 2-core machine, where the cluster under test
takes both cores, the Python loop (raw protocols on uvloop, httptools) spent
20 µs of user CPU per request where wrk spends 4, and the cluster lost that
CPU: the bench reported 0.87-0.98 of wrk's throughput there, the compiled
engine 0.94-1.04 and wrk against itself 1.02-1.07 (README, "The bench keeps
up"). The engine runs its epoll loop on a thread of its own that never takes
the GIL; every `CHUNK_S` the records finished meanwhile are handed over as
`stats.RawRecord` tuples.

It serves closed loops over plain HTTP where it was built (`pip install`
compiles it when a C compiler is found). Open loops, HTTPS and machines
without the build use the Python loop; `MLCLUSTER_BENCH_ENGINE=python` (or
`c`, which fails where it cannot serve) chooses."""
from __future__ import annotations

import os
import socket
import time
from typing import Optional

from ..errors import MlclusterError
from .wire import Target

try:
    from . import _engine
except ImportError:  # not built (no compiler at install): the Python loop serves
    _engine = None

CHUNK_S = 0.1      # how often the records finished meanwhile are handed over to the recorder
ENV = "MLCLUSTER_BENCH_ENGINE"
CHOICES = ("auto", "c", "python")


def available() -> bool:
    """The engine is built, and the clocks agree (it times with CLOCK_MONOTONIC)."""
    return _engine is not None and time.get_clock_info("perf_counter").implementation == \
        "clock_gettime(CLOCK_MONOTONIC)"


def engine_for(target: Target) -> Optional["_engine.Engine"]:
    """The compiled engine for `target`'s closed loops (made once: it keeps its
    connections across the warm-up and the steps), or None for the Python loop."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise MlclusterError(f"{ENV}={choice!r} is not one of {', '.join(CHOICES)}")
    if choice == "python":
        return None
    reason = ("it is not built (no C compiler when mlcluster was installed)" if not available()
              else "it speaks plain HTTP only" if target.ssl is not None else "")
    if reason:
        if choice == "c":
            raise MlclusterError(f"{ENV}=c: the compiled engine cannot serve {target.url}: {reason}")
        return None
    if target.compiled is None:
        family, address = _address(target)
        target.compiled = _engine.Engine(family, address, target.port, target.timeout_s, target.pool_size)
    return target.compiled


def _address(target: Target) -> tuple[int, str]:
    """The address the engine connects to: the first of the host's that takes a
    connection, as `asyncio`'s create_connection (the Python loop's) chooses
    (`localhost` may name ::1 first while the orchestrator listens on 127.0.0.1).
    Where none does, the first: every request then fails, as in the Python loop."""
    try:
        with socket.create_connection((target.host, target.port), timeout=min(5.0, target.timeout_s)) as probe:
            return probe.family, probe.getpeername()[0]
    except OSError:
        family, _, _, _, address = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)[0]
        return family, address[0]
