"""gunicorn settings for the worker: one process (one model in memory), a few
threads so /ready and /metrics answer while a forward pass runs."""
import os

bind = os.environ.get("BIND", "127.0.0.1:5000")
workers = 1
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = 120  # model loading happens in a thread, so this only guards hung requests
graceful_timeout = 10
keepalive = 30
accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
control_socket_disable = True  # gunicorn >= 25 would share one socket path between all our services
loglevel = os.environ.get("LOG_LEVEL", "info")
