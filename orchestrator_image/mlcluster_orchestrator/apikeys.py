"""API keys for the public routes (/new_request, /workers_info).

A key is `mlk_<id>_<secret>`: `id` 1-32 lowercase letters and digits, the
secret 32 random bytes (the CLI makes them: mlcluster/apikeys.py). The
orchestrator holds only `id -> sha256(key)`, given at start in ORCH_API_KEYS
("id:hexdigest,id:hexdigest") and added or revoked at run time through the
admin routes. A plain sha256 is enough here: a slow password hash (bcrypt,
argon2) protects low-entropy secrets from guessing, and a 256-bit random key
cannot be guessed; sha256 costs about a microsecond per request where a
password hash would cost milliseconds. The stored digest is compared with
`hmac.compare_digest` (constant time); a key whose id is unknown is compared
with a dummy digest, so time says nothing about which ids exist.
With no key at all the routes stay open, as before keys existed.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from typing import Optional

PREFIX = "mlk_"
KEY_ID = re.compile(r"[a-z0-9]{1,32}")
DIGEST = re.compile(r"[0-9a-f]{64}")
_DUMMY = hashlib.sha256(b"no such key").hexdigest().encode()


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_entry(key_id: str, hexdigest: str) -> None:
    if not KEY_ID.fullmatch(key_id):
        raise ValueError(f"the key id {key_id!r} must be 1-32 lowercase letters and digits")
    if not DIGEST.fullmatch(hexdigest):
        raise ValueError(f"the digest of key {key_id!r} must be 64 lowercase hex digits (sha256)")


def parse(spec: str) -> dict[str, str]:
    """ORCH_API_KEYS ("id:hexdigest,..." or "") -> {id: hexdigest}; RuntimeError on a bad entry."""
    keys: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        key_id, _, hexdigest = entry.partition(":")
        try:
            check_entry(key_id, hexdigest)
        except ValueError as exc:
            raise RuntimeError(f"ORCH_API_KEYS: {exc}") from None
        keys[key_id] = hexdigest
    return keys


class ApiKeys:
    """The ids and digests of the keys in force."""

    def __init__(self, spec: str = ""):
        self.digests: dict[str, bytes] = {k: v.encode() for k, v in parse(spec).items()}

    @property
    def required(self) -> bool:
        return bool(self.digests)

    def ids(self) -> list[str]:
        return sorted(self.digests)

    def add(self, key_id: str, hexdigest: str) -> bool:
        """True if the id is new; ValueError on a bad id or digest."""
        check_entry(key_id, hexdigest)
        new = key_id not in self.digests
        self.digests[key_id] = hexdigest.encode()
        return new

    def revoke(self, key_id: str) -> bool:
        return self.digests.pop(key_id, None) is not None

    def identify(self, authorization: bytes) -> Optional[str]:
        """The id of the key in `Authorization: Bearer <key>`, or None when it is missing or not in force."""
        if not authorization.startswith(b"Bearer "):
            return None
        key = authorization[7:].strip()
        key_id = key[len(PREFIX):].partition(b"_")[0].decode("latin-1") if key.startswith(PREFIX.encode()) else ""
        stored = self.digests.get(key_id)
        given = hashlib.sha256(key).hexdigest().encode()
        ok = hmac.compare_digest(given, stored if stored is not None else _DUMMY)
        return key_id if ok and stored is not None else None
