"""gunicorn settings for the orchestrator.

Exactly one process: the scheduler's state lives in its memory. Every waiting
request holds a thread, so there must be more threads than the queue limit
plus the containers' capacity, or admission control (an immediate 503) could
not answer while the threads are all taken.
"""
import os

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = 1
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "0")) or int(os.environ.get("ORCH_QUEUE_LIMIT", "100")) + 156
# gthread keeps a connection alive only while fewer than worker_connections -
# threads are idle-kept: leave room for callers' kept-alive connections (with
# gunicorn's default of 1000, a queue limit above ~850 closed every connection).
worker_connections = threads + 1000
timeout = 0  # requests legitimately wait in the queue; the app enforces its own time-outs
graceful_timeout = 10
keepalive = 30
backlog = 2048
accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
control_socket_disable = True  # gunicorn >= 25 would share one socket path between all our services
loglevel = os.environ.get("LOG_LEVEL", "info")
