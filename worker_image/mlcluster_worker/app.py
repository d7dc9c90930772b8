"""The worker service: one classifier, served over HTTP.

    gunicorn -c python:mlcluster_worker.gunicorn_conf 'mlcluster_worker.app:create_app()'

Settings come from the environment (see `config.py`), and tests may pass
them, or a ready classifier, to `create_app`. Every answer names the backend
and the forward pass's batch (`batch_size` texts from `batch_requests`
requests); `/ready` gives `backend` and `capacity` (requests the container
takes at once) for the orchestrator's registration.
"""
from __future__ import annotations

import json
import logging
import random
import string
import threading

from flask import Flask, Response, abort, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from werkzeug.exceptions import HTTPException

from .auth import HEADER as SIGNATURE_HEADER, Verifier
from .batching import Batcher
from .config import CHARS_PER_TOKEN, resolve_backend, resolve_batching, settings_from_env, threads
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


def read_body(limit: int) -> bytes:
    """The request body; 413 past `limit` bytes. Werkzeug's own limit would cut
    a chunked body at the limit silently, so one byte more is read to tell."""
    message = f"the body is over the {limit}-byte limit"
    if request.content_length is not None and request.content_length > limit:
        abort(413, message)
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        abort(413, message)
    return data


def random_text(length: int = 50) -> str:
    """What the lab sent: 50 random lowercase letters."""
    return "".join(random.choices(string.ascii_lowercase, k=length))


class _State:
    """What the app knows about its model, and its own concurrency."""

    def __init__(self):
        self.classifier = None
        self.batcher: Batcher | None = None
        self.error: str | None = None
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = 0


def _parse_texts(raw: bytes, max_batch: int, max_chars: int) -> tuple[list[str], bool]:
    """The texts of the request body `raw`, and whether it was a batch. Aborts with 400 on bad
    input (also text that is not valid Unicode, such as a lone surrogate), 413
    on a text over `max_chars` characters.
    `{"payload": ...}` (the lab's body) classifies a random lab text."""
    if not raw.strip():
        return [random_text()], False
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; deep nesting recurses
        abort(400, "the body must be JSON: {}, {\"text\": \"...\"} or {\"texts\": [...]}")
    if not isinstance(body, dict):
        abort(400, "the body must be a JSON object")
    unknown = set(body) - {"text", "texts", "payload"}
    if unknown:
        abort(400, f"unknown field(s): {', '.join(sorted(unknown))}; expected 'text' or 'texts'")
    if len(body) > 1:
        abort(400, f"give one of 'text', 'texts' or 'payload', not {' and '.join(sorted(body))}")
    if not body or "payload" in body:
        return [random_text()], False
    if "text" in body:
        text = body["text"]
        if not isinstance(text, str) or not text.strip():
            abort(400, "'text' must be a non-empty string")
        _check_text(text, "'text'", max_chars)
        return [text], False
    texts = body["texts"]
    if not isinstance(texts, list) or not texts:
        abort(400, "'texts' must be a non-empty list of strings")
    if len(texts) > max_batch:
        abort(400, f"'texts' holds {len(texts)} texts; at most {max_batch} per request")
    if not all(isinstance(t, str) and t.strip() for t in texts):
        abort(400, "every item of 'texts' must be a non-empty string")
    for i, text in enumerate(texts):
        _check_text(text, f"'texts'[{i}]", max_chars)
    return texts, True


