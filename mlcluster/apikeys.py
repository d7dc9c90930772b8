"""API keys of a cluster's public endpoint: making one, its digest, the orchestrator's setting.
Creating, listing and revoking a running cluster's keys: mlcluster/cluster_keys.py.

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
from dataclasses import dataclass

from .state import ApiKeyRecord

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

