"""TLS for the public listener: a server context from a certificate and key
given by path (ORCH_TLS_CERT, ORCH_TLS_KEY). TLS 1.2 at least; Python's
default cipher choice (forward-secret AEAD suites only)."""
from __future__ import annotations

import ssl
from typing import Optional


def server_context(cert_path: str, key_path: str) -> Optional[ssl.SSLContext]:
    """None when neither is set (plain HTTP); a RuntimeError with one sentence
    when only one is, or when they cannot be loaded."""
    if not cert_path and not key_path:
        return None
    if not (cert_path and key_path):
        raise RuntimeError("ORCH_TLS_CERT and ORCH_TLS_KEY must be given together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise RuntimeError(f"cannot load the TLS certificate {cert_path!r} and key {key_path!r}: {exc}") from None
    return context
