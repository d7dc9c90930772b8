"""A loopback HTTP endpoint for testing `mlcluster bench`'s load generator:
answers POST /new_request in the orchestrator's shape, misbehaving on demand,
and counts what the client did from the server's side.

    python tests/support/endpoint.py PORT

The request's text says what to do: "sleep:N" answers after N ms; "reset"
drops the connection unanswered; "hang" never answers; "status:N" answers
status N; "garbage" answers 200 with a body that is not JSON; "close"
answers with `Connection: close`; "chunked" answers in chunks, "split" in
three writes 10 ms apart, "eof" as HTTP/1.0 with no length, ended by closing,
"interim" after a `100 Continue`, "big" with 300 kB more; "nonhttp" answers bytes that are not HTTP, "badchunk" a
chunked body with a size that is not hex; anything else answers at once.
GET /counts gives {"requests", "connections", "max_in_flight", "midway"}
(midway: how many requests were in flight, this one included, halfway
through each "sleep:N" -> how often); GET /counts?reset=1 gives them and zeroes them.
"""
from __future__ import annotations

import asyncio
import collections
import json
import sys

ANSWER = json.dumps({"result": {"model": "endpoint", "inference_ms": 1.0}, "queue_ms": 0.5, "total_ms": 2.0,
                     "attempts": 1, "container": {"id": "c0", "host": "127.0.0.1", "port": 1}}).encode()


class Counts:
    def __init__(self) -> None:
        self.requests = self.connections = self.in_flight = self.max_in_flight = 0
        self.midway: collections.Counter = collections.Counter()

    def to_json(self) -> bytes:
        return json.dumps({"requests": self.requests, "connections": self.connections,
                           "max_in_flight": self.max_in_flight, "midway": dict(self.midway)}).encode()


COUNTS = Counts()


def reset() -> None:
    global COUNTS
    COUNTS = Counts()


def response(status: int, body: bytes, close: bool = False) -> bytes:
    return (b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, len(body), b"Connection: close\r\n" if close else b"", body))


class Endpoint(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport, self.buffer, self.tasks, self.counted_in = transport, b"", set(), None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].decode("latin-1")
            length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                           if line.lower().startswith("content-length:")), 0)
            if len(self.buffer) < end + 4 + length:
                return
            body, self.buffer = self.buffer[end + 4:end + 4 + length], self.buffer[end + 4 + length:]
            if head.startswith("GET /counts"):
                self.transport.write(response(200, COUNTS.to_json()))
                if "reset=1" in head.split("\r\n", 1)[0]:
                    reset()
            else:
                self.tasks.add(asyncio.ensure_future(self.answer(json.loads(body)["text"])))

    def connection_lost(self, exc) -> None:
        for task in self.tasks:  # a client that gave up: its requests are no longer in flight
            task.cancel()

    async def answer(self, text: str) -> None:
        counts = COUNTS  # a reset while this waits must not touch the new counts
        if self.counted_in is not counts:
            self.counted_in = counts
            counts.connections += 1
        counts.requests += 1
        counts.in_flight += 1
        counts.max_in_flight = max(counts.max_in_flight, counts.in_flight)
        try:
            if text.startswith("sleep:"):
                await asyncio.sleep(int(text[6:]) / 2000)
                counts.midway[counts.in_flight] += 1
                await asyncio.sleep(int(text[6:]) / 2000)
            if text == "hang":
                await asyncio.sleep(3600)
        finally:
            counts.in_flight -= 1
            self.tasks.discard(asyncio.current_task())
        if text == "reset":
            self.transport.abort()
        elif text.startswith("status:"):
            self.transport.write(response(int(text[7:]), b'{"error": "asked for"}'))
        elif text == "garbage":
            self.transport.write(response(200, b"this is not json"))
        elif text == "chunked":
            await self.trickle([b"HTTP/1.1 200 X\r\nContent-Type: application/json\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n",
                                b"a\r\n%s\r\n" % ANSWER[:10], b"%x\r\n%s\r\n" % (len(ANSWER) - 10, ANSWER[10:]),
                                b"0\r\n\r\n"])
        elif text == "split":
            whole = response(200, ANSWER)
            await self.trickle([whole[:20], whole[20:90], whole[90:]])
        elif text == "eof":
            self.transport.write(b"HTTP/1.0 200 X\r\nContent-Type: application/json\r\n\r\n" + ANSWER)
            self.transport.close()
        elif text == "big":
            self.transport.write(response(200, ANSWER[:-1] + b', "padding": "' + b"x" * 300_000 + b'"}'))
        elif text == "nonhttp":
            self.transport.write(b"SPAM SPAM SPAM\r\n\r\n")
        elif text == "badchunk":
            self.transport.write(b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
        elif text == "interim":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n" + response(200, ANSWER))
        elif text == "close":
            self.transport.write(response(200, ANSWER, close=True))
            self.transport.close()
        else:
            self.transport.write(response(200, ANSWER))

    async def trickle(self, parts: list[bytes]) -> None:
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(0.01)
            self.transport.write(part)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Endpoint, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
