"""Answers to callers written at the end of the event loop's pass, not the
moment they are ready.

Why: one pass of the loop handles every socket that was ready, and the
answers it makes wake the clients that wait for them. Written at once, each
write wakes a client that, on a busy 2-core machine, often preempts the
orchestrator in the middle of the pass. Held to the end of the pass, the
pass's work is done in one go and the clients find their answers together.
Measured in benchmarks/tls.py's set-up (64 keep-alive clients over TLS), the
code before and after side by side: 3-22 % less of the orchestrator's CPU
per request (median 12 %, six runs) and fewer involuntary context switches
(median 0.53 per request instead of 0.56); over plain HTTP, no difference the
machine's noise could resolve (docs/performance.md, "TLS beside HAProxy").

A request to a container is not held: it is what frees the next answer.
Order per connection is kept (one list, in order of writing); a close queued
after a write happens after it; a connection that closed meanwhile is skipped.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Optional

log = logging.getLogger("mlcluster.orchestrator")


class Outbox:
    """`write(transport, data, close)` now, done by `flush()` at the end of the pass.
    One per listener, used only from its event loop's thread."""
    __slots__ = ("loop", "pending")

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None):
        self.loop = loop
        self.pending: list[tuple[asyncio.Transport, bytes, bool]] = []

    def write(self, transport: asyncio.Transport, data: bytes, close: bool = False) -> None:
        """`data` (may be empty), then a close when `close`, at the end of this pass."""
        if not self.pending:
            if self.loop is None:
                self.loop = asyncio.get_running_loop()
            self.loop.call_soon(self.flush)  # call_soon runs after this pass's I/O callbacks
        self.pending.append((transport, data, close))

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for transport, data, close in pending:
            if transport.is_closing():
                continue
            try:
                if data:
                    transport.write(data)
                if close:
                    transport.close()
            except Exception:  # one connection's failure must not hold back the others' answers
                log.exception("could not write an answer to %s", transport.get_extra_info("peername"))
