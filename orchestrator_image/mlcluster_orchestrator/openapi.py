"""The orchestrator's public API as an OpenAPI 3.1 document, served at GET /openapi.json.

`DOCUMENT` is a plain dict written here by hand, beside the routes it describes
(routes.py, validation.py, dispatcher.py's answers); `DOCUMENT_BYTES` is what the
route sends. tests/test_openapi.py validates it with openapi-spec-validator and
checks a running orchestrator's real answers against it, so the two cannot drift
apart unnoticed. The admin endpoints (POST /workers, DELETE /workers/{id}) are
left out on purpose: they are served only on the loopback admin listener.
"""
from __future__ import annotations

import json


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict, description: str, headers: dict | None = None) -> dict:
    answer: dict = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                               "schema": {"type": "integer", "minimum": 0}}}
ERROR = _ref("Error")

SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error", "status"],
        "description": "Every error answer: one sentence and the HTTP status. A worker's own 4xx answer is passed "
                       "back with the same shape (it may carry more fields).",
        "properties": {"error": {"type": "string"}, "status": {"type": "integer", "minimum": 400, "maximum": 599}},
    },
    "InferenceRequest": {
        "description": "No body or `{}` (the worker classifies a random text), one text, a list of texts, or the "
                       "lab's `{\"payload\": ...}` alone (forwarded as is).",
        "oneOf": [
            {"type": "object", "additionalProperties": False, "maxProperties": 0},
            {"type": "object", "additionalProperties": False, "required": ["text"],
             "properties": {"text": {"type": "string", "minLength": 1}}},
            {"type": "object", "additionalProperties": False, "required": ["texts"],
             "properties": {"texts": {"type": "array", "minItems": 1,
                                      "items": {"type": "string", "minLength": 1}}}},
            {"type": "object", "additionalProperties": False, "required": ["payload"],
             "properties": {"payload": {"description": "Anything: the lab's contract."}}},
        ],
    },
    "Classification": {
        "type": "object", "required": ["label"],
        "properties": {"label": {"type": "string"},
                       "probabilities": {"type": "object", "additionalProperties": {"type": "number"}}},
    },
    "WorkerAnswer": {
        "type": "object", "required": ["model", "backend", "inference_ms"],
        "description": "The worker's answer, as it sent it. One text: `text`, `text_chars` and the classification's "
                       "fields; a list: `texts`, `text_chars` and `results`.",
        "properties": {
            "model": {"type": "string"}, "backend": {"type": "string", "enum": ["torch", "onnx", "onnx-int8"]},
            "inference_ms": {"type": "number"}, "batch_size": {"type": "integer"},
            "batch_requests": {"type": "integer"}, "worker": {"type": ["string", "null"]},
            "text": {"type": "string", "description": "At most 200 characters of the text."},
            "texts": {"type": "array", "items": {"type": "string"}},
            "text_chars": {"oneOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}]},
            "label": {"type": "string"},
            "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
            "results": {"type": "array", "items": _ref("Classification")},
        },
    },
    "InferenceAnswer": {
        "type": "object", "required": ["result", "container", "queue_ms", "total_ms", "attempts"],
        "properties": {
            "result": _ref("WorkerAnswer"),
            "container": {"type": "object", "required": ["id", "host", "port"],
                          "properties": {"id": {"type": "string"}, "host": {"type": "string"},
                                         "port": {"type": "integer"}}},
            "queue_ms": {"type": "number", "description": "Time waiting for a free container."},
            "total_ms": {"type": "number", "description": "Time in the orchestrator, forwarding included."},
            "attempts": {"type": "integer", "minimum": 1, "description": "Containers tried (retries elsewhere)."},
        },
    },
    "Container": {
        "type": "object",
        "required": ["id", "host", "port", "capacity", "status", "in_flight", "served", "failed"],
        "properties": {
            "id": {"type": "string"}, "host": {"type": "string"}, "port": {"type": "integer"},
            "capacity": {"type": "integer", "minimum": 1},
            "status": {"type": "string", "enum": ["free", "busy", "down", "draining"]},
            "in_flight": {"type": "integer"}, "served": {"type": "integer"}, "failed": {"type": "integer"},
            "recent_latency_ms": {"type": ["number", "null"]},
            "version": {"type": "string", "description": "What it serves, as its registration labelled it."},
        },
    },
    "Status": {
        "type": "object", "required": ["containers", "queue", "in_flight", "served", "failed", "uptime_s"],
        "properties": {
            "containers": {"type": "array", "items": _ref("Container")},
            "queue": {"type": "object", "required": ["depth", "limit"],
                      "properties": {"depth": {"type": "integer"}, "limit": {"type": "integer"}}},
            "in_flight": {"type": "integer"}, "served": {"type": "integer"}, "failed": {"type": "integer"},
            "draining": {"type": "integer", "description": "Containers finishing their requests before they leave."},
            "canary": {"type": ["object", "null"], "description": "The share of requests sent to one version.",
                       "properties": {"version": {"type": "string"}, "percent": {"type": "number"}}},
            "uptime_s": {"type": "number"},
        },
    },
    "WorkersInfo": {
        "type": "object", "required": ["workers info"],
        "description": "The lab's shape.",
        "properties": {"workers info": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["ip", "port", "status"],
            "properties": {"ip": {"type": "string"}, "port": {"type": "integer"},
                           "status": {"type": "string", "enum": ["busy", "free"]}}}}},
    },
}