def _check_text(text: str, what: str, max_chars: int) -> None:
    if len(text) > max_chars:
        abort(413, f"{what} holds {len(text)} characters; at most {max_chars} (MAX_TEXT_CHARS)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON can carry lone surrogates ("\ud800"); no tokenizer takes them
        abort(400, f"{what} is not valid Unicode (it holds a lone surrogate)")


def create_app(config: dict | None = None, classifier=None) -> Flask:
    settings = settings_from_env()
    settings.update(config or {})
    _setup_logging()
    app = Flask(__name__)
    app.config.update(settings)
    max_body = settings["MAX_BODY_BYTES"]
    backend = resolve_backend(settings)
    batching = resolve_batching(settings, backend)
    n_threads = threads(settings)
    # No WORKER_TOKEN (a hand-run worker): unsigned requests are served, as before.
    verifier = Verifier(settings["WORKER_TOKEN"], settings["SIGNATURE_WINDOW_S"]) if settings["WORKER_TOKEN"] else None
    echo_chars = settings["ECHO_CHARS"]
    state = _State()
    registry = CollectorRegistry()
    requests_total = Counter("worker_requests_total", "run_model requests by outcome", ["outcome"], registry=registry)
    errors_total = Counter("worker_errors_total", "errors by kind", ["kind"], registry=registry)
    inference = Histogram("worker_inference_seconds", "forward-pass time per request", registry=registry,
                          buckets=(.001, .0025, .005, .01, .025, .05, .075, .1, .25, .5, 1, 2.5, 5, 10))
    # Gauges read at scrape time: nothing extra to do per request.
    in_flight_gauge = Gauge("worker_in_flight", "run_model requests being served", registry=registry)
    in_flight_gauge.set_function(lambda: state.in_flight)
    ready_gauge = Gauge("worker_ready", "1 once the model is loaded and warmed up", registry=registry)
    served_ok = requests_total.labels(outcome="ok")

    def serve(classifier) -> None:
        state.batcher = Batcher(classifier.classify, batching.max_requests, batching.wait_ms / 1000.0)
        state.classifier = classifier
        ready_gauge.set(1)

    def load() -> None:
        try:
            serve(load_classifier(settings["MODEL"], backend, n_threads, settings["SERVICE_TIME_MS"]))
            log.info("model %s loaded and warmed up; ready", state.classifier.name)
        except Exception as exc:  # any failure must leave a clear line, not a crash loop
            state.error = f"model {settings['MODEL']!r} could not be loaded: {type(exc).__name__}: {exc}"
            log.error("NOT READY: %s", state.error)

    if classifier is not None:
        serve(classifier)
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
        raw = read_body(max_body)
        refusal = verifier and verifier.check(request.headers.get(SIGNATURE_HEADER), raw)
        if refusal:
            errors_total.labels(kind="401").inc()
            response = jsonify(error=refusal, status=401)
            response.status_code = 401
            response.headers["WWW-Authenticate"] = "Mlcluster-Signature"
            return response
        classifier, batcher = state.classifier, state.batcher
        if classifier is None:
            response = jsonify(error=state.error or "model is loading; not ready yet", status=503)
            response.status_code = 503
            response.headers["Retry-After"] = "1"
            return response
        texts, batch = _parse_texts(raw, settings["MAX_BATCH"], settings["MAX_TEXT_CHARS"])
        # The model reads max_length tokens: what lies far beyond is cut before the tokenizer sees it.
        cut = classifier.max_length * CHARS_PER_TOKEN
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            done = batcher.run([t[:cut] for t in texts])
        except Exception as exc:
            errors_total.labels(kind="inference").inc()
            log.exception("inference failed")
            abort(500, f"inference failed: {type(exc).__name__}")
        finally:
            with state.lock:
                state.in_flight -= 1
        with state.lock:
            state.served += 1
        inference.observe(done.inference_s)
        served_ok.inc()
        answer = {"model": classifier.name, "backend": backend, "inference_ms": round(done.inference_s * 1000, 3),
                  "batch_size": done.batch_texts, "batch_requests": done.batch_requests,
                  "worker": settings["WORKER_ID"] or None}
        if batch:  # a bounded prefix of each text, and its length: never a megabyte back
            answer.update(texts=[t[:echo_chars] for t in texts], text_chars=[len(t) for t in texts],
                          results=done.results)
        else:
            answer.update(text=texts[0][:echo_chars], text_chars=len(texts[0]), **done.results[0])
        return jsonify(answer)

    @app.get("/health_check")
    def health_check():
        return jsonify(status="alive")

    @app.get("/ready")
    def ready():
        if state.classifier is not None:
            return jsonify(ready=True, model=state.classifier.name, backend=backend,
                           capacity=batching.max_requests, batch_wait_ms=batching.wait_ms,
                           threads=state.classifier.threads,
                           torch_threads=getattr(state.classifier, "torch_threads", None))
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
