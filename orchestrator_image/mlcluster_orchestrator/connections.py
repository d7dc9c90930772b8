"""Kept-alive HTTP connections to the worker containers.

A thin layer over `http.client`: every forwarded request is one POST to a
container on loopback or a private network, so a general HTTP client's
per-request machinery (retry policies, header objects, pool managers) is pure
overhead on the orchestrator's hottest path. What is kept: reuse of idle
connections per address, a check that an idle connection was not closed by
the worker meanwhile, separate connect and read time-outs, and failures sorted
into kinds the dispatcher can act on.
"""
from __future__ import annotations

import collections
import http.client
import select
import socket
import threading
import time
from typing import Deque

# Workers close idle kept-alive connections after 30 s (their gunicorn
# keepalive); ours retire sooner so a request never races that close.
MAX_IDLE_S = 20.0


class ForwardError(Exception):
    """The container did not answer. `kind`: refused (nothing accepted the
    connection), timeout (connect or answer too slow) or disconnected (the
    connection broke before a whole answer came back)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


def _dropped(sock: socket.socket) -> bool:
    """An idle connection is unusable when it became readable: the peer closed
    it (or sent something unasked). poll, not select: no limit on fd numbers."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class ConnectionPool:
    """Idle connections by (host, port), shared by all request threads."""

    def __init__(self, connect_timeout_s: float, read_timeout_s: float, max_idle_per_address: int = 16):
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_idle = max_idle_per_address
        self._idle: dict[tuple[str, int], Deque[tuple[float, http.client.HTTPConnection]]] = \
            collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def post(self, host: str, port: int, path: str, body: bytes) -> tuple[int, bytes]:
        """POST `body` (JSON) and return the answer's status and body, or raise ForwardError."""
        conn = self._take((host, port))
        try:
            if conn.sock is None:
                conn.connect()
                conn.sock.settimeout(self.read_timeout_s)
            conn.request("POST", path, body=body,
                         headers={"Content-Type": "application/json", "Content-Length": str(len(body))})
            response = conn.getresponse()
            data = response.read()
        except ConnectionRefusedError as exc:
            conn.close()
            raise ForwardError("refused", f"connection refused ({exc.strerror})") from None
        except (socket.timeout, TimeoutError):
            conn.close()
            raise ForwardError("timeout", "no answer in time") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ForwardError("disconnected", f"connection broke: {type(exc).__name__}: {exc}") from None
        if response.will_close:
            conn.close()
        else:
            self._give_back((host, port), conn)
        return response.status, data

    def _take(self, address: tuple[str, int]) -> http.client.HTTPConnection:
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(address)
                if not idle:
                    break
                since, conn = idle.pop()  # the most recently used: the least likely to be stale
            if now - since < MAX_IDLE_S and not _dropped(conn.sock):
                return conn
            conn.close()
        return http.client.HTTPConnection(address[0], address[1], timeout=self.connect_timeout_s)

    def _give_back(self, address: tuple[str, int], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle[address]
            if len(idle) < self.max_idle:
                idle.append((time.monotonic(), conn))
                return
        conn.close()

    def forget(self, address: tuple[str, int]) -> None:
        """Close the idle connections to an address (a container that failed or left)."""
        with self._lock:
            idle = self._idle.pop(address, None) or ()
        for _, conn in idle:
            conn.close()
