"""How to start the two services (worker, orchestrator) as plain processes.

One place for the command lines and environment variables, used by the local
provider, the process runtime over SSH and the tests. The services themselves
live in `worker_image/` and `orchestrator_image/`.
"""
from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Callable, Mapping, Optional

from mlcluster_contract import BIND, ORCHESTRATOR_DEFAULTS, WORKER_DEFAULTS, env_vars

if TYPE_CHECKING:
    from .state import ClusterSpec, ClusterState

WORKER_APP = "mlcluster_worker.app:create_app()"
# Every process we start carries this variable; `down` finds strays by it
# (never by name patterns, which could hit other programs).
MARKER_VAR = "MLCLUSTER_MARKER"
# What a service takes from the caller's environment: how to find programs, its
# home, the locale. A worker also gets how to reach and cache a model hub
# (proxies, CA bundles, the Hugging Face settings). Nothing else: the caller's
# cloud credentials and other secrets never reach a service.
PASSED_VARS = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
WORKER_PASSED_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
                      "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HF_HOME", "HF_HUB_CACHE",
                      "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN", "TRANSFORMERS_OFFLINE")


def worker_command(python: str = sys.executable) -> list[str]:
    return [python, "-m", "gunicorn", "-c", "python:mlcluster_worker.gunicorn_conf", WORKER_APP]


def orchestrator_command(python: str = sys.executable) -> list[str]:
    return [python, "-m", "mlcluster_orchestrator"]  # httptools on one event loop; settings from orchestrator_env


def process_env(own: Mapping[str, str], kind: str, caller: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The whole environment of a `kind` (worker | orchestrator) process: the
    few variables it may take from `caller` (PASSED_VARS, and for a worker
    WORKER_PASSED_VARS), then its own settings `own`."""
    passed = PASSED_VARS + (WORKER_PASSED_VARS if kind == "worker" else ())
    return {**{k: caller[k] for k in passed if k in caller}, **own}


def worker_env(*, model: str, port: int, token: str, host: str = "127.0.0.1", torch_threads: int = 1,
               worker_id: str = "", service_ms: Optional[float] = None, marker: str = "", backend: str = "",
               batch_max: int = 0, batch_wait_ms: float = -1.0) -> dict[str, str]:
    """Environment for one worker container. `model` is a hub id, a local
    directory (for an ONNX backend: one made by `prepare_model`), or
    `overhead-test` (no model: answers after `service_ms`). `token` is the
    credential /run_model's signatures are checked with (the cluster's worker token)."""
    # The worker's own settings (names and defaults: mlcluster_contract.WORKER_DEFAULTS) ...
    optional = {"BATCH_MAX": batch_max if batch_max > 0 else None,
                "BATCH_WAIT_MS": batch_wait_ms if batch_wait_ms >= 0 else None, "SERVICE_TIME_MS": service_ms}
    env = env_vars(WORKER_DEFAULTS, MODEL=model, WORKER_TOKEN=token, BACKEND=backend, THREADS=torch_threads,
                   TORCH_THREADS=torch_threads, WORKER_ID=worker_id,
                   **{key: value for key, value in optional.items() if value is not None})
    # ... then where it listens, and its libraries' settings.
    env.update({BIND: f"{host}:{port}", "OMP_NUM_THREADS": str(torch_threads), "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1"})  # no progress bars in the logs
    if marker:
        env[MARKER_VAR] = marker
    return env


def cluster_worker_settings(spec: "ClusterSpec", state: "ClusterState") -> dict:
    """The worker_env keywords every container of a cluster shares: its
    credential, backend and batching (the same for every provider)."""
    return {"token": state.worker_token, "backend": spec.backend, "batch_max": spec.batch_max,
            "batch_wait_ms": spec.batch_wait_ms}


def orchestrator_env(*, port: int, token: str, host: str = "127.0.0.1", queue_limit: int = 100,
                     queue_timeout_s: float = 30.0, status_file: str = "", health_interval_s: float = 1.0,
                     marker: str = "", worker_token: str = "", admin_bind: str = "") -> dict[str, str]:
    """Environment for the orchestrator. `worker_token`, when set, signs
    every /run_model (mlcluster_orchestrator/signing.py); it is never sent. `admin_bind`
    ("127.0.0.1:PORT"; in a container "0.0.0.0:PORT", published on the host's
    loopback only) is where the admin endpoints are served, and then only there."""
    admin = {"ORCH_ADMIN_BIND": admin_bind} if admin_bind else {}
    env = {BIND: f"{host}:{port}",  # names and defaults of the rest: mlcluster_contract.ORCHESTRATOR_DEFAULTS
           **env_vars(ORCHESTRATOR_DEFAULTS, ORCH_TOKEN=token, ORCH_WORKER_TOKEN=worker_token,
                      ORCH_QUEUE_LIMIT=queue_limit, ORCH_QUEUE_TIMEOUT_S=queue_timeout_s,
                      ORCH_STATUS_FILE=status_file, ORCH_HEALTH_INTERVAL_S=health_interval_s, **admin)}
    if marker:
        env[MARKER_VAR] = marker
    return env


def wait_answering(url: str, *, what: str, timeout: float = 60.0, running: Callable[[], bool] = lambda: True,
                   log_tail: Optional[Callable[[], str]] = None, hint: str = "", session=None) -> None:
    """Wait until `url`/health_check answers 200. Give up early when
    `running()` says the service is gone; the error shows the end of its log
    when `log_tail` can read it (a local service), else why it did not answer."""
    import requests

    from .errors import MlclusterError

    deadline = time.monotonic() + timeout
    why = "no answer yet"
    while time.monotonic() < deadline:
        try:
            if (session or requests).get(f"{url}/health_check", timeout=2).ok:  # session: a pinned one over HTTPS
                return
            why = "it answered with an error"
        except requests.RequestException as exc:
            why = type(exc).__name__
        if not running():
            break
        time.sleep(0.2)
    if log_tail is not None:
        raise MlclusterError(f"{what} did not answer at {url}; the end of its log:\n{log_tail()}", hint)
    raise MlclusterError(f"{what} does not answer at {url} after {timeout:.0f} s ({why})", hint)
