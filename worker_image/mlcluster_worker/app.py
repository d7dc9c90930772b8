"""The worker service: one classifier, served over HTTP.

    gunicorn -c python:mlcluster_worker.gunicorn_conf 'mlcluster_worker.app:create_app()'

Settings come from the environment (see `settings_from_env`), and tests may
pass them, or a ready classifier, to `create_app`.
"""
from __future__ import annotations

import json
import logging
import os
import random
import string
import threading
import time

from flask import Flask, Response, abort, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException

from .model import load_classifier

log = logging.getLogger("mlcluster.worker")


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
    "MODEL": "distilbert-base-uncased",
    "TORCH_THREADS": 1,
    "SERVICE_TIME_MS": 50.0,  # only for MODEL=overhead-test
    "MAX_BATCH": 64,
    "MAX_BODY_BYTES": 1 << 20,
    "WORKER_ID": "",
}


def settings_from_env(env=os.environ) -> dict:
    settings = dict(DEFAULTS)
    for key, default in DEFAULTS.items():
        if key in env and env[key] != "":
            settings[key] = type(default)(env[key])
    return settings


def random_text(length: int = 50) -> str:
    """What the lab sent: 50 random lowercase letters."""
    return "".join(random.choices(string.ascii_lowercase, k=length))


class _State:
    """What the app knows about its model, and its own concurrency."""

    def __init__(self):
        self.classifier = None
        self.error: str | None = None
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = 0


def _parse_texts(max_batch: int) -> tuple[list[str], bool]:
    """The request's texts, and whether it was a batch. Aborts with 400 on bad input."""
    raw = request.get_data(cache=False)
    if not raw.strip():
        return [random_text()], False
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        abort(400, "the body must be JSON: {}, {\"text\": \"...\"} or {\"texts\": [...]}")
    if not isinstance(body, dict):
        abort(400, "the body must be a JSON object")
    unknown = set(body) - {"text", "texts"}
    if unknown:
        abort(400, f"unknown field(s): {', '.join(sorted(unknown))}; expected 'text' or 'texts'")
    if "text" in body and "texts" in body:
        abort(400, "give either 'text' or 'texts', not both")
    if not body:
        return [random_text()], False
    if "text" in body:
        text = body["text"]
        if not isinstance(text, str) or not text.strip():
            abort(400, "'text' must be a non-empty string")
        return [text], False
    texts = body["texts"]
    if not isinstance(texts, list) or not texts:
        abort(400, "'texts' must be a non-empty list of strings")
    if len(texts) > max_batch:
        abort(400, f"'texts' holds {len(texts)} texts; at most {max_batch} per request")
    if not all(isinstance(t, str) and t.strip() for t in texts):
        abort(400, "every item of 'texts' must be a non-empty string")
    return texts, True


def create_app(config: dict | None = None, classifier=None) -> Flask:
    settings = settings_from_env()
    settings.update(config or {})
    _setup_logging()
    app = Flask(__name__)
    app.config.update(settings)
    app.config["MAX_CONTENT_LENGTH"] = settings["MAX_BODY_BYTES"]
    state = _State()
    registry = CollectorRegistry()
    requests_total = Counter("worker_requests_total", "run_model requests by outcome", ["outcome"], registry=registry)
    errors_total = Counter("worker_errors_total", "errors by kind", ["kind"], registry=registry)
    inference = Histogram("worker_inference_seconds", "forward-pass time per request", registry=registry,
                          buckets=(.001, .0025, .005, .01, .025, .05, .075, .1, .25, .5, 1, 2.5, 5, 10))
    in_flight_gauge = Gauge("worker_in_flight", "run_model requests being served", registry=registry)
    ready_gauge = Gauge("worker_ready", "1 once the model is loaded and warmed up", registry=registry)

    def load() -> None:
        try:
            state.classifier = load_classifier(settings["MODEL"], settings["TORCH_THREADS"], settings["SERVICE_TIME_MS"])
            ready_gauge.set(1)
            log.info("model %s loaded and warmed up; ready", state.classifier.name)
        except Exception as exc:  # any failure must leave a clear line, not a crash loop
            state.error = f"model {settings['MODEL']!r} could not be loaded: {type(exc).__name__}: {exc}"
            log.error("NOT READY: %s", state.error)

    if classifier is not None:
        state.classifier = classifier
        ready_gauge.set(1)
    else:
        threading.Thread(target=load, name="model-loader", daemon=True).start()

    @app.errorhandler(HTTPException)
    def json_error(exc: HTTPException):
        if request.path == "/run_model":
            errors_total.labels(kind=str(exc.code)).inc()
        response = jsonify(error=exc.description, status=exc.code)
        response.status_code = exc.code or 500
        return response

    @app.post("/run_model")
    def run_model():
        if state.classifier is None:
            response = jsonify(error=state.error or "model is loading; not ready yet", status=503)
            response.status_code = 503
            response.headers["Retry-After"] = "1"
            return response
        texts, batch = _parse_texts(settings["MAX_BATCH"])
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        in_flight_gauge.inc()
        try:
            start = time.perf_counter()
            results = state.classifier.classify(texts)
            elapsed = time.perf_counter() - start
        except Exception as exc:
            errors_total.labels(kind="inference").inc()
            log.exception("inference failed")
            abort(500, f"inference failed: {type(exc).__name__}")
        finally:
            in_flight_gauge.dec()
            with state.lock:
                state.in_flight -= 1
                state.served += 1
        inference.observe(elapsed)
        requests_total.labels(outcome="ok").inc()
        answer = {"model": state.classifier.name, "inference_ms": round(elapsed * 1000, 3), "worker": settings["WORKER_ID"] or None}
        if batch:
            answer.update(texts=texts, results=results)
        else:
            answer.update(text=texts[0], **results[0])
        return jsonify(answer)

    @app.get("/health_check")
    def health_check():
        return jsonify(status="alive")

    @app.get("/ready")
    def ready():
        if state.classifier is not None:
            return jsonify(ready=True, model=state.classifier.name)
        response = jsonify(ready=False, reason=state.error or "model is loading")
        response.status_code = 503
        return response

    @app.get("/stats")
    def stats():
        with state.lock:
            return jsonify(served=state.served, in_flight=state.in_flight, max_in_flight=state.max_in_flight)

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return app
