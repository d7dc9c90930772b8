"""Lightweight stand-in containers for dispatch benchmarks: one asyncio process
serving several ports, each port a "container" of capacity 1 with a fixed
service time, counting its own concurrent requests (a dispatcher that puts two
requests in one container shows up as max_concurrency 2).

    python benchmarks/light_container.py PORT [PORT ...]

Endpoints on every port:
  POST /run_model   answers {"label": "POSITIVE", "port": P} after the service time
  GET  /ready       200 (what the orchestrator's health checker probes)
  GET  /stats       {"served", "max_concurrency"}
  POST /config?ms=N sets this port's service time to N ms and zeroes its counters
Minimal HTTP/1.1 with keep-alive: enough for wrk, HAProxy and aiohttp, no more.
"""
from __future__ import annotations

import asyncio
import json
import sys


class Container:
    def __init__(self, port: int):
        self.port = port
        self.service_s = 0.0
        self.in_flight = self.max_concurrency = self.served = 0

    def answer(self, status: str, body: dict) -> bytes:
        data = json.dumps(body).encode()
        return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                .encode() + data)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ok = self.answer("200 OK", {"label": "POSITIVE", "port": self.port})
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, _, rest = head.partition(b"\r\n")
                method, target = request_line.split(b" ")[:2]
                length = 0
                for line in rest.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                if target.startswith(b"/run_model"):
                    self.in_flight += 1
                    self.max_concurrency = max(self.max_concurrency, self.in_flight)
                    if self.service_s:
                        await asyncio.sleep(self.service_s)
                    self.in_flight -= 1
                    self.served += 1
                    writer.write(ok)
                elif target.startswith(b"/config"):
                    self.service_s = float(target.split(b"ms=")[1]) / 1000
                    self.max_concurrency = self.served = 0
                    writer.write(self.answer("200 OK", {"service_ms": self.service_s * 1000}))
                elif target.startswith(b"/stats"):
                    writer.write(self.answer("200 OK", {"served": self.served,
                                                        "max_concurrency": self.max_concurrency}))
                else:  # /ready and anything else
                    writer.write(self.answer("200 OK", {"ready": True}))
                if writer.transport.get_write_buffer_size() > 65536:
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError, IndexError):
            writer.close()


async def main(ports: list[int]) -> None:
    servers = [await asyncio.start_server(Container(p).serve, "127.0.0.1", p, backlog=1024) for p in ports]
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main([int(p) for p in sys.argv[1:]]))
