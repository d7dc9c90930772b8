"""gunicorn settings for the worker: one process (one model in memory), a few
threads so /ready and /metrics answer while a forward pass runs, and at least
the batch's capacity plus a few, so a full batch never starves them."""
import os

from mlcluster_worker.config import resolve_backend, resolve_batching, settings_from_env

try:
    _settings = settings_from_env()
    _capacity = resolve_batching(_settings, resolve_backend(_settings)).max_requests
except RuntimeError:  # the app reports a bad setting itself, with a clear line
    _capacity = 1

bind = os.environ.get("BIND", "127.0.0.1:5000")
workers = 1
worker_class = "gthread"
threads = max(int(os.environ.get("GUNICORN_THREADS") or 4), _capacity + 4)
timeout = 120  # model loading happens in a thread, so this only guards hung requests
graceful_timeout = 10
keepalive = 30
accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
control_socket_disable = True  # gunicorn >= 25 would share one socket path between all our services
loglevel = os.environ.get("LOG_LEVEL", "info")
# Request heads bounded as the orchestrator bounds them (gunicorn 27 answers 414 and 431, then closes).
# gunicorn has no limit on the whole header block: it reads a head until its end or until
# fields x (field size + 2) bytes, and only then checks the fields. With 100 fields of 4 KB that
# is 400 KB read per connection, and 2,000 flooding connections kept a normal request waiting
# over 5 s (gthread reads one connection per thread); with 160-byte fields it reads at most
# ~16 KB, as HAProxy's tune.bufsize, and the flood is refused in about a second. Our own headers
# (the signature: ~110 bytes) fit.
limit_request_line = int(os.environ.get("MAX_REQUEST_LINE") or 8190)  # gunicorn's own maximum
limit_request_fields = int(os.environ.get("MAX_HEADER_FIELDS") or 100)
limit_request_field_size = int(os.environ.get("MAX_HEADER_FIELD_BYTES") or 160)
