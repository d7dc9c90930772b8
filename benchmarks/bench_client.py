"""How fast can `mlcluster bench` send? Its own limit, beside wrk's, in one run.

    /work/venv/bin/python benchmarks/bench_client.py [--seconds 5]

Starts a trivial HTTP endpoint on loopback (asyncio, one process; it answers
/new_request at once with an orchestrator-shaped answer), then measures:
  - wrk (Debian's `wrk`, `apt-get install wrk`) at the same connection counts:
    the endpoint's own ceiling on this machine;
  - `mlcluster bench` (the real command, as a subprocess) in closed loop;
  - `mlcluster bench --rate R` in open loop: the highest rate it still sends
    on time (sent rate within 5% of the offered one).
Both load generators share the machine's cores with the endpoint, so compare
the figures of one run, not across machines. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlcluster.deploy.localhost import free_port

ANSWER = json.dumps({"result": {"model": "trivial", "inference_ms": 0.0}, "queue_ms": 0.0, "total_ms": 0.0,
                     "attempts": 1, "container": {"id": "trivial", "host": "127.0.0.1", "port": 1}}).encode()
STATUS = json.dumps({"containers": [{"id": "trivial", "host": "127.0.0.1", "port": 1, "status": "free"}],
                     "queue": {"depth": 0, "limit": 0}}).encode()
BODY = b'{"text": "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwx"}'
MLCLUSTER = str(Path(sys.executable).with_name("mlcluster"))


# -- the trivial endpoint -------------------------------------------------------
class Trivial(asyncio.Protocol):
    """HTTP/1.1 keep-alive, just enough for POST with Content-Length and GET."""

    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            match = re.search(r"(?im)^content-length:\s*(\d+)", head)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            body = STATUS if head.startswith("GET /status") else ANSWER
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))


def serve(port: int) -> None:
    async def main():
        server = await asyncio.get_running_loop().create_server(Trivial, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()
    asyncio.run(main())


# -- the measurements -----------------------------------------------------------
def wait_listening(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the trivial endpoint did not start")


def run_wrk(url: str, connections: int, seconds: float, tmp: Path) -> float | None:
    if not shutil.which("wrk"):
        return None
    script = tmp / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = '{BODY.decode()}'\n")
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-s", str(script),
                          url + "/new_request"], capture_output=True, text=True, timeout=seconds + 30).stdout
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    return float(match.group(1)) if match else None


def run_bench(url: str, args: list[str], tmp: Path) -> tuple[dict, float]:
    """The real command; returns its JSON result and its CPU seconds."""
    result_file = tmp / "result.json"
    start = os.times()
    subprocess.run([MLCLUSTER, "bench", "--url", url, "--warmup", "50", "--json", str(result_file), *args],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    end = os.times()
    cpu = (end.children_user - start.children_user) + (end.children_system - start.children_system)
    return json.loads(result_file.read_text()), cpu


def highest_open_rate(url: str, seconds: float, tmp: Path, rates: list[int]) -> list[tuple]:
    rows = []
    for rate in rates:
        data, cpu = run_bench(url, ["--rate", str(rate), "--duration", str(seconds)], tmp)
        delay = data["breakdown_ms"]["send_delay"]
        rows.append((rate, data["sent_rps"], data["throughput_rps"], delay["p99"], data["latency_ms"]["p99"],
                     cpu / max(1, data["requests"]) * 1e6))
        if not data["sent_rps"] or data["sent_rps"] < 0.95 * rate:
            break
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], start_new_session=True)
    try:
        wait_listening(port)
        with tempfile.TemporaryDirectory() as tmp:
            report(url, args.seconds, Path(tmp))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


def report(url: str, seconds: float, tmp: Path) -> None:
    print(f"machine: {os.cpu_count()} cores; trivial endpoint {url}; {seconds:g} s per measurement\n")
    print("closed loop (requests per second):")
    print(f"{'connections':>12} {'wrk':>10} {'mlcluster bench':>16} {'bench / wrk':>12} {'CPU µs/req*':>12}")
    for connections in (1, 15, 64):
        wrk = run_wrk(url, connections, seconds, tmp)
        data, cpu = run_bench(url, ["--concurrency", str(connections), "--duration", str(seconds)], tmp)
        ours = data["throughput_rps"]
        share = f"{ours / wrk:.2f}" if wrk else "-"
        print(f"{connections:>12} {wrk or float('nan'):>10.0f} {ours:>16.0f} {share:>12} "
              f"{cpu / max(1, data['requests']) * 1e6:>12.0f}")
    print("\nopen loop, constant arrivals (stops at the first rate it cannot send on time):")
    print(f"{'offered':>8} {'sent':>8} {'answered':>9} {'send delay p99 ms':>18} {'latency p99 ms':>15} "
          f"{'CPU µs/req*':>11}")
    rates = [250, 500, 1000, 2000, 3000, 4000, 6000]
    for rate, sent, answered, delay, p99, cpu_us in highest_open_rate(url, seconds, tmp, rates):
        print(f"{rate:>8} {sent or 0:>8.0f} {answered:>9.0f} {delay:>18.2f} {p99:>15.2f} {cpu_us:>11.0f}")
    print("\n* CPU of the whole `mlcluster bench` process (start-up and warm-up included) per measured request.")


if __name__ == "__main__":
    main()
