"""TLS for the public listener: a server context from a certificate and key
given by path (ORCH_TLS_CERT, ORCH_TLS_KEY) or inline, base64 of the PEM
(ORCH_TLS_CERT_B64, ORCH_TLS_KEY_B64: for a service on another host or in a
container, whose environment is already where its token lives, a 0600 file
or the container's config). TLS 1.2 at least; Python's default cipher choice
(forward-secret AEAD suites only)."""
from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from typing import Optional


def server_context(cert_path: str, key_path: str, cert_b64: str = "", key_b64: str = "") -> Optional[ssl.SSLContext]:
    """None when nothing is set (plain HTTP); a RuntimeError with one sentence
    when only half is, or when they cannot be loaded."""
    if cert_b64 or key_b64:
        if not (cert_b64 and key_b64) or cert_path or key_path:
            raise RuntimeError("give ORCH_TLS_CERT_B64 and ORCH_TLS_KEY_B64 together, and not with ORCH_TLS_CERT/KEY")
        return _inline_context(cert_b64, key_b64)
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


def _inline_context(cert_b64: str, key_b64: str) -> ssl.SSLContext:
    """ssl loads a key only from a file: written 0600 in a private directory, loaded, removed at once."""
    try:
        cert, key = base64.b64decode(cert_b64, validate=True), base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        raise RuntimeError("ORCH_TLS_CERT_B64 and ORCH_TLS_KEY_B64 must be base64 of PEM files") from None
    try:
        with tempfile.TemporaryDirectory(prefix="mlcluster-tls-") as folder:  # mode 0700
            paths = []
            for name, data in (("cert.pem", cert), ("key.pem", key)):
                path = os.path.join(folder, name)
                with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                    f.write(data)
                paths.append(path)
            return server_context(*paths)
    except (OSError, RuntimeError) as exc:
        raise RuntimeError(f"cannot load the TLS certificate and key given in ORCH_TLS_CERT_B64/KEY_B64 "
                           f"({type(exc).__name__})") from None
