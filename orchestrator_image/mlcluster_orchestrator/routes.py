"""The orchestrator's routes, independent of the HTTP transport (fastserver.py
parses requests and writes answers; this module decides what they are).

Every answer is an `Answer`: a status, JSON body bytes and extra header
lines. Errors are `{"error": sentence, "status": code}`: 404/405 for unknown paths and methods, 400 bad input,
401 without the token (with `WWW-Authenticate: Bearer`), 409 id conflict,
413 body over the limit, 408 body too slow, 503 + Retry-After, 504.

Which routes a listener serves: `Routes(state, public=True, admin=True)`.
With ORCH_ADMIN_BIND set, the public listener is `admin=False` (POST /workers,
DELETE /workers/{id} and its synonym POST /workers/{id}/drain are 404 there, token or not) and the loopback admin
listener is `public=False` (the admin routes and the read-only GETs; no
/new_request, no /receive_ips_from_workers). The lab's
/receive_ips_from_workers stays on the public listener, with its token, by contract.

With API keys in force (apikeys.py) /new_request and /workers_info need
`Authorization: Bearer <key>` (401 without a valid one) and count requests
per key id; the admin routes GET/POST /api_keys and DELETE /api_keys/{id}
(with the token) list, add and revoke them at run time.
"""
from __future__ import annotations

import hmac
import json
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Callable, Optional, Union

from . import apikeys, openapi, validation
from .containers import Canary
from .dispatcher import Dispatcher
from .health import HealthChecker, keep_registry_in
from .limits import HeadLimits
from .metrics import CONTENT_TYPE as METRICS_TYPE, Metrics
from .scheduler import Scheduler
from .settings import admin_bind, lab_ports, settings_from_env
from .tls import server_context

log = logging.getLogger("mlcluster.orchestrator")
JSON_TYPE = b"application/json"


@dataclass(slots=True)
class Request:
    """What a route sees of a parsed request."""
    method: bytes
    path: str
    authorization: bytes
    body: bytes


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes
    headers: bytes = b""  # extra header lines, each ending in CRLF
    content_type: bytes = JSON_TYPE


class Refused(Exception):
    """An error answer raised from anywhere in a route."""

    def __init__(self, status: int, message: str, headers: bytes = b""):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def error(status: int, message: str, headers: bytes = b"") -> Answer:
    if status == 401:
        headers += b"WWW-Authenticate: Bearer\r\n"
    return Answer(status, json.dumps({"error": message, "status": status}).encode(), headers)


def header_lines(headers: dict) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")


def checked(check, *args):
    """Run a validation check; its BadRequest becomes a 400 with its sentence."""
    try:
        return check(*args)
    except validation.BadRequest as exc:
        raise Refused(400, str(exc)) from None


def as_json(body) -> Answer:
    return Answer(200, json.dumps(body).encode())


class Orchestrator:
    """Everything one orchestrator process holds; `await start()` on the event loop, `await stop()` at the end."""

    def __init__(self, config: Optional[dict] = None):
        settings = settings_from_env()
        settings.update(config or {})
        if not settings["ORCH_TOKEN"]:
            raise RuntimeError("ORCH_TOKEN is not set: the orchestrator needs a token for its admin endpoints")
        self.lab_ports = lab_ports(settings["ORCH_LAB_PORTS"])  # fail at start, not at the first registration
        self.admin_bind = admin_bind(settings["ORCH_ADMIN_BIND"])
        self.settings = settings
        self.token = settings["ORCH_TOKEN"].encode()
        self.head_limits = HeadLimits(settings["ORCH_MAX_REQUEST_LINE"], settings["ORCH_MAX_HEADER_BYTES"],
                                      settings["ORCH_MAX_HEADER_FIELDS"])
        self.ssl_context = server_context(settings["ORCH_TLS_CERT"], settings["ORCH_TLS_KEY"],
                                          settings["ORCH_TLS_CERT_B64"], settings["ORCH_TLS_KEY_B64"])
        self.api_keys = apikeys.ApiKeys(settings["ORCH_API_KEYS"])
        self.scheduler = Scheduler(queue_limit=settings["ORCH_QUEUE_LIMIT"])
        self.metrics = Metrics(self.scheduler)
        self.dispatcher = Dispatcher(self.scheduler, queue_timeout_s=settings["ORCH_QUEUE_TIMEOUT_S"],
                                     forward_timeout_s=settings["ORCH_FORWARD_TIMEOUT_S"],
                                     max_attempts=settings["ORCH_MAX_ATTEMPTS"],
                                     worker_token=settings["ORCH_WORKER_TOKEN"], on_event=self.metrics.on_event)
        self.health = HealthChecker(self.scheduler, self.dispatcher.probe_ready,
                                    interval_s=settings["ORCH_HEALTH_INTERVAL_S"])
        if settings["ORCH_STATUS_FILE"]:
            keep_registry_in(settings["ORCH_STATUS_FILE"], self.scheduler)
        self.started = time.monotonic()

    async def start(self) -> None:
        await self.dispatcher.start()
        if self.settings["ORCH_HEALTH_INTERVAL_S"] > 0:
            self.health.start()
        elif self.scheduler.containers():  # restored ones still need one check to enter rotation
            self.health.probe_soon(self.scheduler.containers())

    async def stop(self) -> None:
        await self.health.stop()
        await self.dispatcher.close()


