"""What one connection may make the orchestrator hold, and how many connections
may be open: the bounds fastserver.py enforces.

A request's head is bounded as nginx (`large_client_header_buffers`) and
HAProxy (`tune.bufsize`) bound it: a request target over `max_request_line`
bytes is a 414, a header block over `max_header_bytes` or with more than
`max_header_fields` fields is a 431, each answered as soon as the limit is
passed, then the connection closes. httptools keeps a header field that
straddles two reads in its own buffer until the field ends, so the raw bytes
read while a head is in progress are counted too (`head_cap`), and a read
larger than that is fed in slices of it: what one connection holds of a head
stays under 2 x head_cap (about 50 KB with the defaults) whatever it sends,
and the whole is bounded by `max_connections` times that.
"""
from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

log = logging.getLogger("mlcluster.orchestrator")
FD_RESERVE = 256  # descriptors kept for connections to workers, the status file, logs
READ_BUFFER = 64 << 10  # bytes of one read, shared by a listener's connections
HEAD_SLACK = 1024  # the method, the version, the CRLFs around the two limits


class HeadTooLarge(Exception):
    """Raised from a parser callback: the answer is `Connection.head_refusal`."""


@dataclass(frozen=True, slots=True)
class HeadLimits:
    max_request_line: int = 8192  # bytes of the request target (414 beyond)
    max_header_bytes: int = 16384  # bytes of the header fields, names, values and CRLFs (431 beyond)
    max_header_fields: int = 100  # header fields (431 beyond)

    def __post_init__(self) -> None:
        for name in ("max_request_line", "max_header_bytes", "max_header_fields"):
            if getattr(self, name) < 1:
                raise RuntimeError(f"{name} must be at least 1")

    @property
    def head_cap(self) -> int:
        """Raw bytes of one head past which it is refused whatever the callbacks saw."""
        return self.max_request_line + self.max_header_bytes + HEAD_SLACK


class Limits:
    """The limits every connection of one listener shares, and how many are open."""
    __slots__ = ("header_timeout_s", "body_timeout_s", "idle_timeout_s", "max_connections", "open", "refused",
                 "head", "head_cap", "refusals", "buffer")

    def __init__(self, header_timeout_s: float, body_timeout_s: float, idle_timeout_s: float, max_connections: int,
                 head: HeadLimits = HeadLimits()):
        self.header_timeout_s, self.body_timeout_s = header_timeout_s, body_timeout_s
        self.idle_timeout_s, self.max_connections = idle_timeout_s, max_connections
        self.open = self.refused = 0
        self.head, self.head_cap = head, head.head_cap
        self.refusals: tuple[bytes, ...] = ()  # the encoded 414 and 431s (fastserver.head_refusals)
        self.buffer = memoryview(bytearray(READ_BUFFER))  # every connection's reads land here (fastserver.Connection)


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
