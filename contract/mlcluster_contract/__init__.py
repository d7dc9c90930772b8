"""The contract between the CLI and the two images, defined once and imported
by both sides: the backend names, the default model, and each service's
environment variables with their defaults.

Standard library only (no torch, nothing to install): `mlcluster.images` copies
this package into both image build contexts (the Dockerfiles put it in /app),
and the SSH process runtime uploads it beside the services' code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

BACKENDS = ("torch", "onnx", "onnx-int8")  # what a worker serves a model with
DEFAULT_MODEL = "distilbert-base-uncased"  # the lab's model (a hub id)
OVERHEAD_TEST = "overhead-test"  # MODEL for no model at all: answers after SERVICE_TIME_MS


@dataclass(frozen=True)
class Batching:
    """How many requests share a forward pass, and how long the first waits."""
    max_requests: int
    wait_ms: float


# Measured with benchmarks/inference.py (DistilBERT-base, one thread, random
# 50-character texts): torch fp32 and ONNX fp32 gain from batches; ONNX int8
# does not on our CPUs, so it keeps the lab's one-at-a-time.
BATCH_DEFAULTS = {
    "torch": Batching(8, 10.0),
    "onnx": Batching(8, 10.0),
    "onnx-int8": Batching(1, 0.0),
    OVERHEAD_TEST: Batching(1, 0.0),
}

# The worker's settings: environment variable -> default (a value's type is its
# default's). The meaning of each is in mlcluster_worker/config.py.
WORKER_DEFAULTS: Mapping[str, object] = {
    "MODEL": DEFAULT_MODEL,
    "BACKEND": "",
    "THREADS": 0,
    "TORCH_THREADS": 1,
    "SERVICE_TIME_MS": 50.0,  # only for MODEL=overhead-test
    "MAX_BATCH": 64,  # texts in one request's "texts"
    "BATCH_MAX": 0,
    "BATCH_WAIT_MS": -1.0,
    "MAX_TEXT_CHARS": 100_000,
    "ECHO_CHARS": 200,
    "MAX_BODY_BYTES": 1 << 20,
    "WORKER_ID": "",
    "WORKER_TOKEN": "",
    "SIGNATURE_WINDOW_S": 300.0,
}

# The orchestrator's settings, the same way (meanings in mlcluster_orchestrator/settings.py).
ORCHESTRATOR_DEFAULTS: Mapping[str, object] = {
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

# Read by both services (gunicorn_conf, the orchestrator's __main__), outside their settings.
BIND = "BIND"  # host:port a service listens on
LOG_LEVEL = "LOG_LEVEL"


def settings_from_env(defaults: Mapping[str, object], env: Mapping[str, str]) -> dict:
    """`defaults`, with every non-empty variable of `env` it names, converted
    to its default's type; RuntimeError (one sentence) for a value that is not."""
    settings = dict(defaults)
    for key, default in defaults.items():
        if env.get(key, "") != "":
            try:
                settings[key] = type(default)(env[key])
            except ValueError:
                raise RuntimeError(f"{key}={env[key]!r} is not a valid {type(default).__name__}") from None
    return settings


def env_vars(defaults: Mapping[str, object], **values: object) -> dict[str, str]:
    """The environment that sets `values` (names of `defaults`, as the service
    reads them); a name the service does not read is a ValueError, so the CLI
    can never set a variable nobody reads."""
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f"not a setting of this service: {', '.join(unknown)}")
    return {key: str(value) for key, value in values.items()}
