"""Many connections sending header bytes without end, and what the server's
process holds meanwhile (VmRSS from /proc/PID/status)."""
from __future__ import annotations

import selectors
import socket
import threading
import time


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class PeakRss:
    """Samples a process's RSS on a thread until stopped; `peak` is the largest seen."""

    def __init__(self, pid: int, interval_s: float = 0.01):
        self.pid, self.interval_s = pid, interval_s
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def header_flood(port: int, connections: int, per_connection: int, time_limit_s: float) -> dict:
    """Open `connections` to 127.0.0.1:`port`; each sends a request line and
    then up to `per_connection` bytes of header (half as one endless field,
    half as many small fields), as fast as the server takes them. Returns how
    many connections the server answered or closed, and the bytes sent."""
    sel = selectors.DefaultSelector()
    socks = []
    filler_one = b"X-Fill: " + b"a" * 65536  # a field that never ends
    filler_many = b"X-F: bbbbbbbbbbbbbbbbbbbbbbbb\r\n" * 2048
    try:
        for i in range(connections):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setblocking(False)
            s.send(b"GET /health_check HTTP/1.1\r\nHost: flood\r\n")
            socks.append(s)
            sel.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ,
                         {"sent": 0, "chunk": filler_one if i % 2 else filler_many, "answer": b""})
        sent = ended = 0
        deadline = time.monotonic() + time_limit_s
        while sel.get_map() and time.monotonic() < deadline:
            for key, events in sel.select(timeout=0.1):
                s, state = key.fileobj, key.data
                done = False
                try:
                    if events & selectors.EVENT_READ:
                        data = s.recv(65536)
                        state["answer"] += data
                        done = not data
                    if not done and events & selectors.EVENT_WRITE:
                        chunk = state["chunk"]
                        n = s.send(chunk[: per_connection - state["sent"]])
                        state["sent"] += n
                        sent += n
                        done = state["sent"] >= per_connection
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:  # reset or broken pipe: the server closed it
                    done = True
                if done:
                    sel.unregister(s)
                    ended += 1
        return {"sent": sent, "ended": ended, "open": len(sel.get_map())}
    finally:
        sel.close()
        for s in socks:
            s.close()
