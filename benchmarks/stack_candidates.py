"""Which async stack for the orchestrator: a minimal proxy in each candidate,
in front of one instant asyncio backend, loaded by wrk (Debian's package).

    python benchmarks/stack_candidates.py [--seconds 3]

Each proxy does what the orchestrator's hot path does: read a JSON POST, forward
it over a kept-alive client connection, return the backend's JSON. Printed:
req/s at 64 connections and p50 at 1 connection, for each stack and for the
backend called directly (the same run, so compare ratios).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

BACKEND = textwrap.dedent('''
    import asyncio, sys
    BODY = b'{"label": "POSITIVE"}'
    ANSWER = (b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n%s"
              % (len(BODY), BODY))
    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\\r\\n\\r\\n")
                length = 0
                for line in head.split(b"\\r\\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                writer.write(ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=1024)
        await server.serve_forever()
    asyncio.run(main())
''')

AIOHTTP = textwrap.dedent('''
    import sys, aiohttp
    from aiohttp import web
    if sys.argv[3] == "uvloop":
        import uvloop; uvloop.install()
    async def startup(app):
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    async def new_request(request):
        body = await request.read()
        async with request.app["session"].post(sys.argv[2], data=body,
                                               headers={"Content-Type": "application/json"}) as r:
            return web.Response(body=await r.read(), status=r.status, content_type="application/json")
    app = web.Application()
    app.on_startup.append(startup)
    app.router.add_post("/new_request", new_request)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
''')

STARLETTE = textwrap.dedent('''
    import sys, aiohttp, uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    session = None
    async def new_request(request):
        global session
        if session is None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        body = await request.body()
        async with session.post(sys.argv[2], data=body, headers={"Content-Type": "application/json"}) as r:
            return Response(await r.read(), status_code=r.status, media_type="application/json")
    app = Starlette(routes=[Route("/new_request", new_request, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
                loop=sys.argv[3], http="httptools")
''')

QUART = textwrap.dedent('''
    import asyncio, sys, aiohttp
    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    from quart import Quart, Response, request
    if sys.argv[3] == "uvloop":
        import uvloop; uvloop.install()
    app = Quart(__name__)
    session = None
    @app.post("/new_request")
    async def new_request():
        global session
        if session is None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        body = await request.get_data()
        async with session.post(sys.argv[2], data=body, headers={"Content-Type": "application/json"}) as r:
            return Response(await r.read(), status=r.status, content_type="application/json")
    config = Config()
    config.bind = ["127.0.0.1:" + sys.argv[1]]
    config.accesslog = None
    asyncio.run(serve(app, config))
''')

CANDIDATES = [
    ("aiohttp server + client", AIOHTTP, "asyncio"),
    ("aiohttp server + client, uvloop", AIOHTTP, "uvloop"),
    ("Starlette on Uvicorn (httptools) + aiohttp client", STARLETTE, "asyncio"),
    ("Starlette on Uvicorn (httptools) + aiohttp client, uvloop", STARLETTE, "uvloop"),
    ("Quart on Hypercorn + aiohttp client", QUART, "asyncio"),
]
LUA = os.path.join(tempfile.gettempdir(), f"mlc-stack-post-{os.getpid()}.lua")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], start_new_session=True)


def wrk(url: str, connections: int, seconds: float) -> tuple[float, float]:
    """(req/s, p50 ms) of a wrk POST run."""
    threads = min(connections, 2)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", LUA, url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"50%\s+([\d.]+)(us|ms|s)", out).groups()
    return rate, float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with open(LUA, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = \'{"text": "hello"}\'\n'
                'wrk.headers["Content-Type"] = "application/json"\n')
    backend_port = free_port()
    backend = start(BACKEND, backend_port)
    procs = [backend]
    try:
        wait_port(backend_port)
        rows = [("backend directly", *wrk(f"http://127.0.0.1:{backend_port}/run_model", 64, args.seconds),
                 wrk(f"http://127.0.0.1:{backend_port}/run_model", 1, args.seconds)[1])]
        for name, code, loop in CANDIDATES:
            port = free_port()
            proc = start(code, port, f"http://127.0.0.1:{backend_port}/run_model", loop)
            procs.append(proc)
            wait_port(port)
            url = f"http://127.0.0.1:{port}/new_request"
            wrk(url, 8, 1)  # warm-up
            rate, _ = wrk(url, 64, args.seconds)
            _, p50 = wrk(url, 1, args.seconds)
            rows.append((name, rate, None, p50))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        direct_p50 = rows[0][3]
        print("| stack | req/s, 64 conns | p50 ms, 1 conn | added p50 ms |\n|---|---|---|---|")
        for name, rate, _, p50 in rows:
            print(f"| {name} | {rate:,.0f} | {p50:.3f} | {p50 - direct_p50:+.3f} |")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        os.unlink(LUA)


if __name__ == "__main__":
    main()
