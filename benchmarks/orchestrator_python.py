"""The orchestrator's own Python per request, without sockets: the real
listener, routes, dispatcher, scheduler and upstream pool of one
orchestrator, fed whole requests and worker answers by hand through their
protocol callbacks, with transports that only keep what is written. What it
leaves out (the socket reads and writes, uvloop's loop) is what
benchmarks/dispatch.py's P4 adds on top; what it measures is the part this
code can change.

    python benchmarks/orchestrator_python.py [--requests 64000] [--clients 64] [--containers 8]

Each round, every client sends one request (all but `containers` of them
wait in the queue, as at P4); then every busy container answers until all
are served. Prints microseconds of Python per request.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "orchestrator_image"))
from mlcluster_orchestrator import fastserver, upstream  # noqa: E402
from mlcluster_orchestrator.outbox import Outbox  # noqa: E402
from mlcluster_orchestrator.routes import Orchestrator, Routes  # noqa: E402

REQUEST = (b"POST /new_request HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Length: 17\r\n"
           b"Content-Type: application/json\r\n\r\n{\"text\": \"hello\"}")
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 36\r\n\r\n"
          b"{\"label\": \"POSITIVE\", \"port\": 40001}")


class KeptWrites:
    """A transport that keeps what is written (and nothing else)."""

    def __init__(self):
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def run(requests: int, clients: int, containers: int) -> tuple[float, int, bytes]:
    os.environ.setdefault("ORCH_TOKEN", "bench-token")
    state = Orchestrator({"ORCH_HEALTH_INTERVAL_S": 0, "ORCH_QUEUE_LIMIT": clients})
    await state.start()
    routes = Routes(state)
    limits = fastserver.Limits(10, 10, 60, clients + 10)
    loop = asyncio.get_running_loop()
    workers = []
    for i in range(containers):
        container = state.scheduler.add("127.0.0.1", 40000 + i, id=f"c{i}")
        pool = state.dispatcher._pool(container)[0]
        conn = upstream._Connection(pool)
        conn.connection_made(KeptWrites())
        pool.give_back(conn)
        workers.append(conn)
    callers, outbox = [], Outbox(loop)
    for _ in range(clients):
        caller = fastserver.Connection(routes, limits, loop, outbox)
        caller.connection_made(KeptWrites())
        callers.append(caller)
    answered, last = 0, b""
    start = time.perf_counter()
    while answered < requests:
        for caller in callers:
            caller.data_received(REQUEST)
        busy = [w for w in workers if w.on_answer is not None]
        while busy:
            for worker in busy:
                worker.transport.written.clear()
                worker.data_received(ANSWER)
            busy = [w for w in workers if w.on_answer is not None]
        outbox.flush()  # what the event loop does at the end of its pass
        for caller in callers:
            written = caller.transport.written
            answered += len(written)
            last = written[-1] if written else last
            written.clear()
    elapsed = time.perf_counter() - start
    await state.stop()
    return elapsed, answered, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--containers", type=int, default=8)
    args = parser.parse_args()
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    elapsed, answered, last = asyncio.run(run(args.requests, args.clients, args.containers))
    if not last.startswith(b"HTTP/1.1 200 OK"):
        sys.exit(f"the last answer was not a 200: {last[:200]!r}")
    print(f"{answered:,} requests, {args.clients} clients, {args.containers} containers: "
          f"{elapsed / answered * 1e6:.1f} us of the orchestrator's Python per request")


if __name__ == "__main__":
    main()
