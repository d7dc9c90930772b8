"""Serving the orchestrator's aiohttp application with guards against slow and
idle clients (what HAProxy's `timeout http-request`, `timeout http-keep-alive`
and `maxconn` do in front of a server):

- header time-out: a request whose header has not fully arrived within
  `header_timeout_s` of its first byte (or of the connection's start) gets a
  408 and its connection is closed. aiohttp has no such time-out of its own
  (its keep-alive timer also closes a half-sent header, but only at the idle
  time-out), so `GuardedHandler` adds one (see `data_received`);
- idle time-out: aiohttp's keep-alive time-out (`idle_timeout_s`) closes a
  connection that sends nothing between requests;
- body time-out: the application reads each body within its own limit (app.py);
- a cap on open connections: past `max_connections` a new connection gets a
  503 and is closed at once, before anything of it is read; connections that
  already hold a queued request are never touched;
- the open-files soft limit is raised to the hard limit at start.

`serve(..., admin=(admin_app, "127.0.0.1:8001"))` also runs the admin
application (app.create_admin_app) on its own listener, with the same guards
and a cap of its own (ORCH_ADMIN_BIND; see app.py).
"""
from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("mlcluster.orchestrator")


def _close_answer(status: str, message: str, extra: str = "") -> bytes:
    """A whole HTTP answer that ends the connection, written before aiohttp is involved."""
    body = f'{{"error": "{message}", "status": {status.split()[0]}}}'.encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Connection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


BUSY_ANSWER = _close_answer("503 Service Unavailable", "the orchestrator has too many open connections; retry later",
                            "Retry-After: 1\r\n")
TIMEOUT_ANSWER = _close_answer("408 Request Timeout", "the request header did not arrive in time")
FD_RESERVE = 256  # descriptors kept for connections to workers, the status file, logs


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft


class Guards:
    """The limits shared by every connection, and how many are open."""

    def __init__(self, header_timeout_s: float, max_connections: int):
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.open = 0
        self.refused = 0


class GuardedHandler(RequestHandler):
    """aiohttp's connection handler plus the header time-out and the cap.

    Relies on two attributes of aiohttp's RequestHandler (3.10-3.14):
    `_messages` (parsed requests not yet handled) and `_request_in_progress`
    (a handler is running: bytes now are a body, not a header). The test
    `test_slow_clients.py` fails if either changes meaning."""

    def __init__(self, guards: Guards, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._guards = guards
        self._header_timer: asyncio.TimerHandle | None = None
        self._counted = False

    def connection_made(self, transport) -> None:
        guards = self._guards
        if guards.open >= guards.max_connections:
            guards.refused += 1
            transport.write(BUSY_ANSWER)
            transport.close()  # connection_lost follows; nothing was started
            return
        guards.open += 1
        self._counted = True
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages or self._request_in_progress:
            self._disarm_header_timer()  # a whole header arrived (bytes now are its body)
        elif data and self._header_timer is None:
            self._arm_header_timer()  # the first bytes of a next request on a kept-alive connection

    def connection_lost(self, exc) -> None:
        self._disarm_header_timer()
        if self._counted:
            self._counted = False
            self._guards.open -= 1
            super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(self._guards.header_timeout_s, self._header_expired)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_expired(self) -> None:
        self._header_timer = None
        if self._messages or self._request_in_progress or self.transport is None:
            return
        self.transport.write(TIMEOUT_ANSWER)
        self.force_close()
        self.transport.close()


def listen(bind: str) -> socket.socket:
    host, _, port = bind.rpartition(":")
    sock = socket.create_server((host.strip("[]") or "127.0.0.1", int(port)), reuse_port=False, backlog=4096)
    sock.setblocking(False)
    return sock


async def _guarded_listener(app: web.Application, bind: str, guards: Guards, idle_timeout_s: float):
    """`app` served on `bind` with `guards`: (runner, listening server)."""
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout_s, handle_signals=False,
                           shutdown_timeout=5.0)
    await runner.setup()
    server = runner.server
    loop = asyncio.get_running_loop()
    # web.TCPSite would build plain RequestHandlers; the same server, guarded:
    listener = await loop.create_server(
        lambda: GuardedHandler(guards, server, loop=loop, **server._kwargs), sock=listen(bind), backlog=4096)
    return runner, listener


async def serve(app: web.Application, bind: str, *, header_timeout_s: float, idle_timeout_s: float,
                max_connections: int, admin: tuple[web.Application, str] | None = None) -> None:
    """Run `app` on `bind` ("host:port") until SIGTERM/SIGINT; `admin`, an
    (application, "host:port") pair, on a listener of its own beside it."""
    soft = raise_open_files_limit()
    if max_connections > soft - FD_RESERVE:
        log.warning("ORCH_MAX_CONNECTIONS=%d is above what %d open files allow; using %d",
                    max_connections, soft, soft - FD_RESERVE)
        max_connections = max(1, soft - FD_RESERVE)
    runner, listener = await _guarded_listener(app, bind, Guards(header_timeout_s, max_connections), idle_timeout_s)
    log.info("Listening at http://%s (header time-out %gs, idle time-out %gs, at most %d connections)",
             bind, header_timeout_s, idle_timeout_s, max_connections)
    admin_runner = admin_listener = None
    if admin is not None:
        admin_runner, admin_listener = await _guarded_listener(admin[0], admin[1], Guards(header_timeout_s, 64),
                                                               idle_timeout_s)
        log.info("Admin endpoints at http://%s only", admin[1])
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for closing in (admin_listener, listener):
            if closing is not None:
                closing.close()
        if admin_runner is not None:
            await admin_runner.cleanup()
        await runner.cleanup()
