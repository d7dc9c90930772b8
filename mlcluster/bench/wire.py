"""The bench's transport: one asyncio event loop (uvloop when installed) in a
background thread, one raw `asyncio.Protocol` per keep-alive connection,
requests pre-encoded to bytes, answers parsed by httptools.

Built to cost the client as little CPU as wrk-class load generators do, so
the bench does not slow what it measures: per request, one `write` of ready
bytes, one parser feed, and one tuple appended to the recorder (answers'
JSON is decoded after the run, see `stats.Recorder`). No futures, tasks or
timers per request: a closed-loop slot sends its next request from the
callback that completed the last one, and time-outs are found by one sweep
of the open connections a few times a second (as wrk does).
"""
from __future__ import annotations

import asyncio
import hashlib
import resource
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol
from urllib.parse import urlsplit

import httptools

from ..errors import MlclusterError

try:  # a faster event loop when installed (it is a dependency; the fallback keeps bare installs working)
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

now_ns = time.perf_counter_ns


class Owner(Protocol):
    """Who a connection answers to when its request completes (a `LoadRun`)."""

    def answered(self, conn: "Connection", slot: tuple, status: Optional[int], error: str, body: bytes) -> None: ...


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self, target: "Target"):
        self.target = target
        self.transport: Optional[asyncio.Transport] = None
        self.parser = httptools.HttpResponseParser(self)
        self.open = False
        self.owner: Optional[Owner] = None   # set while a request is in flight
        self.slot: tuple = ()                # the owner's bookkeeping for that request
        self.sent_ns = 0
        self.body = b""

    # -- asyncio callbacks ----------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport, self.open = transport, True
        self.target.connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.fail("connection")

    def connection_lost(self, exc) -> None:
        self.open = False
        self.target.connections.discard(self)
        if self.owner is not None:
            self._complete(None, "connection")

    # -- httptools callbacks --------------------------------------------------
    def on_body(self, body: bytes) -> None:
        self.body = self.body + body if self.body else body

    def on_message_complete(self) -> None:
        parser = self.parser
        if parser.get_status_code() < 200:  # an interim answer (100 Continue): the real one follows
            self.body = b""
            return
        if not parser.should_keep_alive():
            self.open = False
            self.transport.close()
        owner, slot, body = self.owner, self.slot, self.body  # _complete, inlined: once a request
        self.owner, self.body = None, b""
        owner.answered(self, slot, parser.get_status_code(), "", body)

    # -- used by the load -----------------------------------------------------
    def send(self, owner: Owner, slot: tuple, data: bytes, sent_ns: int) -> None:
        self.owner, self.slot, self.sent_ns = owner, slot, sent_ns
        self.transport.write(data)

    def fail(self, error: str) -> None:
        """End the request in flight with `error` and drop the connection."""
        self.open = False
        if self.transport is not None:
            self.transport.abort()
        if self.owner is not None:
            self._complete(None, error)

    def _complete(self, status: Optional[int], error: str) -> None:
        owner, slot, body = self.owner, self.slot, self.body
        self.owner, self.body = None, b""
        owner.answered(self, slot, status, error, body)


@dataclass(frozen=True)
class Access:
    """What a request needs besides the URL, in a form a load host can be sent:
    an API key, and a cluster's certificate over HTTPS (the only trust anchor;
    `fingerprint` its sha256, checked on every connection)."""
    api_key: str = ""
    cert_pem: str = ""
    fingerprint: str = ""

    def target_options(self) -> dict:
        """Keywords of `Target`."""
        options: dict = {"api_key": self.api_key}
        if self.cert_pem:
            context = ssl.create_default_context(cadata=self.cert_pem)
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a self-signed certificate is its own chain
            context.check_hostname = False  # pinned by content: a head's address is known only after it was made
            options.update(ssl_context=context, fingerprint=self.fingerprint)
        return options


class Target:
    """The orchestrator's /new_request: an event loop and a pool of idle
    keep-alive connections, kept across warm-up and measurement steps.
    `pool_size` is how many idle connections are kept for reuse."""

    def __init__(self, url: str, timeout_s: float = 60.0, pool_size: int = 64,
                 ssl_context: Optional[ssl.SSLContext] = None, fingerprint: str = "", api_key: str = ""):
        """Over https, `ssl_context` and `fingerprint` pin a cluster's certificate (mlcluster/tls.py);
        `api_key` goes in every request's Authorization header."""
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MlclusterError(f"{url!r} is not an http(s) URL")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self.fingerprint, self.api_key = fingerprint, api_key
        self.path = parts.path.rstrip("/") + "/new_request"
        self.timeout_s, self.pool_size = timeout_s, pool_size
        self.connections: set[Connection] = set()   # open ones (the time-out sweep's)
        self.idle: list[Connection] = []
        self.closing = False  # once close() has stopped the loop: a run sends nothing new, its slots just end
        self.compiled = None  # the compiled engine, once a closed loop has used it (see engine.engine_for)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        _raise_open_files_limit()

    def encode(self, bodies) -> list[bytes]:
        """Each body as the whole request's bytes, ready to write."""
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                + (f"Authorization: Bearer {self.api_key}\r\n" if self.api_key else "")
                + "Content-Type: application/json\r\nContent-Length: ").encode()
        return [head + b"%d\r\n\r\n" % len(body) + body for body in bodies]

    # -- the loop ---------------------------------------------------------------
    def call(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the loop (from any thread), starting the loop first."""
        if self._loop is None:
            self._loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._run, name="bench-loop", daemon=True)
            self._thread.start()
        self._loop.call_soon_threadsafe(callback)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._sweep)
        self._loop.run_forever()
        self.closing = True
        for conn in list(self.connections):
            conn.transport.abort()
        self._loop.run_until_complete(asyncio.sleep(0))  # let the aborts run their callbacks
        self._loop.close()

    def _sweep(self) -> None:
        """Fail every request in flight for longer than the time-out."""
        limit = now_ns() - int(self.timeout_s * 1e9)
        for conn in [c for c in self.connections if c.owner is not None and c.sent_ns < limit]:
            conn.fail("timeout")
        self._loop.call_later(min(0.25, self.timeout_s / 4), self._sweep)

    # -- connections (called on the loop) -------------------------------------
    def take(self) -> Optional[Connection]:
        """An idle open connection, or None."""
        while self.idle:
            conn = self.idle.pop()
            if conn.open:
                return conn
        return None

    def give_back(self, conn: Optional[Connection]) -> None:
        if conn is not None and conn.open and conn.owner is None:
            if len(self.idle) < self.pool_size:
                self.idle.append(conn)
            else:
                conn.transport.close()

    async def connect(self) -> Connection:
        """A new connection; raises OSError or TimeoutError."""
        _, conn = await asyncio.wait_for(
            self._loop.create_connection(lambda: Connection(self), self.host, self.port, ssl=self.ssl),
            timeout=min(5.0, self.timeout_s))
        if self.fingerprint:  # the pin: exactly the cluster's certificate
            der = conn.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
            if hashlib.sha256(der).hexdigest() != self.fingerprint:
                conn.transport.abort()
                raise ssl.SSLError(f"the certificate of {self.url} is not the cluster's (its fingerprint changed)")
        return conn

    def close(self) -> None:
        if self.compiled is not None:  # ends its run, if one goes, and closes its connections
            self.compiled.close()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def _raise_open_files_limit() -> None:
    """Up to the hard limit: a wide open loop may hold many connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
