"""`python -m mlcluster_orchestrator`: the orchestrator on BIND (127.0.0.1:8000),
settings from the environment (see app.DEFAULTS). LOG_LEVEL sets the log level;
ORCH_UVLOOP=0 keeps asyncio's own event loop (uvloop is used when installed).
The listener is fastserver.py (httptools on raw protocols) over routes.py."""
from __future__ import annotations

import asyncio
import logging
import os
import sys

from .app import settings_from_env
from .fastserver import serve
from .routes import Orchestrator, Routes


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
        settings = settings_from_env()
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
    asyncio.run(run(state, settings))
    return 0


async def run(state: Orchestrator, settings: dict) -> None:
    await state.start()
    try:
        await serve(Routes(state, admin=True), os.environ.get("BIND", "127.0.0.1:8000"),
                    header_timeout_s=settings["ORCH_HEADER_TIMEOUT_S"], body_timeout_s=settings["ORCH_BODY_TIMEOUT_S"],
                    idle_timeout_s=settings["ORCH_IDLE_TIMEOUT_S"], max_connections=settings["ORCH_MAX_CONNECTIONS"])
    finally:
        await state.stop()


if __name__ == "__main__":
    sys.exit(main())
