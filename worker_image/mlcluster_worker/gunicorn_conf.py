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
