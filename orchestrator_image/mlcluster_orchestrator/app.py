"""The orchestrator's HTTP face: thin Flask glue over the scheduler and dispatcher.

    ORCH_TOKEN=... gunicorn -c python:mlcluster_orchestrator.gunicorn_conf 'mlcluster_orchestrator.app:create_app()'
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import time

from flask import Flask, Response, abort, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from werkzeug.exceptions import HTTPException

from .dispatcher import Dispatcher
from .health import HealthChecker, load_registry, save_registry
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
    "ORCH_LAB_PORTS": "5000,5001",  # what /receive_ips_from_workers assumes per IP
}
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .075, .1, .25, .5, 1, 2.5, 5, 10, 30)


def settings_from_env(env=os.environ) -> dict:
    settings = dict(DEFAULTS)
    for key, default in DEFAULTS.items():
        if env.get(key, "") != "":
            settings[key] = type(default)(env[key])
    return settings


def _json_body(expected: type):
    try:
        body = json.loads(request.get_data(cache=False) or b"null")
    except (ValueError, UnicodeDecodeError):
        abort(400, "the body must be JSON")
    if not isinstance(body, expected):
        abort(400, f"the body must be a JSON {'list' if expected is list else 'object'}")
    return body


def _container_spec(item) -> dict:
    if not isinstance(item, dict):
        abort(400, "each container must be an object with 'host' and 'port'")
    host, port, capacity = item.get("host"), item.get("port"), item.get("capacity", 1)
    if not isinstance(host, str) or not host or any(ch in host for ch in "/:@ "):
        abort(400, "'host' must be a host name or IP address")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        abort(400, "'port' must be an integer from 1 to 65535")
    if not isinstance(capacity, int) or isinstance(capacity, bool) or not 1 <= capacity <= 64:
        abort(400, "'capacity' must be an integer from 1 to 64")
    cid = item.get("id")
    if cid is not None and (not isinstance(cid, str) or not cid or len(cid) > 64 or "/" in cid):
        abort(400, "'id' must be a short string without '/'")
    return {"host": host, "port": port, "capacity": capacity, "id": cid}


def create_app(config: dict | None = None) -> Flask:
    settings = settings_from_env()
    settings.update(config or {})
    _setup_logging()
    token = settings["ORCH_TOKEN"]
    if not token:
        raise RuntimeError("ORCH_TOKEN is not set: the orchestrator needs a token for its admin endpoints")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings["ORCH_MAX_BODY_BYTES"]
    started = time.time()

    registry = CollectorRegistry()
    requests_total = Counter("orchestrator_requests_total", "new_request answers by HTTP status", ["status"], registry=registry)
    errors_total = Counter("orchestrator_errors_total", "errors by kind", ["kind"], registry=registry)
    latency = Histogram("orchestrator_request_seconds", "time from arrival to answer", registry=registry, buckets=LATENCY_BUCKETS)
    queue_wait = Histogram("orchestrator_queue_wait_seconds", "time spent waiting for a container", registry=registry, buckets=LATENCY_BUCKETS)

    scheduler = Scheduler(queue_limit=settings["ORCH_QUEUE_LIMIT"])
    Gauge("orchestrator_queue_depth", "requests waiting for a container", registry=registry).set_function(lambda: scheduler.queue_depth)
    Gauge("orchestrator_in_flight", "requests being served by a container", registry=registry).set_function(
        lambda: sum(c.in_flight for c in scheduler.containers()))

    def on_event(kind: str, data: dict) -> None:
        if kind == "served":
            latency.observe(data["total_s"])
            queue_wait.observe(data["queue_s"])
        elif kind == "failed":
            errors_total.labels(kind=f"container_{data['kind']}").inc()
        elif kind == "rejected":
            errors_total.labels(kind=data["reason"]).inc()

    dispatcher = Dispatcher(scheduler, queue_timeout_s=settings["ORCH_QUEUE_TIMEOUT_S"],
                            forward_timeout_s=settings["ORCH_FORWARD_TIMEOUT_S"],
                            max_attempts=settings["ORCH_MAX_ATTEMPTS"], on_event=on_event)
    status_file = settings["ORCH_STATUS_FILE"]
    if status_file:
        restored = load_registry(status_file, scheduler)
        if restored:
            log.info("restored %d container(s) from %s", restored, status_file)
        scheduler.on_change = lambda: save_registry(status_file, scheduler)
    health = HealthChecker(scheduler, interval_s=settings["ORCH_HEALTH_INTERVAL_S"])
    if settings["ORCH_HEALTH_INTERVAL_S"] > 0:
        health.start()
    app.extensions["mlcluster"] = {"scheduler": scheduler, "dispatcher": dispatcher, "health": health}

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
            requests_total.labels(status=str(exc.code)).inc()
            errors_total.labels(kind="bad_request").inc()
        response = jsonify(error=exc.description, status=exc.code)
        response.status_code = exc.code or 500
        if exc.code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.post("/new_request")
    def new_request():
        body = request.get_data(cache=False)
        if body.strip():
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                abort(400, "the body must be JSON: {}, {\"text\": \"...\"} or {\"texts\": [...]}")
            if not isinstance(parsed, dict):
                abort(400, "the body must be a JSON object")
        outcome = dispatcher.handle(body)
        requests_total.labels(status=str(outcome.status)).inc()
        response = jsonify(outcome.body)
        response.status_code = outcome.status
        response.headers.update(outcome.headers)
        return response

    @app.post("/workers")
    def add_workers():
        require_token()
        body = _json_body(object)
        items = body.get("containers", [body]) if isinstance(body, dict) else body
        if not isinstance(items, list) or not items:
            abort(400, "send a container object, a list of them, or {\"containers\": [...]}")
        return register([_container_spec(item) for item in items])

    @app.delete("/workers/<container_id>")
    def remove_worker(container_id: str):
        require_token()
        try:
            container = scheduler.drain(container_id)
        except KeyError:
            abort(404, f"no container {container_id!r} is registered")
        return jsonify(draining=container.id, in_flight=container.in_flight)

    @app.post("/receive_ips_from_workers")
    def receive_ips():
        """The lab's contract: a JSON list of worker IPs, two containers each."""
        require_token()
        ips = _json_body(list)
        if not ips:
            abort(400, "send a non-empty JSON list of worker IP addresses")
        for ip in ips:
            try:
                ipaddress.ip_address(ip if isinstance(ip, str) else "")
            except ValueError:
                abort(400, f"{ip!r} is not an IP address")
        ports = [int(p) for p in str(settings["ORCH_LAB_PORTS"]).split(",")]
        return register([{"host": ip, "port": port, "capacity": 1, "id": None} for ip in ips for port in ports])

    @app.get("/workers_info")
    def workers_info():
        info = {c.id: {"ip": c.host, "port": c.port, "status": "busy" if c.in_flight else "free"}
                for c in scheduler.containers()}
        return jsonify({"workers info": info})

    @app.get("/status")
    def status():
        snapshot = scheduler.snapshot()
        snapshot["uptime_s"] = round(time.time() - started, 1)
        return jsonify(snapshot)

    @app.get("/health_check")
    def health_check():
        return jsonify(status="alive")

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return app
