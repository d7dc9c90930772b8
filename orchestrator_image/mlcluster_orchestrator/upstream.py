"""The orchestrator's HTTP/1.1 client to worker containers: raw asyncio
Protocols with httptools' response parser, a small keep-alive pool per
container, one request at a time per connection.

Why not aiohttp's client: on this 2-core machine a minimal aiohttp proxy tops
out near 3,600 req/s; the per-request work here is one `transport.write` of
pre-encoded header bytes and one parser feed.

Contract of `Pool.request(data, timeout_s, on_answer)`: returns what
`on_answer(status, body)` returns (by default `(status, body)`), called inside
the connection's callback the moment the answer is whole (so the caller can
free the container with no event-loop hop; what it raises is raised to the
awaiting caller), or raises `UpstreamError(kind)` with kind one of refused | timeout |
disconnected (connect failure, no whole answer within `timeout_s`, the
connection broke or the answer was not HTTP). A request on a reused
connection that the worker had closed while idle (no byte of an answer came
back) is sent once more on a new connection: the worker never saw it.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any, Callable, Deque, Optional

import httptools

# Workers close idle kept-alive connections after 30 s (gunicorn's keepalive);
# ours retire sooner, so a request never races that close.
CLIENT_KEEPALIVE_S = 15.0


def _pair(status: int, body: bytes) -> tuple[int, bytes]:
    return status, body


class UpstreamError(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind  # refused | timeout | disconnected


class _Connection(asyncio.Protocol):
    """One kept-alive connection; at most one request in flight."""
    __slots__ = ("pool", "transport", "parser", "waiter", "on_answer", "chunks", "timer", "reused",
                 "got_bytes", "idle_since", "closed")

    def __init__(self, pool: "Pool"):
        self.pool = pool
        self.transport: Optional[asyncio.Transport] = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: Optional[asyncio.Future] = None
        self.on_answer: Callable[[int, bytes], Any] = _pair
        self.chunks: list[bytes] = []
        self.timer: Optional[asyncio.TimerHandle] = None
        self.reused = self.got_bytes = self.closed = False
        self.idle_since = 0.0

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes nobody asked for: the connection is out of step
            self.transport.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(UpstreamError("disconnected", "the answer was not valid HTTP"))
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.waiter is not None:
            self._fail(_Dropped() if self.reused and not self.got_bytes else
                       UpstreamError("disconnected", "the connection broke before a whole answer"))

    # -- httptools callbacks ---------------------------------------------
    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        waiter, on_answer, self.waiter = self.waiter, self.on_answer, None
        self.timer.cancel()
        body = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks = []
        status = self.parser.get_status_code()
        # Back in the pool before on_answer runs: on_answer frees the container,
        # and its next request is written at once, on this same connection.
        if self.parser.should_keep_alive() and not self.closed:
            self.reused, self.got_bytes = True, False
            self.pool.give_back(self)
        else:
            self.transport.close()
        if not waiter.done():
            try:
                waiter.set_result(on_answer(status, body))
            except Exception as exc:  # the caller's own verdict on the answer
                waiter.set_exception(exc)

    # -- ours --------------------------------------------------------------
    def send(self, data: bytes, timeout_s: float, loop, on_answer) -> asyncio.Future:
        self.waiter = waiter = loop.create_future()
        self.on_answer = on_answer
        self.timer = loop.call_later(timeout_s, self._timed_out)
        self.transport.write(data)
        return waiter

    def _timed_out(self) -> None:
        self._fail(UpstreamError("timeout", "no answer in time"))
        self.transport.close()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if self.timer is not None:
            self.timer.cancel()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class _Dropped(Exception):
    """A reused connection closed by the worker before it read our request."""


Sent = "tuple[_Connection, asyncio.Future]"


class Pool:
    """Kept-alive connections to one container (host, port)."""

    def __init__(self, host: str, port: int, connect_timeout_s: float = 2.0):
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self.idle: Deque[_Connection] = collections.deque()
        self.loop = asyncio.get_running_loop()

    def give_back(self, conn: _Connection) -> None:
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def send_now(self, data: bytes, timeout_s: float, on_answer: Callable[[int, bytes], Any]) -> Optional[Sent]:
        """Write `data` at once on an idle connection if there is one (no await:
        callable from inside another connection's callback); pass the result to
        `request(..., sent=)` to wait for the answer. None: no idle connection."""
        conn = self._take_idle()
        return None if conn is None else (conn, conn.send(data, timeout_s, self.loop, on_answer))

    async def request(self, data: bytes, timeout_s: float, on_answer: Callable[[int, bytes], Any] = None,
                      sent: Optional[Sent] = None) -> Any:
        """Send one whole request (`data`: head and body) and wait for the
        answer; with `sent` (from send_now) it is on the wire already."""
        on_answer = on_answer or _pair
        for _ in range(2):
            if sent is not None:
                (conn, answer), sent = sent, None
            else:
                conn = self._take_idle() or await self._connect()
                answer = conn.send(data, timeout_s, self.loop, on_answer)
            try:
                return await answer
            except _Dropped:
                continue
            except asyncio.CancelledError:  # the caller gave up: the answer would be out of step
                conn.transport.close()
                raise
        raise UpstreamError("disconnected", "two connections in a row closed before an answer")

    def _take_idle(self) -> Optional[_Connection]:
        oldest_ok = self.loop.time() - CLIENT_KEEPALIVE_S
        while self.idle:
            conn = self.idle.pop()  # the most recently used: the likeliest still open
            if not conn.closed and conn.idle_since >= oldest_ok:
                return conn
            conn.transport.close()
        return None

    async def _connect(self) -> _Connection:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Connection(self), self.host, self.port),
                self.connect_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            raise UpstreamError("timeout", "connection timed out") from None
        except OSError as exc:
            raise UpstreamError("refused", f"connection refused ({type(exc).__name__})") from None
        return conn

    def close(self) -> None:
        while self.idle:
            self.idle.pop().transport.close()


def request_head(method: str, path: str, host: str, port: int, headers: dict[str, str]) -> bytes:
    """The fixed part of a request's header, up to (not including) Content-Length."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


def with_body(head: bytes, body: bytes, extra: bytes = b"") -> bytes:
    """The whole request: `head`, the length, `extra` header lines (each ending in CRLF), the body."""
    return b"%b%d\r\n%b\r\n%b" % (head, len(body), extra, body)
