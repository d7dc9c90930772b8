"""Ray Serve's side of benchmarks/elastic.py: the same work behind Ray Serve 2.60's HTTP proxy on 127.0.0.1.

A deployment whose replica sleeps the service time and answers `{"container": {"id": <replica id>}}` (the shape
of mlcluster's answer, so the same clients and figures serve both), `max_ongoing_requests=1` (capacity 1),
autoscaling between 1 and --max replicas at a target of 1 ongoing request, with mlcluster's delays ("tuned") or
Ray's defaults (30 s up, 600 s down). Ray is not a dependency of mlcluster; install it into the venv with
    .venv/bin/pip install 'ray[serve]==2.60.*'
Ray runs in this process with its files in a temp dir, no usage stats, loopback only, and is stopped with
serve.shutdown() and ray.shutdown() from here (never `ray stop`); its token auth stays on, with a token
in this process's environment rather than in ~/.ray/auth_token.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path

from elastic_trace import OpenLoop, Sampler, StepFigures, Trace, step_figures

INSTALL = ".venv/bin/pip install 'ray[serve]==2.60.*'"
DEFAULT_DELAYS = (30.0, 600.0)  # Ray Serve's upscale_delay_s and downscale_delay_s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available() -> bool:
    # Only the top-level name: finding ray.serve would import ray before RaySession sets its environment.
    return importlib.util.find_spec("ray") is not None


class RaySession:
    """A local Ray with Serve's HTTP proxy on 127.0.0.1:<free port>; `with RaySession() as ray_serve: ...`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A short path: Ray's socket names must stay under 107 bytes.
        self.tmp = Path(tempfile.mkdtemp(prefix="rayel-", dir="/tmp"))

    def __enter__(self) -> RaySession:
        os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                          RAY_DEDUP_LOGS="0", RAY_SERVE_LOG_TO_STDERR="0")
        if not os.environ.get("RAY_AUTH_TOKEN"):  # Ray's token auth, without writing ~/.ray/auth_token
            os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        import ray
        from ray import serve
        try:
            ray.init(address="local", include_dashboard=False, _temp_dir=str(self.tmp), log_to_driver=False,
                     configure_logging=False, _node_ip_address="127.0.0.1")
            serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        except BaseException:
            ray.shutdown()
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc) -> None:
        import ray
        from ray import serve
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def deploy(self, service_ms: float, most: int, upscale_s: float, downscale_s: float, target: float = 1) -> None:
        """The application "elastic" at /new_request: replicas sleeping `service_ms`, capacity 1, 1..`most`."""
        from ray import serve

        @serve.deployment(max_ongoing_requests=1, ray_actor_options={"num_cpus": 0},
                          autoscaling_config={"min_replicas": 1, "max_replicas": most,
                                              "target_ongoing_requests": target,
                                              "upscale_delay_s": upscale_s, "downscale_delay_s": downscale_s})
        class Container:
            def __init__(self, service_s: float):
                self.service_s = service_s
                self.id = serve.get_replica_context().replica_id.unique_id

            async def __call__(self, request) -> dict:
                await request.json()
                await asyncio.sleep(self.service_s)
                return {"container": {"id": self.id}}

        serve.run(Container.bind(service_ms / 1000), name="elastic", route_prefix="/new_request")

    def replicas(self) -> int:
        """Replicas alive (starting, running or stopping: each holds a process), from Serve's own status."""
        from ray import serve
        return sum(sum(d.replica_states.values())
                   for d in serve.status().applications["elastic"].deployments.values())

    def open_loop(self, at: list[float], service_ms: float, most: int, upscale_s: float, downscale_s: float,
                  target: float) -> tuple[OpenLoop, float, list[tuple[float, int]]]:
        """The open-loop trace `at` on a fresh application; the load, its start and the sampled replica counts."""
        from ray import serve
        self.deploy(service_ms, most, upscale_s, downscale_s, target)
        load, counts = OpenLoop(self.url, at), []
        try:
            with Sampler(self.replicas, counts):
                began = load.start()
                load.wait()
        finally:
            serve.delete("elastic")
        return load, began, counts

    def step(self, label: str, service_ms: float, most: int, upscale_s: float, downscale_s: float,
             before_s: float, window_s: float) -> StepFigures:
        """One load step on a fresh application: 1 client for `before_s`, then `most` clients for `window_s`."""
        from ray import serve
        self.deploy(service_ms, most, upscale_s, downscale_s)
        trace = Trace(self.url)
        try:
            began = time.monotonic()
            trace.clients(1)
            time.sleep(before_s)
            step = time.monotonic()
            trace.clients(most)
            time.sleep(window_s)
        finally:
            trace.finish()
            serve.delete("elastic")
        return step_figures(label, trace, began, step, window_s, 2 * service_ms / 1000, most)
