"""The orchestrator's HTTP face: thin Flask glue over the scheduler and dispatcher.

    ORCH_TOKEN=... gunicorn -c python:mlcluster_orchestrator.gunicorn_conf 'mlcluster_orchestrator.app:create_app()'
"""
from __future__ import annotations

import hmac
import logging
import os
import time

from flask import Flask, Response, abort, jsonify, request
from werkzeug.exceptions import HTTPException

from . import validation
from .dispatcher import Dispatcher
from .health import HealthChecker, keep_registry_in
from .metrics import CONTENT_TYPE, Metrics
from .scheduler import Scheduler

log = logging.getLogger("mlcluster.orchestrator")


def _setup_logging() -> None:
    """Our log lines go to stderr (gunicorn's error log), once per process."""
    logger = logging.getLogger("mlcluster")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

DEFAULTS = {
    "ORCH_TOKEN": "",
    "ORCH_QUEUE_LIMIT": 100,
    "ORCH_QUEUE_TIMEOUT_S": 30.0,
    "ORCH_FORWARD_TIMEOUT_S": 30.0,
    "ORCH_MAX_ATTEMPTS": 3,
    "ORCH_HEALTH_INTERVAL_S": 1.0,
    "ORCH_STATUS_FILE": "",
    "ORCH_MAX_BODY_BYTES": 1 << 20,
    "ORCH_MAX_TEXTS": 64,  # texts per request, as the worker's MAX_BATCH
    "ORCH_LAB_PORTS": "5000,5001",  # what /receive_ips_from_workers assumes per IP
}


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


def read_body(limit: int) -> bytes:
    """The request body; 413 past `limit` bytes. Werkzeug's own limit would cut
    a chunked body at the limit silently, so one byte more is read to tell."""
    if request.content_length is not None and request.content_length > limit:
        abort(413)
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        abort(413)
    return data


def _checked(check, *args):
    """Run a validation check; its BadRequest becomes a 400 with its sentence."""
    try:
        return check(*args)
    except validation.BadRequest as exc:
        abort(400, str(exc))


def create_app(config: dict | None = None) -> Flask:
    settings = settings_from_env()
    settings.update(config or {})
    _setup_logging()
    token = settings["ORCH_TOKEN"]
    if not token:
        raise RuntimeError("ORCH_TOKEN is not set: the orchestrator needs a token for its admin endpoints")
    app = Flask(__name__)
    max_body = settings["ORCH_MAX_BODY_BYTES"]
    ports_per_ip = lab_ports(settings["ORCH_LAB_PORTS"])
    started = time.monotonic()

    scheduler = Scheduler(queue_limit=settings["ORCH_QUEUE_LIMIT"])
    telemetry = Metrics(scheduler)
    dispatcher = Dispatcher(scheduler, queue_timeout_s=settings["ORCH_QUEUE_TIMEOUT_S"],
                            forward_timeout_s=settings["ORCH_FORWARD_TIMEOUT_S"],
                            max_attempts=settings["ORCH_MAX_ATTEMPTS"], on_event=telemetry.on_event)
    if settings["ORCH_STATUS_FILE"]:
        keep_registry_in(settings["ORCH_STATUS_FILE"], scheduler)
    health = HealthChecker(scheduler, interval_s=settings["ORCH_HEALTH_INTERVAL_S"])
    if settings["ORCH_HEALTH_INTERVAL_S"] > 0:
        health.start()
    app.extensions["mlcluster"] = {"scheduler": scheduler, "dispatcher": dispatcher, "health": health,
                                   "metrics": telemetry}

    def require_token() -> None:
        given = request.headers.get("Authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
            abort(401, "this endpoint needs 'Authorization: Bearer <token>' with the cluster's token")

    def register(specs: list[dict]):
        try:
            added = [scheduler.add(s["host"], s["port"], s["capacity"], id=s["id"], healthy=False) for s in specs]
        except ValueError as exc:
            abort(409, str(exc))
        health.probe_soon(added)
        log.info("registered %s", ", ".join(f"{c.id}={c.host}:{c.port}" for c in added))
        response = jsonify(registered=[c.describe() for c in added])
        response.status_code = 201
        return response

    @app.errorhandler(HTTPException)
    def json_error(exc: HTTPException):
        if request.path == "/new_request":
            telemetry.answered(exc.code)
            telemetry.errors.labels(kind="bad_request").inc()
        message = f"the body is over the {max_body}-byte limit" if exc.code == 413 else exc.description
        response = jsonify(error=message, status=exc.code)
        response.status_code = exc.code or 500
        if exc.code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.post("/new_request")
    def new_request():
        body = read_body(max_body)
        _checked(validation.inference_request, body, settings["ORCH_MAX_TEXTS"])
        outcome = dispatcher.handle(body)
        telemetry.answered(outcome.status)
        response = jsonify(outcome.body)
        response.status_code = outcome.status
        response.headers.update(outcome.headers)
        return response

    @app.post("/workers")
    def add_workers():
        require_token()
        return register(_checked(validation.container_specs, read_body(max_body)))

    @app.delete("/workers/<container_id>")
    def remove_worker(container_id: str):
        require_token()
        try:
            container = scheduler.drain(container_id)
        except KeyError:
            abort(404, f"no container {container_id!r} is registered")
        # With nothing in flight it has left the registry already.
        return jsonify(draining=container.id, in_flight=container.in_flight, removed=container.in_flight == 0)

    @app.post("/receive_ips_from_workers")
    def receive_ips():
        """The lab's contract: a JSON list of worker IPs, two containers each."""
        require_token()
        ips = _checked(validation.worker_ips, read_body(max_body))
        return register([{"host": ip, "port": port, "capacity": 1, "id": None} for ip in ips for port in ports_per_ip])

    @app.get("/workers_info")
    def workers_info():
        info = {c.id: {"ip": c.host, "port": c.port, "status": "busy" if c.in_flight else "free"}
                for c in scheduler.containers()}
        return jsonify({"workers info": info})

    @app.get("/status")
    def status():
        snapshot = scheduler.snapshot()
        snapshot["uptime_s"] = round(time.monotonic() - started, 1)
        return jsonify(snapshot)

    @app.get("/health_check")
    def health_check():
        return jsonify(status="alive")

    @app.get("/metrics")
    def metrics():
        return Response(telemetry.exposition(), mimetype=CONTENT_TYPE)

    return app
