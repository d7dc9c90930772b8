"""Which cluster a benchmark talks to, and the setup recorded beside its figures."""
from __future__ import annotations

import datetime
import platform
from pathlib import Path
from typing import Optional

import urllib3

import mlcluster

from .. import tls
from ..errors import MlclusterError
from ..state import ClusterState
from .wire import Access


def resolve_url(name: Optional[str], url: Optional[str]) -> tuple[str, Optional[ClusterState]]:
    """The orchestrator URL from `--url`, or from the named cluster's state
    (the `default` cluster when neither is given)."""
    if name and url:
        raise MlclusterError("give --name or --url, not both")
    if url:
        parsed = urllib3.util.parse_url(url) if url.startswith(("http://", "https://")) else None
        if parsed is None or not parsed.host:
            raise MlclusterError(f"--url {url!r} is not an http:// or https:// URL",
                                 "give the orchestrator's URL, like http://127.0.0.1:8000")
        return url.rstrip("/"), None
    name = name or "default"
    state = ClusterState.load(name)
    if not state.orchestrator_url:
        raise MlclusterError(f"the cluster {name!r} has no running orchestrator",
                             f"`mlcluster up --name {name}` starts it")
    return state.orchestrator_url.rstrip("/"), state


def access_of(state: Optional[ClusterState], api_key: str) -> Access:
    """The API key and, for a cluster that serves HTTPS, its pinned certificate."""
    if state is None or not state.tls_fingerprint:
        return Access(api_key=api_key)
    return Access(api_key, Path(state.tls_cert).read_text(), state.tls_fingerprint)


def pin(state: Optional[ClusterState]) -> dict:
    """The TLS pin of a cluster that serves HTTPS (mlcluster/tls.py): keywords for `Target`."""
    if state is None or not state.tls_fingerprint:
        return {}
    return {"ssl_context": tls.ssl_context(state.tls_cert), "fingerprint": state.tls_fingerprint}


def fetch_status(url: str, state: Optional[ClusterState], timeout_s: float = 5.0) -> dict:
    """The orchestrator's /status (over HTTPS pinned to the cluster's certificate); a clear error when nothing
    answers there."""
    pinned = pin(state)
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
                               **({"ssl_context": pinned["ssl_context"], "assert_fingerprint": pinned["fingerprint"]}
                                  if pinned else {}))
    try:
        response = http.request("GET", url + "/status")
    except urllib3.exceptions.SSLError:
        raise MlclusterError(f"the TLS certificate at {url} is not the one recorded for this cluster: refused",
                             "if it was replaced on purpose, run `mlcluster up` again to record it") from None
    except urllib3.exceptions.HTTPError:
        if state is not None:
            raise MlclusterError(f"the orchestrator of cluster {state.name!r} at {url} is not answering, "
                                 "so there is no running cluster to benchmark",
                                 f"`mlcluster up --name {state.name}` restarts what is missing") from None
        raise MlclusterError(f"nothing is answering at {url}",
                             "check the orchestrator's URL, or `mlcluster status`") from None
    finally:
        http.clear()
    if response.status != 200:
        raise MlclusterError(f"{url}/status answered HTTP {response.status}; is this an mlcluster orchestrator?")
    try:
        status = response.json()
    except ValueError:
        raise MlclusterError(f"{url}/status did not answer JSON; is this an mlcluster orchestrator?") from None
    if not isinstance(status, dict) or not isinstance(status.get("containers"), list):
        raise MlclusterError(f"{url}/status did not list containers; is this an mlcluster orchestrator?")
    return status


def describe_setup(url: str, state: Optional[ClusterState], status: dict, result, texts: str) -> dict:
    """What was measured, so a result can be compared later: the cluster, its
    containers, the model, the load and this tool's version and time."""
    spec = state.spec if state else None
    options = spec.provider_options if spec else {}
    config = result.config
    plans = config.plans()
    return {
        "cluster": state.name if state else None,
        "provider": state.provider if state else None,
        "runtime": state.runtime if state else None,
        "instance_types": _instance_types(options),
        "workers": spec.workers if spec else None,
        "containers_per_worker": spec.containers_per_worker if spec else None,
        "containers": [{k: c.get(k) for k in ("id", "host", "port", "capacity", "status")}
                       for c in status.get("containers", [])],
        "queue_limit": (status.get("queue") or {}).get("limit"),
        "model": result.model or (spec.model if spec else None),
        "orchestrator_url": url,
        "mode": config.mode,
        "concurrency": config.sweep or (config.concurrency if config.mode == "closed" else None),
        "rate": config.rate_sweep or config.rate,
        "arrivals": config.arrivals if config.mode == "open" else None,
        "requests": config.requests,
        "duration_s": plans[0].duration_s,
        "step_time_limit_s": (config.policy.time_limit_s
                              if config.is_sweep and not (config.requests or config.duration_s) else None),
        "knee_factor": config.knee_factor if config.is_sweep else None,
        "warmup": [config.warmup_for(p) for p in plans] if config.is_sweep else config.warmup_for(plans[0]),
        "texts": texts,
        "mlcluster_version": mlcluster.__version__,
        "time": datetime.datetime.fromtimestamp(result.started_at, datetime.timezone.utc).isoformat(timespec="seconds"),
        "client": {"host": platform.node(), "python": platform.python_version()},
    }


def _instance_types(options: dict) -> Optional[dict]:
    """Instance types named anywhere in the provider options (aws)."""
    found = {}
    for section, value in options.items():
        if isinstance(value, dict):
            found.update({f"{section}.{k}": v for k, v in value.items() if "instance_type" in k})
        elif "instance_type" in section:
            found[section] = value
    return found or None
