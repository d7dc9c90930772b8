"""`python -m mlcluster_orchestrator`: the orchestrator on BIND (127.0.0.1:8000),
settings from the environment (see settings.DEFAULTS); with ORCH_ADMIN_BIND
(host:port, a loopback address) the admin endpoints are served only there.
LOG_LEVEL sets the log level; ORCH_UVLOOP=0 keeps asyncio's own event loop
(uvloop is used when installed). The listeners are fastserver.py (httptools
on raw protocols) over routes.py."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys

from .fastserver import serve, stop_on_signals
from .routes import Orchestrator, Routes

ADMIN_MAX_CONNECTIONS = 64  # the CLI opens one or two; the cap keeps a local flood from costing file descriptors


def _setup_logging() -> None:
    logger = logging.getLogger("mlcluster")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(os.environ.get("LOG_LEVEL", "info").upper())
    logger.propagate = False


def main() -> int:
    _setup_logging()
    try:
        state = Orchestrator()
    except RuntimeError as exc:
        print(f"mlcluster orchestrator: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("ORCH_UVLOOP", "1") != "0":
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    asyncio.run(run(state, os.environ.get("BIND", "127.0.0.1:8000")))
    return 0


async def run(state: Orchestrator, bind: str) -> None:
    """Serve the public listener on `bind` (and the admin one on ORCH_ADMIN_BIND) until SIGTERM/SIGINT."""
    s = state.settings
    limits = dict(header_timeout_s=s["ORCH_HEADER_TIMEOUT_S"], body_timeout_s=s["ORCH_BODY_TIMEOUT_S"],
                  idle_timeout_s=s["ORCH_IDLE_TIMEOUT_S"], head=state.head_limits)
    await state.start()
    # What start-up made (modules, the registry, prometheus_client's objects) lives as long as the process:
    # out of the collector's sight, a full collection no longer walks it (11 ms every ~9,000 requests
    # otherwise, measured with benchmarks/orchestrator_python.py: 1.2 us a request, and a pause).
    gc.freeze()
    stop = stop_on_signals()
    listeners = [serve(Routes(state, admin=not state.admin_bind), bind, max_connections=s["ORCH_MAX_CONNECTIONS"],
                       stop=stop, ssl_context=state.ssl_context, **limits)]
    if state.admin_bind:
        listeners.append(serve(Routes(state, public=False), state.admin_bind,
                               max_connections=ADMIN_MAX_CONNECTIONS, stop=stop, **limits))
    try:
        await asyncio.gather(*listeners)
    finally:
        await state.stop()


if __name__ == "__main__":
    sys.exit(main())
