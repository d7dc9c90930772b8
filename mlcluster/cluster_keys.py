"""The library of `mlcluster keys`: a running cluster's API keys created, listed and revoked.
Each change is made on the running orchestrator first, through the admin channel (a key works
or stops working at once, no restart), then recorded in the state; when no orchestrator runs,
the state alone changes and `up` hands the keys over at start (apikeys.py says how)."""
from __future__ import annotations

import time

import requests

from . import apikeys
from .errors import MlclusterError
from .providers import get_provider
from .state import ApiKeyRecord, ClusterState


def _apply_key_change(state: ClusterState, method: str, path: str, body: dict | None = None) -> bool:
    """Apply a change on the running orchestrator; False when none runs (the state is then what it reads at start)."""
    if not state.orchestrator_url:
        return False
    try:
        with get_provider(state.provider).admin_channel(state) as admin, requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {state.token}"
            response = http.request(method, f"{admin}{path}", json=body, timeout=10)
    except (requests.RequestException, MlclusterError) as exc:
        raise MlclusterError(f"the orchestrator of cluster {state.name!r} did not take the change "
                             f"({type(exc).__name__}); the state is unchanged",
                             f"`mlcluster up --name {state.name}` restarts what is missing") from None
    if response.status_code not in (200, 201, 404):
        raise MlclusterError(f"the orchestrator refused the change ({response.status_code}); the state is unchanged")
    return True


def create_key(name: str) -> apikeys.NewKey:
    state = ClusterState.load(name)
    made = apikeys.new_key()
    record = ApiKeyRecord(made.id, apikeys.digest(made.key), time.time())
    _apply_key_change(state, "POST", "/api_keys", {"id": record.id, "sha256": record.sha256})
    state.api_keys.append(record)
    state.save()
    return made


def list_keys(name: str) -> list[ApiKeyRecord]:
    return list(ClusterState.load(name).api_keys)


def revoke_key(name: str, key_id: str) -> ApiKeyRecord:
    state = ClusterState.load(name)
    record = next((r for r in state.api_keys if r.id == key_id), None)
    if record is None:
        raise MlclusterError(f"cluster {name!r} has no API key {key_id!r}", f"`mlcluster keys list --name {name}`")
    _apply_key_change(state, "DELETE", f"/api_keys/{key_id}")
    state.api_keys.remove(record)
    state.save()
    return record
