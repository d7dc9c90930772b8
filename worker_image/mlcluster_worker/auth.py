"""Checking the orchestrator's signature on /run_model.

The worker credential (WORKER_TOKEN) never crosses the network: the
orchestrator signs each request with it instead, in one header:

    X-Mlcluster-Signature: t=<unix seconds>,n=<32 hex digits>,s=<64 hex digits>

    s = hex(HMAC-SHA256(key=token as UTF-8, msg=f"{t}\\n{n}\\n".encode() + body))

`t` is the orchestrator's clock when it signed, `n` a random nonce used once,
`body` the exact request body bytes. A request is accepted when `t` is within
`window_s` of this worker's clock, `s` matches (compared in constant time), and
`n` was not seen before within the window: a captured request can be replayed
neither later nor sooner. The orchestrator's side is
mlcluster_orchestrator/signing.py.
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import re
import threading
import time
from typing import Callable, Deque, Optional

HEADER = "X-Mlcluster-Signature"
_FORMAT = re.compile(r"t=(\d{1,12}),n=([0-9a-f]{32}),s=([0-9a-f]{64})")


class Verifier:
    """`check(header, body)` -> None when the request is signed with our
    token, else the sentence saying why not. Thread-safe (gunicorn threads).

    Seen nonces are kept until their timestamp leaves the window, at most
    `max_nonces` of them: past that the oldest is forgotten and requests
    signed no later than its timestamp are refused, so a forgotten nonce can
    never be replayed (only a worker taking over max_nonces / (2 * window_s)
    requests a second would ever see that)."""

    def __init__(self, token: str, window_s: float = 300.0, max_nonces: int = 200_000,
                 clock: Callable[[], float] = time.time):
        self._key = hmac.new(token.encode(), digestmod=hashlib.sha256)
        self.window_s, self.max_nonces, self.clock = window_s, max_nonces, clock
        self._seen: set[str] = set()
        self._order: Deque[tuple[float, int, str]] = collections.deque()  # (forget at, t, nonce), by arrival
        self._floor = -1  # requests signed at or before this second are refused (see above)
        self._lock = threading.Lock()

    def check(self, header: Optional[str], body: bytes) -> Optional[str]:
        if not header:
            return f"this worker only serves requests signed by its orchestrator (no {HEADER} header)"
        found = _FORMAT.fullmatch(header.strip())
        if found is None:
            return f"the {HEADER} header is malformed; expected t=<unix seconds>,n=<32 hex>,s=<64 hex>"
        t, nonce, given = int(found[1]), found[2], found[3]
        now = self.clock()
        if abs(now - t) > self.window_s:
            return (f"the signature's timestamp is {now - t:+.0f} s off this worker's clock (at most "
                    f"{self.window_s:g} s): clock skew, or a replayed request")
        mac = self._key.copy()
        mac.update(b"%d\n%s\n" % (t, nonce.encode()))
        mac.update(body)
        if not hmac.compare_digest(mac.hexdigest(), given):
            return "the signature does not match: the orchestrator signs with another worker credential"
        with self._lock:
            self._forget(now)
            if nonce in self._seen or t <= self._floor:
                return "this signed request was already served once (a replay)"
            self._seen.add(nonce)
            self._order.append((t + self.window_s, t, nonce))
        return None

    def _forget(self, now: float) -> None:
        order = self._order
        while order and (order[0][0] < now or len(order) >= self.max_nonces):
            forget_at, t, nonce = order.popleft()
            self._seen.discard(nonce)
            if forget_at >= now:  # forgotten for room, not for age
                self._floor = max(self._floor, t)
