"""The orchestrator's HTTP/1.1 listener: an asyncio.Protocol per connection,
requests parsed by httptools (llhttp, the parser uvicorn uses), on uvloop
when installed. What routes.py answers, this module frames and writes.

Why not aiohttp's server: a minimal aiohttp proxy reaches about 3,600 req/s
on this 2-core machine; the per-request work here is one parser feed, a
dict lookup for the route and one write, at the end of the loop's pass (outbox.py).

Contracts per connection:
- keep-alive (HTTP/1.1 by default, HTTP/1.0 with `Connection: keep-alive`);
  pipelined requests are answered in the order they came;
- slow clients (what HAProxy's `timeout http-request`, `timeout
  http-keep-alive` and `maxconn` do): a header must be whole within
  `header_timeout_s` of its first byte, else 408 and close; a body within
  `body_timeout_s` of its header, else 408 and close; a connection with no
  request in progress closes after `idle_timeout_s` of silence (also one
  that never sent a byte); past `max_connections` open connections a new one
  gets a 503 + Retry-After and is closed before anything of it is read
  (connections holding queued requests are never touched);
- a body over the limit (declared or chunked) is a 413; the rest of it is
  read and dropped, then the connection closes (an early close would reset
  the connection before the caller reads the 413);
- a request head over the limits (limits.py) is a 414 or 431, answered at
  once, then the connection closes: what a connection holds is bounded
  whatever its client sends;
- the same over TLS (`ssl_context`): asyncio's TLS transport hands this
  protocol the decrypted bytes, and the TLS handshake must end within
  `header_timeout_s`.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import signal
import socket
import ssl
from typing import Deque, Optional

import httptools

from .limits import FD_RESERVE, HeadLimits, HeadTooLarge, Limits, raise_open_files_limit
from .outbox import Outbox
from .routes import STATUS_LINES, Answer, Refused, Request, Routes, error

log = logging.getLogger("mlcluster.orchestrator")
MAX_PIPELINED = 32  # answers owed on one connection before it stops being read
MAX_DISCARD = 64 << 20  # bytes of an over-limit body read and dropped before a hard close


def listen(bind: str) -> socket.socket:
    """A listening socket on "host:port" (SO_REUSEADDR, as create_server sets it)."""
    host, _, port = bind.rpartition(":")
    sock = socket.create_server((host.strip("[]") or "127.0.0.1", int(port)), backlog=4096)
    sock.setblocking(False)
    return sock


def encode(answer: Answer, keep_alive: bool, http10: bool = False) -> bytes:
    connection = b"" if keep_alive and not http10 else (
        b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n")
    return b"%bContent-Type: %b\r\nContent-Length: %d\r\n%b%b\r\n%b" % (
        STATUS_LINES[answer.status], answer.content_type, len(answer.body), answer.headers, connection, answer.body)


BUSY = encode(error(503, "the orchestrator has too many open connections; retry later", b"Retry-After: 1\r\n"),
              keep_alive=False)
HEADER_TOO_SLOW = encode(error(408, "the request header did not arrive in time"), keep_alive=False)
BAD_HTTP = encode(error(400, "the request is not valid HTTP/1.1"), keep_alive=False)


def head_refusals(head: HeadLimits) -> tuple[bytes, bytes, bytes]:
    """The 414 and the two 431 answers for these limits."""
    return (encode(error(414, f"the request target is over the {head.max_request_line}-byte limit"), False),
            encode(error(431, f"the request header block is over the {head.max_header_bytes}-byte limit"), False),
            encode(error(431, f"the request has more than {head.max_header_fields} header fields"), False))


class _Slot:
    """An answer owed, in request order; `data` is None until it is ready.
    `cancel`: a deferred handler's, called if the connection is lost first."""
    __slots__ = ("data", "close", "cancel")

    def __init__(self):
        self.data: Optional[bytes] = None
        self.close = False
        self.cancel = None