NOT_FOUND = _json_body(ERROR, "Unknown path.")
WRONG_METHOD = _json_body(ERROR, "The path exists, the method does not (an `Allow` header lists the methods).",
                          {"Allow": {"schema": {"type": "string"}}})


def _get(summary: str, answer: dict, tag: str = "watch") -> dict:
    return {"get": {"summary": summary, "tags": [tag], "responses": {"200": answer, "405": WRONG_METHOD}}}


DOCUMENT: dict = {
    "openapi": "3.1.0",
    "info": {
        "title": "mlcluster orchestrator",
        "version": "1",
        "description": "The public port of a cluster's orchestrator: send inference requests, watch the cluster. "
                       "Requests wait in a bounded FIFO queue for a free worker container and are retried on "
                       "another container when one fails. Every error is JSON: `{\"error\": ..., \"status\": ...}`.",
    },
    "paths": {
        "/new_request": {"post": {
            "summary": "Classify one text or a list of texts on a free container.",
            "tags": ["inference"],
            "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("InferenceRequest")}}},
            "responses": {
                "200": _json_body(_ref("InferenceAnswer"), "Served: the worker's answer and where it ran."),
                "400": _json_body(ERROR, "The body is not what is accepted (not JSON, an unknown field, an empty "
                                         "text, too many texts, a lone surrogate); or a worker refused the text."),
                "405": WRONG_METHOD,
                "408": _json_body(ERROR, "The body did not arrive in time."),
                "413": _json_body(ERROR, "The body (or a text) is over the limit."),
                "502": _json_body(ERROR, "Every container tried failed this request."),
                "503": _json_body(ERROR, "No containers are registered, or the queue is full.", RETRY_AFTER),
                "504": _json_body(ERROR, "No container became free within the queue time-out."),
            },
        }},
        "/status": _get("Every container, the queue and the totals.", _json_body(_ref("Status"), "The cluster.")),
        "/workers_info": _get("The lab's view: each container's address and whether it is busy.",
                              _json_body(_ref("WorkersInfo"), "The containers.")),
        "/health_check": _get("Whether the orchestrator answers.", _json_body(
            {"type": "object", "required": ["status"], "properties": {"status": {"const": "alive"}}}, "Alive.")),
        "/metrics": _get("Prometheus metrics.", {"description": "Prometheus' text exposition format.",
                                                 "content": {"text/plain": {"schema": {"type": "string"}}}}),
        "/openapi.json": _get("This document.", {"description": "OpenAPI 3.1.",
                                                 "content": {"application/json": {"schema": {"type": "object"}}}},
                              tag="meta"),
    },
    "components": {"schemas": SCHEMAS, "responses": {"NotFound": NOT_FOUND}},
}

DOCUMENT_BYTES = json.dumps(DOCUMENT, indent=1).encode()
