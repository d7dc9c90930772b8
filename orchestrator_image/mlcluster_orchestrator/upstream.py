"""The orchestrator's HTTP/1.1 client to worker containers: raw asyncio
Protocols with httptools' response parser, a small keep-alive pool per
container, one request at a time per connection.

Why not aiohttp's client: on this 2-core machine a minimal aiohttp proxy tops
out near 3,600 req/s; the per-request work here is one `transport.write` of
pre-encoded header bytes and one parser feed.

Contract of `Pool.send(data, timeout_s, on_answer, on_error)` (callbacks, no
future: the dispatcher frees the container and answers its caller from inside
the callback of the answer): exactly one of `on_answer(status, body)` (the
moment the answer is whole) or `on_error(UpstreamError)` is called, later,
never from inside `send`. UpstreamError's kind is one of refused | timeout |
disconnected (connect failure, no whole answer within `timeout_s`, the
connection broke or the answer was not HTTP). `Dropped` (a disconnected kind)
says a reused connection was closed by the worker while idle before any byte
of an answer came back: the worker never saw the request, so it can be sent
again (`fresh=True`: on a new connection). `await Pool.request(data,
timeout_s)` is the same as a coroutine, resending once after `Dropped`.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Callable, Deque, Optional

import httptools

from .sweep import Sweep

# Workers close idle kept-alive connections after 30 s (gunicorn's keepalive);
# ours retire sooner, so a request never races that close.
CLIENT_KEEPALIVE_S = 15.0
TICK_S = 0.1  # how often a pool looks for answers past their deadline (sweep.py: no timer per request)

OnAnswer = Callable[[int, bytes], None]
OnError = Callable[["UpstreamError"], None]


class UpstreamError(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind  # refused | timeout | disconnected


class Dropped(UpstreamError):
    """A reused connection closed by the worker before it read our request."""

    def __init__(self):
        super().__init__("disconnected", "a kept-alive connection closed before the request was read")


class _Connection(asyncio.Protocol):
    """One kept-alive connection; at most one request in flight (`on_answer` set)."""
    __slots__ = ("pool", "transport", "parser", "on_answer", "on_error", "chunks", "deadline", "reused",
                 "got_bytes", "idle_since", "closed")

    def __init__(self, pool: "Pool"):
        self.pool = pool
        self.transport: Optional[asyncio.Transport] = None
        self.parser = httptools.HttpResponseParser(self)
        self.on_answer: Optional[OnAnswer] = None
        self.on_error: Optional[OnError] = None
        self.chunks: list[bytes] = []
        self.deadline = 0.0  # loop time by which the answer in flight must be whole
        self.reused = self.got_bytes = self.closed = False
        self.idle_since = 0.0

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.on_answer is None:  # bytes nobody asked for: the connection is out of step
            self.transport.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
            self._fail(UpstreamError("disconnected", "the answer was not valid HTTP"))

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.on_answer is not None:
            self._fail(Dropped() if self.reused and not self.got_bytes else
                       UpstreamError("disconnected", "the connection broke before a whole answer"))

    # -- httptools callbacks ---------------------------------------------
    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        on_answer, self.on_answer, self.on_error = self.on_answer, None, None
        self.pool.busy.discard(self)
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        status = self.parser.get_status_code()
        # Back in the pool before on_answer runs: on_answer frees the container,
        # and its next request is written at once, on this same connection.
        if self.parser.should_keep_alive() and not self.closed:
            self.reused, self.got_bytes = True, False
            self.pool.give_back(self)
        else:
            self.transport.close()
        on_answer(status, body)

    # -- ours --------------------------------------------------------------
    def send(self, data: bytes, timeout_s: float, on_answer: OnAnswer, on_error: OnError) -> None:
        self.on_answer, self.on_error = on_answer, on_error
        pool = self.pool
        self.deadline = pool.loop.time() + timeout_s
        pool.busy.add(self)
        self.transport.write(data)

    def _timed_out(self) -> None:
        self.transport.close()
        self._fail(UpstreamError("timeout", "no answer in time"))

    def _fail(self, exc: UpstreamError) -> None:
        on_error, self.on_answer, self.on_error = self.on_error, None, None
        self.pool.busy.discard(self)
        if on_error is not None:
            on_error(exc)


class Pool:
    """Kept-alive connections to one container (host, port)."""

    def __init__(self, host: str, port: int, connect_timeout_s: float = 2.0):
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self.idle: Deque[_Connection] = collections.deque()
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.busy: Sweep[_Connection] = Sweep(TICK_S, self.loop.time, _Connection._timed_out)  # in flight

    def give_back(self, conn: _Connection) -> None:
        if self.closed:
            conn.transport.close()
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def send(self, data: bytes, timeout_s: float, on_answer: OnAnswer, on_error: OnError,
             fresh: bool = False) -> None:
        """Send one whole request (`data`: head and body): written at once on an
        idle connection (no await: callable from inside another connection's
        callback), else on a new one once it is up. See the module's contract."""
        conn = None if fresh else self._take_idle()
        if conn is not None:
            conn.send(data, timeout_s, on_answer, on_error)
        else:
            self.loop.create_task(self._connect_and_send(data, timeout_s, on_answer, on_error))

    async def _connect_and_send(self, data: bytes, timeout_s: float, on_answer: OnAnswer, on_error: OnError) -> None:
        try:
            conn = await self._connect()
        except UpstreamError as exc:
            on_error(exc)
            return
        conn.send(data, timeout_s, on_answer, on_error)

    async def request(self, data: bytes, timeout_s: float) -> tuple[int, bytes]:
        """`send` as a coroutine: (status, body), or UpstreamError. A caller
        that is cancelled leaves the exchange to finish (or time out) on its
        connection, which stays in step."""
        for fresh in (False, True):
            answer = self.loop.create_future()

            def on_answer(status: int, body: bytes, answer=answer) -> None:
                if not answer.done():
                    answer.set_result((status, body))

            def on_error(exc: UpstreamError, answer=answer) -> None:
                if not answer.done():
                    answer.set_exception(exc)
            self.send(data, timeout_s, on_answer, on_error, fresh=fresh)
            try:
                return await answer
            except Dropped:
                continue
        raise UpstreamError("disconnected", "two connections in a row closed before an answer")

    def _take_idle(self) -> Optional[_Connection]:
        oldest_ok = self.loop.time() - CLIENT_KEEPALIVE_S
        idle = self.idle
        while idle:
            conn = idle.pop()  # the most recently used: the likeliest still open
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
        if self.closed:  # the container left while we connected
            conn.transport.close()
            raise UpstreamError("disconnected", "the container was removed")
        return conn

    def close(self) -> None:
        """Close the idle connections now, and each busy one as its answer comes back."""
        self.closed = True
        while self.idle:
            self.idle.pop().transport.close()


def request_head(method: str, path: str, host: str, port: int, headers: dict[str, str]) -> bytes:
    """The fixed part of a request's header, up to (not including) Content-Length."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


def with_body(head: bytes, body: bytes, extra: bytes = b"") -> bytes:
    """The whole request: `head`, the length, `extra` header lines (each ending in CRLF), the body."""
    return b"%b%d\r\n%b\r\n%b" % (head, len(body), extra, body)