class Connection(asyncio.BufferedProtocol):
    """One client connection. A BufferedProtocol: the event loop (and its TLS
    layer) reads straight into the listener's one read buffer (`Limits.buffer`),
    which every connection shares: a read is parsed whole before the loop reads
    again, and httptools copies what it keeps (the URL, header values, body
    chunks), so nothing points into the buffer after `buffer_updated`. Over TLS
    this spares a 256 KB allocation per read (uvloop's copying path)."""

    def __init__(self, routes: Routes, limits: Limits, loop: asyncio.AbstractEventLoop, outbox: Outbox):
        self.routes, self.limits, self.loop, self.outbox = routes, limits, loop, outbox
        self.transport: Optional[asyncio.Transport] = None
        self.parser = httptools.HttpRequestParser(self)
        self.counted = self.closing = self.paused = False
        self.in_header = self.in_body = False
        self.discarding = 0  # > 0: bytes of an over-limit body dropped so far (+1)
        self.head_bytes = self.header_bytes = self.header_fields = 0  # of the head being read
        self.head_refusal: Optional[bytes] = None
        self.url = b""
        self.authorization = b""
        self.length = -1  # Content-Length, when given
        self.expect = False  # Expect: 100-continue
        self.chunks: list[bytes] = []
        self.size = 0
        self.owed: Deque[_Slot] = collections.deque()
        self.header_timer = self.body_timer = self.idle_timer = None

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        limits = self.limits
        if limits.open >= limits.max_connections:
            limits.refused += 1
            self.closing = True
            transport.write(BUSY)
            transport.close()
            return
        limits.open += 1
        self.counted = True
        # One idle timer for the connection's life, re-armed only when it fires
        # early (see _idle_expired): no timer work per request.
        self.last_active = self.loop.time()
        self.idle_timer = self.loop.call_later(limits.idle_timeout_s, self._idle_expired)

    def connection_lost(self, exc) -> None:
        self.closing = True
        for slot in self.owed:  # requests still waiting for a container leave the queue
            if slot.data is None and slot.cancel is not None:
                slot.cancel()
        for timer in (self.header_timer, self.body_timer, self.idle_timer):
            if timer is not None:
                timer.cancel()
        if self.counted:
            self.counted = False
            self.limits.open -= 1

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.limits.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.limits.buffer[:nbytes])

    def data_received(self, data) -> None:
        """`data`: bytes, or a memoryview of the read buffer (valid until this returns)."""
        if self.closing and not self.discarding:
            return
        self.last_active = self.loop.time()
        cap = self.limits.head_cap
        if self.in_body or len(data) <= cap:
            if not self._feed(data):
                return
        else:  # a large read holding a head: in slices, so no head grows past the cap unseen (limits.py)
            view, pos, end = data if isinstance(data, memoryview) else memoryview(data), 0, len(data)
            while pos < end:
                upto = end if self.in_body or self.discarding else pos + cap
                if not self._feed(view[pos:upto]):
                    return
                pos = upto
        # Timers only when a request straddles reads: the common case arms none.
        if self.in_header and self.header_timer is None and not self.closing:
            self.header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_expired)
        elif self.in_body and self.body_timer is None:
            self.body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_expired)

    def _feed(self, data) -> bool:
        """Parse `data`; False when the connection is done with reading."""
        if self.in_header:  # a head straddling reads: count its raw bytes
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.head_cap:
                self._refuse_head(self.limits.refusals[1])
                return False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._close_with(BAD_HTTP)
            return False
        except httptools.HttpParserError:
            if self.head_refusal is not None:
                self._refuse_head(self.head_refusal)
            elif not self.closing:
                self._close_with(BAD_HTTP)
            else:
                self.outbox.write(self.transport, b"", close=True)
            return False
        return not self.closing or bool(self.discarding)

    def _refuse_head(self, answer: bytes) -> None:
        self.in_header = False
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        self.url = b""
        self._close_with(answer)

    # -- httptools callbacks ---------------------------------------------
    def on_message_begin(self) -> None:
        self.in_header = True
        self.url, self.authorization, self.chunks, self.size, self.length = b"", b"", [], 0, -1
        self.expect = False
        self.head_bytes = self.header_bytes = self.header_fields = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.head.max_request_line:
            self.head_refusal = self.limits.refusals[0]
            raise HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_fields += 1
        self.header_bytes += len(name) + len(value) + 4
        head = self.limits.head
        if self.header_bytes > head.max_header_bytes or self.header_fields > head.max_header_fields:
            self.head_refusal = self.limits.refusals[1 if self.header_bytes > head.max_header_bytes else 2]
            raise HeadTooLarge
        if len(name) == 13 and name.lower() == b"authorization":
            self.authorization = value
        elif len(name) == 14 and name.lower() == b"content-length" and value.isdigit():
            self.length = int(value)
        elif len(name) == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self.expect = True

    def on_headers_complete(self) -> None:
        self.in_header, self.in_body = False, True
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        if self.length > self.routes.max_body:
            self._refuse_body()
        elif self.expect and not self.owed:  # curl waits a second for this before a large body
            self.outbox.write(self.transport, b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.discarding:
            self.discarding += len(body)
            if self.discarding > MAX_DISCARD:
                self.outbox.write(self.transport, b"", close=True)
            return
        self.size += len(body)
        if self.size > self.routes.max_body:
            self._refuse_body()
        else:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.in_body = False
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        if self.discarding:  # the 413 is written already
            self.outbox.write(self.transport, b"", close=True)
            return
        if self.closing:
            return
        parser = self.parser
        keep_alive = parser.should_keep_alive()
        http10 = parser.get_http_version() == "1.0"
        path = self.url.partition(b"?")[0].decode("latin-1")
        found = self.routes.find(parser.get_method(), path)
        slot = _Slot()
        slot.close = not keep_alive
        self.owed.append(slot)
        if not keep_alive:
            self.closing = True  # nothing after this request is read
        if isinstance(found, Answer):
            self._fill(slot, found, keep_alive, http10)
            return
        handler, deferred = found
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        request = Request(parser.get_method(), path, self.authorization, body)
        try:
            if not deferred:
                return self._fill(slot, handler(request), keep_alive, http10)
            slot.cancel = handler(request, lambda answer: self._fill(slot, answer, keep_alive, http10))
        except Refused as exc:
            return self._fill(slot, self.routes.refused(path, exc.status, exc.message, exc.headers), keep_alive, http10)
        except Exception:  # a bug: logged, answered as a 500 sentence
            log.exception("error while answering %s %s", request.method.decode(), path)
            return self._fill(slot, self.routes.refused(path, 500, "internal error (see the orchestrator's log)"),
                              keep_alive, http10)
        if slot.data is None and len(self.owed) >= MAX_PIPELINED and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    # -- answers -----------------------------------------------------------
    def _fill(self, slot: _Slot, answer: Answer, keep_alive: bool, http10: bool) -> None:
        """Write every answer that is ready at the head of the line (pipelining keeps order)."""
        slot.data = encode(answer, keep_alive, http10)
        slot.cancel = None  # no reference cycle (slot -> handler's state -> reply -> slot) left for the collector
        owed, transport = self.owed, self.transport
        while owed and owed[0].data is not None:
            done = owed.popleft()
            if transport.is_closing():
                continue
            self.outbox.write(transport, done.data, done.close)
            if done.close:
                owed.clear()
                return
        if self.paused and len(owed) < MAX_PIPELINED // 2:
            self.paused = False
            transport.resume_reading()
        if not owed:
            self.last_active = self.loop.time()  # idle from now

    def _refuse_body(self) -> None:
        """413 now, then read and drop the rest of the body before closing."""
        path = self.url.partition(b"?")[0].decode("latin-1")
        self.discarding = 1
        self.closing = True
        self.chunks = []
        self.outbox.write(self.transport, encode(self.routes.too_big(path), keep_alive=False))
        if self.body_timer is None:
            self.body_timer = self.loop.call_later(self.limits.body_timeout_s, self.transport.close)

    def _close_with(self, data: bytes) -> None:
        """Answer `data` and close, after the answers still owed; nothing more is read."""
        self.closing = True
        if not self.owed:
            self.outbox.write(self.transport, data, close=True)
            return
        last = _Slot()
        last.data, last.close = data, True
        self.owed.append(last)

    # -- timers ------------------------------------------------------------
    def _idle_expired(self) -> None:
        """Close a connection silent for idle_timeout_s with nothing in progress;
        otherwise look again when it could next be idle that long."""
        self.idle_timer = None
        if self.closing:
            return
        due = self.last_active + self.limits.idle_timeout_s
        now = self.loop.time()
        if not self.owed and not self.in_header and not self.in_body and now >= due:
            self.transport.close()
            return
        self.idle_timer = self.loop.call_later(max(due - now, 0.05) if now < due else self.limits.idle_timeout_s,
                                               self._idle_expired)

    def _header_expired(self) -> None:
        self.header_timer = None
        if self.in_header:
            self._close_with(HEADER_TOO_SLOW)

    def _body_expired(self) -> None:
        self.body_timer = None
        if self.in_body and not self.discarding:
            path = self.url.partition(b"?")[0].decode("latin-1")
            self._close_with(encode(self.routes.too_slow(path), keep_alive=False))


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM/SIGINT: pass one to several `serve` calls (a
    public and an admin listener) so both stop together."""
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    return stop


async def serve(routes: Routes, bind: str, *, header_timeout_s: float, body_timeout_s: float,
                idle_timeout_s: float, max_connections: int, stop: Optional[asyncio.Event] = None,
                head: HeadLimits = HeadLimits(), ssl_context: Optional[ssl.SSLContext] = None) -> None:
    """Serve `routes` on `bind` ("host:port") until `stop` is set (by default:
    SIGTERM/SIGINT); over TLS with `ssl_context`. The caller starts and stops the Orchestrator itself.
    Listeners sharing one Orchestrator may each have their own Routes (for
    example `Routes(state, admin=False)` on the public port and
    `Routes(state, public=False)` on the loopback admin one)."""
    soft = raise_open_files_limit()
    if max_connections > soft - FD_RESERVE:
        log.warning("ORCH_MAX_CONNECTIONS=%d is above what %d open files allow; using %d",
                    max_connections, soft, soft - FD_RESERVE)
        max_connections = max(1, soft - FD_RESERVE)
    limits = Limits(header_timeout_s, body_timeout_s, idle_timeout_s, max_connections, head)
    limits.refusals = head_refusals(head)
    loop = asyncio.get_running_loop()
    tls = dict(ssl=ssl_context, ssl_handshake_timeout=header_timeout_s) if ssl_context is not None else {}
    outbox = Outbox(loop)
    listener = await loop.create_server(lambda: Connection(routes, limits, loop, outbox), sock=listen(bind),
                                        backlog=4096, **tls)
    log.info("Listening at %s://%s (header time-out %gs, idle time-out %gs, at most %d connections%s)",
             "https" if ssl_context else "http", bind, header_timeout_s, idle_timeout_s, max_connections,
             "" if routes.admin and routes.public else ", no admin routes" if routes.public else ", admin routes only")
    if stop is None:
        stop = stop_on_signals()
    try:
        await stop.wait()
    finally:
        listener.close()
