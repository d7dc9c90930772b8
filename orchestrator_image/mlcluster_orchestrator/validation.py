"""What the orchestrator accepts, checked before a request takes a place in
the queue: a bad request is refused at once and never occupies a container.

Plain Python (no Flask): each check returns the cleaned value or raises
`BadRequest` with a sentence for the caller.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

import orjson

CONTAINER_FIELDS = {"host", "port", "capacity", "id", "version"}
MAX_CAPACITY = 64


class BadRequest(ValueError):
    """A body the orchestrator refuses (HTTP 400); the message says why."""


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; deep nesting recurses
        raise BadRequest("the body must be JSON") from None


def inference_request(raw: bytes, max_texts: int) -> None:
    """Accept what a worker's /run_model accepts: no body, `{}`,
    `{"text": "..."}` or `{"texts": ["...", ...]}` with 1..max_texts texts,
    or the lab's body `{"payload": <anything>}` alone (forwarded as is: the
    worker classifies a random 50-character text, as the lab's worker did)."""
    if not raw.strip():
        return
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # also text no encoder takes (a lone surrogate), and nesting past 1,024
        raise BadRequest(f"the body must be JSON (UTF-8, no lone surrogates): {{}}, {{\"text\": \"...\"}} or "
                         f"{{\"texts\": [...]}}; {exc}") from None
    if type(body) is not dict:
        raise BadRequest("the body must be a JSON object")
    if "payload" in body and len(body) == 1:
        return
    for key in body:  # a loop, not set arithmetic: this runs for every request
        if key != "text" and key != "texts":
            unknown = sorted(set(body) - {"text", "texts"})
            raise BadRequest(f"unknown field(s): {', '.join(unknown)}; expected 'text' or 'texts'")
    if "text" in body and "texts" in body:
        raise BadRequest("give either 'text' or 'texts', not both")
    if "text" in body and not (isinstance(body["text"], str) and body["text"].strip()):
        raise BadRequest("'text' must be a non-empty string")
    if "texts" in body:
        texts = body["texts"]
        if not isinstance(texts, list) or not texts:
            raise BadRequest("'texts' must be a non-empty list of strings")
        if len(texts) > max_texts:
            raise BadRequest(f"'texts' holds {len(texts)} texts; at most {max_texts} per request")
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise BadRequest("every item of 'texts' must be a non-empty string")


def _container_spec(item: Any) -> dict:
    if not isinstance(item, dict):
        raise BadRequest("each container must be an object with 'host' and 'port'")
    unknown = set(item) - CONTAINER_FIELDS
    if unknown:
        raise BadRequest(f"unknown container field(s): {', '.join(sorted(unknown))}; "
                         f"expected {', '.join(sorted(CONTAINER_FIELDS))}")
    host, port, capacity = item.get("host"), item.get("port"), item.get("capacity", 1)
    if not isinstance(host, str) or not host or len(host) > 253 or any(ch in host for ch in "/:@ \t\n"):
        raise BadRequest("'host' must be a host name or IPv4 address")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise BadRequest("'port' must be an integer from 1 to 65535")
    if not isinstance(capacity, int) or isinstance(capacity, bool) or not 1 <= capacity <= MAX_CAPACITY:
        raise BadRequest(f"'capacity' must be an integer from 1 to {MAX_CAPACITY}")
    cid = item.get("id")
    if cid is not None and (not isinstance(cid, str) or not cid or len(cid) > 64 or "/" in cid):
        raise BadRequest("'id' must be a string of 1 to 64 characters without '/'")
    version = item.get("version", "")
    if not isinstance(version, str) or len(version) > 64:
        raise BadRequest("'version' must be a string of at most 64 characters")
    return {"host": host, "port": port, "capacity": capacity, "id": cid, "version": version}


def canary_setting(raw: bytes) -> tuple[str, float]:
    """PUT /canary's body: `{"version": label, "percent": 0 < p < 100}`."""
    body = _json(raw)
    if not isinstance(body, dict) or set(body) != {"version", "percent"}:
        raise BadRequest("the body must be an object with 'version' and 'percent'")
    version, percent = body["version"], body["percent"]
    if not isinstance(version, str) or not version or len(version) > 64:
        raise BadRequest("'version' must be a string of 1 to 64 characters")
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 < percent < 100:
        raise BadRequest("'percent' must be a number between 0 and 100 (exclusive)")
    return version, float(percent)


def container_specs(raw: bytes) -> list[dict]:
    """The containers of a POST /workers body: `{"containers": [...]}`, a list
    of container objects, or one container object."""
    body = _json(raw)
    if isinstance(body, dict) and "containers" in body:
        if set(body) != {"containers"}:
            raise BadRequest("a body with 'containers' must hold nothing else")
        body = body["containers"]
    items = [body] if isinstance(body, dict) else body
    if not isinstance(items, list) or not items:
        raise BadRequest("send {\"containers\": [{\"host\": ..., \"port\": ...}, ...]}, a list of containers or one")
    specs = [_container_spec(item) for item in items]
    ids = [s["id"] for s in specs if s["id"] is not None]
    if len(ids) != len(set(ids)):
        raise BadRequest("two containers in one request have the same 'id'")
    return specs


def worker_ips(raw: bytes) -> list[str]:
    """The lab's contract: a non-empty JSON list of worker IPv4 addresses."""
    ips = _json(raw)
    if not isinstance(ips, list) or not ips:
        raise BadRequest("send a non-empty JSON list of worker IP addresses")
    for ip in ips:
        try:
            ipaddress.IPv4Address(ip if isinstance(ip, str) else "")
        except ValueError:
            raise BadRequest(f"{ip!r} is not an IPv4 address") from None
    return ips


@dataclass(frozen=True)
class ApiKeyEntry:
    id: str
    sha256: str


def api_key_entry(raw: bytes) -> ApiKeyEntry:
    """POST /api_keys: {"id": "...", "sha256": "<64 hex digits>"} (the key's digest, never the key)."""
    body = _json(raw)
    well_formed = (isinstance(body, dict) and set(body) == {"id", "sha256"}
                   and all(isinstance(v, str) for v in body.values()))
    if not well_formed:
        raise BadRequest('the body must be {"id": "<key id>", "sha256": "<the key\'s sha256, hex>"}')
    return ApiKeyEntry(body["id"], body["sha256"])
