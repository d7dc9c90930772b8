"""Signing each /run_model request with the worker credential, which itself
never crosses the network (the workers' side: mlcluster_worker/auth.py).

    X-Mlcluster-Signature: t=<unix seconds>,n=<32 hex digits>,s=<64 hex digits>

    s = hex(HMAC-SHA256(key=token as UTF-8, msg=f"{t}\\n{n}\\n".encode() + body))

`t` is this host's clock (workers accept ±SIGNATURE_WINDOW_S, 300 s by
default), `n` a fresh random nonce per request (a worker refuses one it has
seen), `body` the exact body bytes sent. Every attempt at a request, also a
retry on another container, is signed anew.
"""
from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import time

HEADER = b"X-Mlcluster-Signature"


class Signer:
    """`line(body)`: the whole header line (ending in CRLF) for one request.
    The keyed HMAC state is made once; each request costs a copy of it."""
    __slots__ = ("_key",)

    def __init__(self, token: str):
        self._key = hmac.new(token.encode(), digestmod=hashlib.sha256)

    def line(self, body: bytes) -> bytes:
        t = int(time.time())
        nonce = binascii.hexlify(os.urandom(16))
        mac = self._key.copy()
        mac.update(b"%d\n%b\n" % (t, nonce))
        mac.update(body)
        return b"%b: t=%d,n=%b,s=%b\r\n" % (HEADER, t, nonce, mac.hexdigest().encode())
