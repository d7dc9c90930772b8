"""`python -m mlcluster_orchestrator`: the orchestrator on BIND (127.0.0.1:8000),
settings from the environment (see app.DEFAULTS); with ORCH_ADMIN_BIND
(host:port) the admin endpoints only there. LOG_LEVEL sets the log level;
ORCH_UVLOOP=0 keeps asyncio's own event loop (uvloop is used when installed)."""
from __future__ import annotations

import asyncio
import logging
import os
import sys

from .app import create_admin_app, create_app, settings_from_env
from .server import serve


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
        app = create_app()
    except RuntimeError as exc:
        print(f"mlcluster orchestrator: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("ORCH_UVLOOP", "1") != "0":
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    admin = (create_admin_app(app), settings["ORCH_ADMIN_BIND"]) if settings["ORCH_ADMIN_BIND"] else None
    asyncio.run(serve(app, os.environ.get("BIND", "127.0.0.1:8000"),
                      header_timeout_s=settings["ORCH_HEADER_TIMEOUT_S"],
                      idle_timeout_s=settings["ORCH_IDLE_TIMEOUT_S"],
                      max_connections=settings["ORCH_MAX_CONNECTIONS"], admin=admin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
