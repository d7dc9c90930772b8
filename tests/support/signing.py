"""Signing a /run_model request as the orchestrator does, written from the
format documented in mlcluster_worker/auth.py (not by importing either side,
so a test also checks that the two agree with the documentation)."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER = "X-Mlcluster-Signature"


def sign(token: str, body: bytes, t: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """The header that makes `body` a signed request (fresh nonce, now, unless given)."""
    t = int(time.time()) if t is None else t
    nonce = secrets.token_hex(16) if nonce is None else nonce
    mac = hmac.new(token.encode(), f"{t}\n{nonce}\n".encode() + body, hashlib.sha256).hexdigest()
    return {HEADER: f"t={t},n={nonce},s={mac}"}
