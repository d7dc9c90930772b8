"""A delaying TCP relay: a stand-in for the distance between a laptop and a
cluster, since these machines have no netem. Every chunk read in either
direction is written on `delay_ms` ± `jitter_ms` later (uniform), never
before the chunk ahead of it (bytes keep their order, as TCP's do).

    with Relay(("10.0.0.2", 8000), delay_ms=40, jitter_ms=5) as relay:
        requests.get(relay.url + "/status")   # ~80 ms more per round trip

It listens on 127.0.0.1 only, runs an asyncio loop on a thread of its own,
and `close()` ends every connection it holds."""
from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Optional

CHUNK = 65536


class Relay:
    def __init__(self, upstream: tuple[str, int], delay_ms: float, jitter_ms: float = 0.0,
                 seed: Optional[int] = None):
        if jitter_ms > delay_ms:
            raise ValueError("the jitter cannot exceed the delay")
        self.upstream, self.delay_s, self.jitter_s = upstream, delay_ms / 1000, jitter_ms / 1000
        self.random = random.Random(seed)
        self.loop = asyncio.new_event_loop()
        self.connections = 0
        self._tasks: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name="relay", daemon=True)
        self._thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Relay":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _delay(self) -> float:
        return self.delay_s + self.random.uniform(-self.jitter_s, self.jitter_s)

    async def _serve(self, client_reader, client_writer) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        for reader, writer in ((client_reader, up_writer), (up_reader, client_writer)):
            queue: asyncio.Queue = asyncio.Queue()
            for coroutine in (self._read(reader, queue), self._write(queue, writer)):
                task = asyncio.ensure_future(coroutine)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _read(self, reader: asyncio.StreamReader, queue: asyncio.Queue) -> None:
        due = 0.0
        try:
            while chunk := await reader.read(CHUNK):
                due = max(due, time.monotonic() + self._delay())  # never ahead of the chunk before it
                queue.put_nowait((due, chunk))
        except OSError:
            pass
        queue.put_nowait((max(due, time.monotonic() + self._delay()), b""))  # the end, delayed like data

    async def _write(self, queue: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                due, chunk = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()
        except OSError:
            writer.close()

    def close(self) -> None:
        async def shut() -> None:
            self.server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0)
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.loop.close()
