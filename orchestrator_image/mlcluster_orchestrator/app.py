"""The orchestrator's HTTP face: thin aiohttp glue over the scheduler and dispatcher.

    ORCH_TOKEN=... python -m mlcluster_orchestrator      # BIND=127.0.0.1:8000 by default

One process, one event loop: a waiting request is a future in the scheduler's
FIFO, not a thread. Settings come from the environment (DEFAULTS below).

The admin endpoints (`admin_routes`: POST /workers, DELETE /workers/{id}) are
served on the public listener only when ORCH_ADMIN_BIND is empty. With
ORCH_ADMIN_BIND=host:port they are served only by a second application
(`create_admin_app`) on that listener, a loopback one reached through SSH, and
the public one answers them 404 JSON (`public_routes(app, include_admin=False)`).
The lab's /receive_ips_from_workers stays public, with its token, by contract.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass

from aiohttp import web

from . import validation
from .dispatcher import Dispatcher
from .health import HealthChecker, keep_registry_in
from .metrics import CONTENT_TYPE, Metrics
from .scheduler import Scheduler

log = logging.getLogger("mlcluster.orchestrator")

DEFAULTS = {
    "ORCH_TOKEN": "",
    "ORCH_ADMIN_BIND": "",  # host:port of the admin listener ("": admin endpoints on the public one)
    "ORCH_WORKER_TOKEN": "",  # sent to workers as a bearer token on /run_model; never logged
    "ORCH_QUEUE_LIMIT": 100,
    "ORCH_QUEUE_TIMEOUT_S": 30.0,
    "ORCH_FORWARD_TIMEOUT_S": 30.0,
    "ORCH_MAX_ATTEMPTS": 3,
    "ORCH_HEALTH_INTERVAL_S": 1.0,
    "ORCH_STATUS_FILE": "",
    "ORCH_MAX_BODY_BYTES": 1 << 20,
    "ORCH_MAX_TEXTS": 64,  # texts per request, as the worker's MAX_BATCH
    "ORCH_LAB_PORTS": "5000,5001",  # what /receive_ips_from_workers assumes per IP
    "ORCH_HEADER_TIMEOUT_S": 10.0,  # a request's header must arrive within this
    "ORCH_BODY_TIMEOUT_S": 30.0,  # ... and its body within this after the header
    "ORCH_IDLE_TIMEOUT_S": 30.0,  # a kept-alive connection idle this long is closed
    "ORCH_MAX_CONNECTIONS": 10000,  # open connections beyond this are answered 503 and closed
}
JSON = "application/json"
STATE = web.AppKey("orchestrator", object)


def settings_from_env(env=os.environ) -> dict:
    settings = dict(DEFAULTS)
    for key, default in DEFAULTS.items():
        if env.get(key, "") != "":
            try:
                settings[key] = type(default)(env[key])
            except ValueError:
                raise RuntimeError(f"{key}={env[key]!r} is not a valid {type(default).__name__}") from None
    return settings


def lab_ports(value: str) -> list[int]:
    """ORCH_LAB_PORTS ("5000,5001"): the ports each lab worker IP serves on."""
    try:
        ports = [int(p) for p in str(value).split(",")]
    except ValueError:
        ports = []
    if not ports or not all(0 < p < 65536 for p in ports):
        raise RuntimeError(f"ORCH_LAB_PORTS={value!r} must be a comma-separated list of ports")
    return ports


class Refused(Exception):
    """An answer with an error status, raised from anywhere in a handler."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def answer(body: dict, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, content_type=JSON, headers=headers)


def error_answer(status: int, message: str, headers: dict | None = None) -> web.Response:
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return answer({"error": message, "status": status}, status, headers)


