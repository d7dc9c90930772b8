"""API keys of a cluster's public endpoint: create, list, revoke.

The state keeps each key's id and sha256 (never the key: `create` returns it
once, to be printed once); the orchestrator gets the same pairs at start
(ORCH_API_KEYS) and, when it runs, at once through the admin channel
(POST /api_keys, DELETE /api_keys/{id} with the cluster's token), so a key
works or stops working without a restart. Why sha256 is enough: see
orchestrator_image/mlcluster_orchestrator/apikeys.py.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import requests

from .errors import MlclusterError
from .providers import get_provider
from .state import ApiKeyRecord, ClusterState

PREFIX = "mlk_"


@dataclass(frozen=True)
class NewKey:
    id: str
    key: str  # shown once; never stored


def new_key() -> NewKey:
    key_id = secrets.token_hex(4)
    return NewKey(key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def orchestrator_setting(records: list[ApiKeyRecord]) -> str:
    """ORCH_API_KEYS for the orchestrator: "id:sha256,..."."""
    return ",".join(f"{r.id}:{r.sha256}" for r in records)


def _tell_orchestrator(state: ClusterState, method: str, path: str, body: dict | None = None) -> bool:
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


def create(name: str) -> NewKey:
    state = ClusterState.load(name)
    made = new_key()
    record = ApiKeyRecord(made.id, digest(made.key), time.time())
    _tell_orchestrator(state, "POST", "/api_keys", {"id": record.id, "sha256": record.sha256})
    state.api_keys.append(record)
    state.save()
    return made


def list_keys(name: str) -> list[ApiKeyRecord]:
    return list(ClusterState.load(name).api_keys)


def revoke(name: str, key_id: str) -> ApiKeyRecord:
    state = ClusterState.load(name)
    record = next((r for r in state.api_keys if r.id == key_id), None)
    if record is None:
        raise MlclusterError(f"cluster {name!r} has no API key {key_id!r}", f"`mlcluster keys list --name {name}`")
    _tell_orchestrator(state, "DELETE", f"/api_keys/{key_id}")
    state.api_keys.remove(record)
    state.save()
    return record
