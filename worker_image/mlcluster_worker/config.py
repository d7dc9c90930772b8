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

Defaults: mlcluster_contract.WORKER_DEFAULTS.
"""
from __future__ import annotations

import os

import mlcluster_contract as contract
from mlcluster_contract import BACKENDS, BATCH_DEFAULTS, OVERHEAD_TEST, Batching

from .export import read_manifest

# The variables and their defaults (contract.WORKER_DEFAULTS) and the backends'
# batching (BATCH_DEFAULTS) are the contract the CLI shares: mlcluster_contract.

# A token is rarely more than a few characters of text: cutting at this many
# characters per token the model reads keeps the tokenizer's cost bounded
# (1 MB costs ~2 s) without changing what the model sees for ordinary text.
CHARS_PER_TOKEN = 16


def settings_from_env(env=os.environ) -> dict:
    return contract.settings_from_env(contract.WORKER_DEFAULTS, env)


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