@dataclass
class Orchestrator:
    """Everything one orchestrator process holds, built by `create_app`."""
    settings: dict
    scheduler: Scheduler
    dispatcher: Dispatcher
    health: HealthChecker
    metrics: Metrics
    started: float

    async def read_body(self, request: web.Request) -> bytes:
        """The body, within ORCH_MAX_BODY_BYTES (else 413, also when chunked)
        and ORCH_BODY_TIMEOUT_S (else 408)."""
        limit = self.settings["ORCH_MAX_BODY_BYTES"]
        too_big = Refused(413, f"the body is over the {limit}-byte limit")
        if request.content_length is not None and request.content_length > limit:
            raise too_big
        try:
            if request.content.is_eof():  # the common case: it came with the header
                return await request.read()
            return await asyncio.wait_for(request.read(), self.settings["ORCH_BODY_TIMEOUT_S"])
        except web.HTTPRequestEntityTooLarge:
            raise too_big from None
        except asyncio.TimeoutError:
            raise Refused(408, f"the body did not arrive within {self.settings['ORCH_BODY_TIMEOUT_S']:g} s") from None

    def require_token(self, request: web.Request) -> None:
        token = self.settings["ORCH_TOKEN"]
        given = request.headers.get("Authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
            raise Refused(401, "this endpoint needs 'Authorization: Bearer <token>' with the cluster's token")

    def register(self, specs: list[dict]) -> web.Response:
        try:
            added = [self.scheduler.add(s["host"], s["port"], s["capacity"], id=s["id"], healthy=False)
                     for s in specs]
        except ValueError as exc:
            raise Refused(409, str(exc)) from None
        self.health.probe_soon(added)
        log.info("registered %s", ", ".join(f"{c.id}={c.host}:{c.port}" for c in added))
        return answer({"registered": [c.describe() for c in added]}, 201)


def checked(check, *args):
    """Run a validation check; its BadRequest becomes a 400 with its sentence."""
    try:
        return check(*args)
    except validation.BadRequest as exc:
        raise Refused(400, str(exc)) from None


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Every error is JSON `{"error": sentence, "status": code}`, never a traceback."""
    try:
        return await handler(request)
    except Refused as exc:
        status, message, headers = exc.status, exc.message, exc.headers
    except web.HTTPException as exc:  # the router's 404/405
        status, message, headers = exc.status, exc.reason, {}
    except Exception:  # a bug: logged, answered as a 500 sentence
        log.exception("error while answering %s %s", request.method, request.path)
        status, message, headers = 500, "internal error (see the orchestrator's log)", {}
    if request.path == "/new_request":
        metrics = request.app[STATE].metrics
        metrics.answered(status)
        metrics.errors.labels(kind="bad_request").inc()
    return error_answer(status, message, headers)


async def new_request(request: web.Request) -> web.Response:
    o: Orchestrator = request.app[STATE]
    body = await o.read_body(request)
    checked(validation.inference_request, body, o.settings["ORCH_MAX_TEXTS"])
    outcome = await o.dispatcher.handle(body)
    o.metrics.answered(outcome.status)
    return answer(outcome.body, outcome.status, outcome.headers)


async def add_workers(request: web.Request) -> web.Response:
    o: Orchestrator = request.app[STATE]
    o.require_token(request)
    return o.register(checked(validation.container_specs, await o.read_body(request)))


async def remove_worker(request: web.Request) -> web.Response:
    o: Orchestrator = request.app[STATE]
    o.require_token(request)
    container_id = request.match_info["container_id"]
    try:
        container = o.scheduler.drain(container_id)
    except KeyError:
        raise Refused(404, f"no container {container_id!r} is registered") from None
    # With nothing in flight it has left the registry already.
    return answer({"draining": container.id, "in_flight": container.in_flight, "removed": container.in_flight == 0})


async def receive_ips(request: web.Request) -> web.Response:
    """The lab's contract: a JSON list of worker IPs, two containers each."""
    o: Orchestrator = request.app[STATE]
    o.require_token(request)
    ips = checked(validation.worker_ips, await o.read_body(request))
    ports = lab_ports(o.settings["ORCH_LAB_PORTS"])
    return o.register([{"host": ip, "port": port, "capacity": 1, "id": None} for ip in ips for port in ports])


async def workers_info(request: web.Request) -> web.Response:
    """The lab's shape: {"workers info": {id: {"ip", "port", "status": busy|free}}}."""
    info = {c.id: {"ip": c.host, "port": c.port, "status": "busy" if c.in_flight else "free"}
            for c in request.app[STATE].scheduler.containers()}
    return answer({"workers info": info})


async def status(request: web.Request) -> web.Response:
    o: Orchestrator = request.app[STATE]
    snapshot = o.scheduler.snapshot()
    snapshot["uptime_s"] = round(time.monotonic() - o.started, 1)
    return answer(snapshot)


async def health_check(request: web.Request) -> web.Response:
    return answer({"status": "alive"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


async def admin_elsewhere(request: web.Request) -> web.Response:
    """What the public listener answers for an admin path when an admin listener serves them."""
    raise Refused(404, "not found (the admin endpoints are not served on this address)")


def admin_routes(app: web.Application) -> None:
    """The endpoints that change the cluster with the token (never the lab's contract)."""
    app.router.add_post("/workers", add_workers)
    app.router.add_delete("/workers/{container_id}", remove_worker)


def read_only_routes(app: web.Application) -> None:
    app.router.add_get("/workers_info", workers_info, allow_head=False)
    app.router.add_get("/status", status, allow_head=False)
    app.router.add_get("/health_check", health_check, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)


def public_routes(app: web.Application, include_admin: bool) -> None:
    """The lab's endpoints and the read-only ones; the admin ones too only with
    `include_admin`, else every method on their paths is a 404."""
    app.router.add_post("/new_request", new_request)
    app.router.add_post("/receive_ips_from_workers", receive_ips)
    read_only_routes(app)
    if include_admin:
        admin_routes(app)
    else:
        app.router.add_route("*", "/workers", admin_elsewhere)
        app.router.add_route("*", "/workers/{tail:.*}", admin_elsewhere)


def create_app(config: dict | None = None) -> web.Application:
    """The public application; the client session and the health checker
    start with it (on_startup) and stop with it (on_cleanup). It serves the
    admin endpoints only when ORCH_ADMIN_BIND is empty (see the module docstring)."""
    settings = settings_from_env()
    settings.update(config or {})
    if not settings["ORCH_TOKEN"]:
        raise RuntimeError("ORCH_TOKEN is not set: the orchestrator needs a token for its admin endpoints")
    lab_ports(settings["ORCH_LAB_PORTS"])  # fail at start, not at the first registration
    if settings["ORCH_ADMIN_BIND"]:
        host, _, port = settings["ORCH_ADMIN_BIND"].rpartition(":")
        if not (host and port.isdigit() and 0 < int(port) < 65536):
            raise RuntimeError(f"ORCH_ADMIN_BIND={settings['ORCH_ADMIN_BIND']!r} must be host:port, "
                               "such as 127.0.0.1:8001")
    scheduler = Scheduler(queue_limit=settings["ORCH_QUEUE_LIMIT"])
    telemetry = Metrics(scheduler)
    dispatcher = Dispatcher(scheduler, queue_timeout_s=settings["ORCH_QUEUE_TIMEOUT_S"],
                            forward_timeout_s=settings["ORCH_FORWARD_TIMEOUT_S"],
                            max_attempts=settings["ORCH_MAX_ATTEMPTS"], worker_token=settings["ORCH_WORKER_TOKEN"],
                            on_event=telemetry.on_event)
    health = HealthChecker(scheduler, lambda: dispatcher.session, interval_s=settings["ORCH_HEALTH_INTERVAL_S"])
    if settings["ORCH_STATUS_FILE"]:
        keep_registry_in(settings["ORCH_STATUS_FILE"], scheduler)
    state = Orchestrator(settings, scheduler, dispatcher, health, telemetry, time.monotonic())

    async def start(app: web.Application) -> None:
        await dispatcher.start()
        if settings["ORCH_HEALTH_INTERVAL_S"] > 0:
            health.start()
        elif scheduler.containers():  # restored ones still need one check to enter rotation
            health.probe_soon(scheduler.containers())

    async def stop(app: web.Application) -> None:
        await health.stop()
        await dispatcher.close()

    app = web.Application(client_max_size=settings["ORCH_MAX_BODY_BYTES"], middlewares=[json_errors])
    app[STATE] = state
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    public_routes(app, include_admin=not settings["ORCH_ADMIN_BIND"])
    return app


def create_admin_app(public: web.Application) -> web.Application:
    """The admin listener's application: the admin endpoints and the read-only
    ones, over the same orchestrator as `public` (which starts and stops it)."""
    state: Orchestrator = public[STATE]
    app = web.Application(client_max_size=state.settings["ORCH_MAX_BODY_BYTES"], middlewares=[json_errors])
    app[STATE] = state
    admin_routes(app)
    read_only_routes(app)
    return app
