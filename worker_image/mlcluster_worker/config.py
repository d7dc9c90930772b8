"""The worker's settings, from the environment (read by the app and by gunicorn_conf).

    MODEL            a model directory, a hub id, or overhead-test
    BACKEND          torch | onnx | onnx-int8; empty: the backend a prepared
                     directory's manifest names (export.prepare_model), else torch
    THREADS          threads of the forward pass (0: TORCH_THREADS, kept for old callers)
    BATCH_MAX        requests one forward pass takes at most: the capacity the
                     orchestrator may use (0: the backend's default, below)
    BATCH_WAIT_MS    how long the oldest waiting request waits for the batch to
                     fill (negative: the backend's default)
    MAX_TEXT_CHARS   a text over this many characters is refused (413)
    ECHO_CHARS       answers echo at most this many characters of each text
    WORKER_TOKEN     when set, /run_model requires the orchestrator's signature made
                     with it (auth.py); the token itself is never sent
    SIGNATURE_WINDOW_S  a signature's timestamp may be this far off our clock
    MAX_BATCH, MAX_BODY_BYTES, WORKER_ID, SERVICE_TIME_MS, GUNICORN_THREADS: as before
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .export import BACKENDS, read_manifest

OVERHEAD_TEST = "overhead-test"  # MODEL for no model at all: answers after SERVICE_TIME_MS

DEFAULTS = {
    "MODEL": "distilbert-base-uncased",
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
# A token is rarely more than a few characters of text: cutting at this many
# characters per token the model reads keeps the tokenizer's cost bounded
# (1 MB costs ~2 s) without changing what the model sees for ordinary text.
CHARS_PER_TOKEN = 16


def settings_from_env(env=os.environ) -> dict:
    settings = dict(DEFAULTS)
    for key, default in DEFAULTS.items():
        if key in env and env[key] != "":
            try:
                settings[key] = type(default)(env[key])
            except ValueError:
                raise RuntimeError(f"{key}={env[key]!r} is not a valid {type(default).__name__}") from None
    return settings


def resolve_backend(settings: dict) -> str:
    """The backend to serve with; RuntimeError for an unknown one."""
    if settings["MODEL"] == OVERHEAD_TEST:
        return OVERHEAD_TEST
    backend = settings["BACKEND"]
    if not backend:
        try:
            manifest = read_manifest(os.path.expanduser(settings["MODEL"]))
        except (OSError, ValueError):
            manifest = None
        backend = manifest["backend"] if manifest else "torch"
    if backend not in BACKENDS:
        raise RuntimeError(f"BACKEND={backend!r}: expected one of {', '.join(BACKENDS)}")
    return backend


def resolve_batching(settings: dict, backend: str) -> Batching:
    default = BATCH_DEFAULTS[backend]
    return Batching(settings["BATCH_MAX"] if settings["BATCH_MAX"] > 0 else default.max_requests,
                    settings["BATCH_WAIT_MS"] if settings["BATCH_WAIT_MS"] >= 0 else default.wait_ms)


def threads(settings: dict) -> int:
    return settings["THREADS"] if settings["THREADS"] > 0 else settings["TORCH_THREADS"]
