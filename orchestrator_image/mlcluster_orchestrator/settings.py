"""The orchestrator's settings, from the environment (DEFAULTS below), checked
at start so that a bad value fails with one sentence (exit 2), never later."""
from __future__ import annotations

import os

DEFAULTS = {
    "ORCH_TOKEN": "",
    "ORCH_ADMIN_BIND": "",  # host:port of the admin listener ("": admin endpoints on the public one)
    "ORCH_WORKER_TOKEN": "",  # signs every /run_model (signing.py); never sent, never logged
    "ORCH_QUEUE_LIMIT": 100,
    "ORCH_QUEUE_TIMEOUT_S": 30.0,
    "ORCH_FORWARD_TIMEOUT_S": 30.0,
    "ORCH_MAX_ATTEMPTS": 3,
    "ORCH_HEALTH_INTERVAL_S": 1.0,
    "ORCH_STATUS_FILE": "",
    "ORCH_MAX_BODY_BYTES": 1 << 20,
    "ORCH_MAX_TEXTS": 64,  # texts per request, as the worker's MAX_BATCH
    "ORCH_LAB_PORTS": "5000,5001",  # what /receive_ips_from_workers assumes per IP
    "ORCH_HEADER_TIMEOUT_S": 10.0,  # a request's header must arrive within this
    "ORCH_BODY_TIMEOUT_S": 30.0,  # ... and its body within this after the header
    "ORCH_IDLE_TIMEOUT_S": 30.0,  # a kept-alive connection idle this long is closed
    "ORCH_MAX_CONNECTIONS": 10000,  # open connections beyond this are answered 503 and closed
    "ORCH_MAX_REQUEST_LINE": 8192,  # bytes of a request target (414 beyond)
    "ORCH_MAX_HEADER_BYTES": 16384,  # bytes of a request's header block (431 beyond)
    "ORCH_MAX_HEADER_FIELDS": 100,  # fields of a request's header block (431 beyond)
    "ORCH_TLS_CERT": "",  # with ORCH_TLS_KEY: paths of the public listener's certificate (PEM) and key (HTTPS)
    "ORCH_TLS_KEY": "",
    "ORCH_TLS_CERT_B64": "",  # or both inline, base64 of the PEM (for a service on another host or in a container)
    "ORCH_TLS_KEY_B64": "",
    "ORCH_API_KEYS": "",  # "id:sha256hex,...": with one or more, /new_request and /workers_info need a key
}


def settings_from_env(env=os.environ) -> dict:
    settings = dict(DEFAULTS)
    for key, default in DEFAULTS.items():
        if env.get(key, "") != "":
            try:
                settings[key] = type(default)(env[key])
            except ValueError:
                raise RuntimeError(f"{key}={env[key]!r} is not a valid {type(default).__name__}") from None
    return settings


def lab_ports(value: str) -> list[int]:
    """ORCH_LAB_PORTS ("5000,5001"): the ports each lab worker IP serves on."""
    try:
        ports = [int(p) for p in str(value).split(",")]
    except ValueError:
        ports = []
    if not ports or not all(0 < p < 65536 for p in ports):
        raise RuntimeError(f"ORCH_LAB_PORTS={value!r} must be a comma-separated list of ports")
    return ports


def admin_bind(value: str) -> str:
    """ORCH_ADMIN_BIND: "" (admin endpoints on the public listener) or host:port."""
    host, _, port = value.rpartition(":")
    if value and not (host and port.isdigit() and 0 < int(port) < 65536):
        raise RuntimeError(f"ORCH_ADMIN_BIND={value!r} must be host:port, such as 127.0.0.1:8001")
    return value