Cancel = Callable[[], None]
# A handler answers at once (`handler(request) -> Answer`) or, deferred,
# `handler(request, reply) -> cancel`; either may raise Refused.
Handler = Union[Callable[[Request], Answer], Callable[[Request, Callable[[Answer], None]], Cancel]]


class Routes:
    """`find(method, path)` -> (handler, deferred), or an error Answer (404/405)."""

    def __init__(self, state: Orchestrator, public: bool = True, admin: bool = True):
        self.state = state
        s = state.settings
        self.max_texts = s["ORCH_MAX_TEXTS"]
        self.max_body = s["ORCH_MAX_BODY_BYTES"]
        self.body_timeout_s = s["ORCH_BODY_TIMEOUT_S"]
        self.public, self.admin = public, admin
        self.exact: dict[str, dict[bytes, tuple[Handler, bool]]] = {
            "/workers_info": {b"GET": (self.workers_info, False)},
            "/status": {b"GET": (self.status, False)},
            "/health_check": {b"GET": (self.health_check, False)},
            "/metrics": {b"GET": (self.metrics, False)},
            "/openapi.json": {b"GET": (lambda request: Answer(200, openapi.DOCUMENT_BYTES), False)},
        }
        if public:
            self.exact["/new_request"] = {b"POST": (self.new_request, True)}
            self.exact["/receive_ips_from_workers"] = {b"POST": (self.receive_ips, False)}
        if admin:
            self.exact["/workers"] = {b"POST": (self.add_workers, False)}
            self.exact["/api_keys"] = {b"GET": (self.list_keys, False), b"POST": (self.add_key, False)}
            self.exact["/canary"] = {b"PUT": (self.set_canary, False), b"DELETE": (self.end_canary, False)}
        self.alive = Answer(200, b'{"status": "alive"}')

    def find(self, method: bytes, path: str) -> Union[tuple[Handler, bool], Answer]:
        methods = self.exact.get(path)
        if methods is None:
            if self.admin and path.startswith("/workers/") and path.count("/") == 2 and len(path) > 9:
                methods = {b"DELETE": (self.remove_worker, False)}
            elif self.admin and path.startswith("/workers/") and path.endswith("/drain") and path.count("/") == 3 \
                    and len(path) > 15:
                methods = {b"POST": (self.drain_worker, False)}
            elif self.admin and path.startswith("/api_keys/") and path.count("/") == 2 and len(path) > 10:
                methods = {b"DELETE": (self.revoke_key, False)}
            else:
                return error(404, "Not Found")
        found = methods.get(method)
        if found is None:
            allow = ",".join(m.decode() for m in methods)
            return error(405, "Method Not Allowed", f"Allow: {allow}\r\n".encode())
        return found

    def refused(self, path: str, status: int, message: str, headers: bytes = b"") -> Answer:
        """An error answer; on /new_request it also counts (as every answer to it does)."""
        if path == "/new_request":
            self.state.metrics.answered(status)
            self.state.metrics.errors.labels(kind="bad_request").inc()
        return error(status, message, headers)

    def too_big(self, path: str) -> Answer:
        return self.refused(path, 413, f"the body is over the {self.max_body}-byte limit")

    def too_slow(self, path: str) -> Answer:
        return self.refused(path, 408, f"the body did not arrive within {self.body_timeout_s:g} s")

    def require_token(self, request: Request) -> None:
        given = request.authorization
        if not (given.startswith(b"Bearer ") and hmac.compare_digest(given[7:], self.state.token)):
            raise Refused(401, "this endpoint needs 'Authorization: Bearer <token>' with the cluster's token")

    def require_key(self, request: Request) -> None:
        """With API keys in force: a valid one, counted by its id; else 401."""
        keys = self.state.api_keys
        if not keys.required:
            return
        key_id = keys.identify(request.authorization)
        if key_id is None:
            raise Refused(401, "this endpoint needs 'Authorization: Bearer <key>' with one of the cluster's API keys "
                               "(mlcluster keys create)")
        self.state.metrics.keyed(key_id)

    # -- the routes ---------------------------------------------------------
    def new_request(self, request: Request, reply: Callable[[Answer], None]) -> Cancel:
        """Deferred: `reply(answer)` once the dispatcher has an outcome; the
        returned `cancel()` is called if the caller leaves before that."""
        self.require_key(request)
        checked(validation.inference_request, request.body, self.max_texts)
        metrics = self.state.metrics

        def done(outcome) -> None:
            metrics.answered(outcome.status)
            reply(Answer(outcome.status, outcome.payload, header_lines(outcome.headers) if outcome.headers else b""))
        return self.state.dispatcher.submit(request.body, done).cancel

    def register(self, specs: list[dict]) -> Answer:
        state = self.state
        try:
            added = [state.scheduler.add(s["host"], s["port"], s["capacity"], id=s["id"], healthy=False,
                                         version=s.get("version", "")) for s in specs]
        except ValueError as exc:
            raise Refused(409, str(exc)) from None
        state.health.probe_soon(added)
        log.info("registered %s", ", ".join(f"{c.id}={c.host}:{c.port}" for c in added))
        return Answer(201, json.dumps({"registered": [c.describe() for c in added]}).encode())

    def add_workers(self, request: Request) -> Answer:
        self.require_token(request)
        return self.register(checked(validation.container_specs, request.body))

    def remove_worker(self, request: Request) -> Answer:
        self.require_token(request)
        return self.drain(request.path[len("/workers/"):])

    def drain_worker(self, request: Request) -> Answer:
        """POST /workers/{id}/drain: the same as DELETE /workers/{id}, named for what it does."""
        self.require_token(request)
        return self.drain(request.path[len("/workers/"):-len("/drain")])

    def drain(self, container_id: str) -> Answer:
        """No new request for the container; it leaves the registry once its
        in-flight requests are done (queued ones go to the others)."""
        try:
            container = self.state.scheduler.drain(container_id)
        except KeyError:
            raise Refused(404, f"no container {container_id!r} is registered") from None
        # With nothing in flight it has left the registry already.
        return as_json({"draining": container.id, "in_flight": container.in_flight,
                        "removed": container.in_flight == 0})

    def receive_ips(self, request: Request) -> Answer:
        """The lab's contract: a JSON list of worker IPs, two containers each."""
        self.require_token(request)
        ips = checked(validation.worker_ips, request.body)
        return self.register([{"host": ip, "port": port, "capacity": 1, "id": None}
                              for ip in ips for port in self.state.lab_ports])

    def workers_info(self, request: Request) -> Answer:
        """The lab's shape: {"workers info": {id: {"ip", "port", "status": busy|free}}}."""
        self.require_key(request)
        return as_json({"workers info": {c.id: {"ip": c.host, "port": c.port,
                                                "status": "busy" if c.in_flight else "free"}
                                         for c in self.state.scheduler.containers()}})

    def list_keys(self, request: Request) -> Answer:
        self.require_token(request)
        return as_json({"ids": self.state.api_keys.ids()})

    def add_key(self, request: Request) -> Answer:
        """{"id": ..., "sha256": hexdigest}: the key itself never reaches the orchestrator."""
        self.require_token(request)
        entry = checked(validation.api_key_entry, request.body)
        try:
            new = self.state.api_keys.add(entry.id, entry.sha256)
        except ValueError as exc:
            raise Refused(400, str(exc)) from None
        log.info("API key %s %s", entry.id, "added" if new else "replaced")
        return Answer(201 if new else 200, json.dumps({"id": entry.id, "added": new}).encode())

    def revoke_key(self, request: Request) -> Answer:
        self.require_token(request)
        key_id = request.path[len("/api_keys/"):]
        if not self.state.api_keys.revoke(key_id):
            raise Refused(404, f"no API key {key_id!r} is in force")
        log.info("API key %s revoked", key_id)
        return as_json({"revoked": key_id})

    def set_canary(self, request: Request) -> Answer:
        """PUT /canary {"version", "percent"}: that share of requests to the containers of that version."""
        self.require_token(request)
        version, percent = checked(validation.canary_setting, request.body)
        self.state.scheduler.set_canary(Canary(version, percent))
        log.info("canary: %g %% of requests to version %s", percent, version)
        return as_json({"canary": {"version": version, "percent": percent}})

    def end_canary(self, request: Request) -> Answer:
        self.require_token(request)
        self.state.scheduler.set_canary(None)
        log.info("canary ended: every container serves every request")
        return as_json({"canary": None})

    def status(self, request: Request) -> Answer:
        snapshot = self.state.scheduler.snapshot()
        snapshot["uptime_s"] = round(time.monotonic() - self.state.started, 1)
        return as_json(snapshot)

    def health_check(self, request: Request) -> Answer:
        return self.alive

    def metrics(self, request: Request) -> Answer:
        return Answer(200, self.state.metrics.exposition(), content_type=METRICS_TYPE.encode())


STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
