"""The orchestrator's dispatch beside HAProxy's, on the same lightweight
containers (benchmarks/light_container.py: capacity 1, fixed service time,
counting their own concurrency), loaded by wrk. Needs `haproxy` and `wrk`
(Debian's packages: `sudo .ci/setup-bench.sh`).

    python benchmarks/dispatch.py [--seconds 10]

Phases (each --seconds long, after a short warm-up), as in issue 13:
  P1  8 x 50 ms, 15 clients: throughput / ideal (160/s), beside HAProxy's
  P2  4 x 50 ms + 4 x 150 ms, 15 clients: throughput / ideal, p99 / HAProxy's
  P3  instant containers, 1 client: p50 added over calling a container directly
      (three alternating rounds of direct, HAProxy, orchestrator, each a third
      of --seconds: at one request in flight the figure is mostly how fast this
      VM wakes an idle process, which drifts; the median round is reported)
  P4  instant containers, 64 clients: throughput / HAProxy's, p99 (three
      alternating rounds of HAProxy and orchestrator, the median pair reported)
  slow clients: instant containers, 15 clients, p50 with 2,000 half-sent
      headers and 2,000 idle connections held open at the orchestrator, beside
      the p50 without them
Every phase reports the largest concurrency any container saw (must be 1).
HAProxy: `balance leastconn`, `maxconn 1` per server, `timeout queue`, one thread
(with two it sometimes puts two requests in one container). Figures from a
shared machine are noisy: compare the ratios, which come from the same run.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOKEN = "bench-token"
CONTAINERS = 8
LUA = 'wrk.method = "POST"\nwrk.body = \'{"text": "hello"}\'\nwrk.headers["Content-Type"] = "application/json"\n'


@dataclass
class Load:
    rate: float  # answered requests per second
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers and socket errors
    max_concurrency: int = 0  # the most requests any container held at once
    cpu_us: tuple[float, float] = (0.0, 0.0)  # the dispatcher's CPU per request (user, system), when measured


def cpu_seconds(pid: int) -> tuple[float, float]:
    """A process's CPU time so far (user, system), from /proc."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


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
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


class Bench:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[subprocess.Popen, str] = {}  # each process and its log name
        self.tmp = Path(tempfile.mkdtemp(prefix="mlc-dispatch-"))
        self.lua = self.tmp / "post.lua"
        self.lua.write_text(LUA)
        self.ports = [free_port() for _ in range(CONTAINERS)]

    def start(self, cmd: list[str], env: dict | None = None, log: str = "") -> subprocess.Popen:
        out = open(self.tmp / log, "wb") if log else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        self.logs[proc] = log
        return proc

    def pid(self, log: str) -> int:
        """The pid of the service started with this log name ("haproxy", "orchestrator")."""
        return next(p.pid for p, name in self.logs.items() if name == f"{log}.log")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> "Bench":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        """Stop every process; keep the logs folder (and say where) only after a failure."""
        if kind is not None:
            print(f"failed; the services' logs are in {self.tmp}", file=sys.stderr)
        self.stop()
        if kind is None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the three setups ---------------------------------------------------
    def start_containers(self) -> None:
        half = CONTAINERS // 2  # two processes: one event loop would cap the instant phases
        for group in (self.ports[:half], self.ports[half:]):
            self.start([sys.executable, str(HERE / "light_container.py"), *map(str, group)], log="containers.log")
        for p in self.ports:
            wait_port(p)

    def configure(self, service_ms: list[float]) -> None:
        for port, ms in zip(self.ports, service_ms, strict=True):
            requests.post(f"http://127.0.0.1:{port}/config?ms={ms}", timeout=5).raise_for_status()

    def max_concurrency(self) -> int:
        return max(requests.get(f"http://127.0.0.1:{p}/stats", timeout=5).json()["max_concurrency"]
                   for p in self.ports)

    def haproxy_config(self, frontends: dict[str, str], global_extra: str = "") -> Path:
        """HAProxy in front of the containers (leastconn, `maxconn 1` each, one thread), with
        these frontends (name -> its `bind` line's arguments); the file's path."""
        servers = "\n".join(f"  server c{i} 127.0.0.1:{p} maxconn 1" for i, p in enumerate(self.ports))
        fronts = "".join(f"frontend {name}\n  bind {bind}\n  default_backend b\n" for name, bind in frontends.items())
        cfg = self.tmp / "haproxy.cfg"
        cfg.write_text(f"""global
  nbthread 1
  maxconn 9000
{global_extra}defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout queue 30s
  timeout http-request 10s
  timeout http-keep-alive 30s
{fronts}backend b
  balance leastconn
{servers}
""")
        return cfg

    def start_haproxy(self) -> str:
        port = free_port()
        cfg = self.haproxy_config({"f": f"127.0.0.1:{port}"})
        self.start(["haproxy", "-db", "-f", str(cfg)], log="haproxy.log")
        wait_port(port)
        return f"http://127.0.0.1:{port}/run_model"

    def start_orchestrator(self) -> str:
        port = free_port()
        env = {"BIND": f"127.0.0.1:{port}", "ORCH_TOKEN": TOKEN, "ORCH_HEALTH_INTERVAL_S": "1",
               "PYTHONPATH": str(ROOT / "orchestrator_image"),
               # hold the slow phase's half-sent headers for the whole phase (default 10 s)
               "ORCH_HEADER_TIMEOUT_S": "600", "ORCH_IDLE_TIMEOUT_S": "600"}
        self.start([sys.executable, "-m", "mlcluster_orchestrator"], env, log="orchestrator.log")
        wait_port(port)
        url = f"http://127.0.0.1:{port}"
        containers = [{"id": f"c{i}", "host": "127.0.0.1", "port": p} for i, p in enumerate(self.ports)]
        requests.post(url + "/workers", json={"containers": containers},
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).raise_for_status()
        deadline = time.monotonic() + 20
        while any(c["status"] != "free" for c in requests.get(url + "/status", timeout=5).json()["containers"]):
            if time.monotonic() > deadline:
                raise RuntimeError("the orchestrator's containers did not become free")
            time.sleep(0.1)
        return url + "/new_request"

    # -- load ---------------------------------------------------------------
    def wrk(self, url: str, connections: int, seconds: float | None = None) -> Load:
        """A closed loop of `connections` clients (wrk gives each thread
        connections / threads, so threads divide the connections exactly)."""
        threads = next(t for t in (3, 2, 1) if connections % t == 0 and t <= connections)
        duration = max(1, round(seconds or self.seconds))
        out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
                              "-s", str(self.lua), url], capture_output=True, text=True, check=True).stdout
        lat = {q: _ms(v, u) for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
        errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
        errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        return Load(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), lat["50"], lat["99"], errors)

    def phase(self, url: str, connections: int, pid: int | None = None, seconds: float | None = None) -> Load:
        """One measured phase; with `pid`, also that process's CPU per answered request."""
        self.wrk(url, connections, 1)  # warm-up, uncounted
        self.configure(self._service_ms)  # zero the counters
        before = cpu_seconds(pid) if pid else (0.0, 0.0)
        load = self.wrk(url, connections, seconds)
        if pid:
            after, answered = cpu_seconds(pid), load.rate * max(1, round(seconds or self.seconds))
            load.cpu_us = tuple((a - b) / answered * 1e6 for a, b in zip(after, before))
        load.max_concurrency = self.max_concurrency()
        return load

    def set_service(self, service_ms: list[float]) -> None:
        self._service_ms = service_ms
        self.configure(service_ms)


def hold_slow_clients(port: int, half: int, idle: int) -> list[socket.socket]:
    socks = []
    for i in range(half + idle):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i < half:
            s.sendall(b"POST /new_request HTTP/1.1\r\nHost: o\r\nContent-Type: appl")
        socks.append(s)
    return socks


def row(name: str, load: Load, extra: str = "") -> str:
    return (f"| {name} | {load.rate:,.1f} | {load.p50_ms:.2f} | {load.p99_ms:.2f} | {load.max_concurrency} | "
            f"{load.errors} | {extra} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured phase")
    parser.add_argument("--slow", type=int, default=2000, help="half-sent and idle connections each, slow phase")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    lines = ["| phase | req/s | p50 ms | p99 ms | max conc. | errors | ratio (target) |",
             "|---|---|---|---|---|---|---|"]
    with Bench(args.seconds) as bench:
        bench.start_containers()
        haproxy, orch = bench.start_haproxy(), bench.start_orchestrator()
        direct = f"http://127.0.0.1:{bench.ports[0]}/run_model"

        bench.set_service([50] * 8)
        ideal = 8 / 0.05
        h, o = bench.phase(haproxy, 15), bench.phase(orch, 15)
        lines += [row("P1 HAProxy, 8 x 50 ms, 15 clients", h, f"{h.rate / ideal:.3f} of ideal"),
                  row("P1 orchestrator", o, f"{o.rate / ideal:.3f} of ideal; {o.rate / ideal - h.rate / ideal:+.3f} "
                                            f"vs HAProxy (no worse than -0.005)")]

        bench.set_service([50] * 4 + [150] * 4)
        ideal = 4 / 0.05 + 4 / 0.15
        h, o = bench.phase(haproxy, 15), bench.phase(orch, 15)
        lines += [row("P2 HAProxy, 4 x 50 + 4 x 150 ms, 15 clients", h, f"{h.rate / ideal:.3f} of ideal"),
                  row("P2 orchestrator", o, f"{o.rate / ideal:.3f} of ideal (>= 0.97); p99 "
                                            f"{o.p99_ms / h.p99_ms:.3f} x HAProxy's (<= 1.05)")]

        bench.set_service([0] * 8)
        rounds = [[bench.phase(url, 1, seconds=max(1.0, args.seconds / 3)) for url in (direct, haproxy, orch)]
                  for _ in range(3)]
        added_h = sorted(h.p50_ms - d.p50_ms for d, h, _ in rounds)
        added_o = sorted(o.p50_ms - d.p50_ms for d, _, o in rounds)
        d, _, o = sorted(rounds, key=lambda r: r[2].p50_ms - r[0].p50_ms)[1]  # the orchestrator's median round
        h = sorted(rounds, key=lambda r: r[1].p50_ms - r[0].p50_ms)[1][1]  # HAProxy's median round
        lines += [row("P3 a container directly, instant, 1 client", d),
                  row("P3 HAProxy", h, f"+{added_h[1]:.3f} ms p50 (rounds {', '.join(f'{a:+.3f}' for a in added_h)})"),
                  row("P3 orchestrator", o, f"+{added_o[1]:.3f} ms p50 (<= 0.5; rounds "
                                            f"{', '.join(f'{a:+.3f}' for a in added_o)})")]

        pairs = [(bench.phase(haproxy, 64, bench.pid("haproxy"), seconds=max(1.0, args.seconds / 3)),
                  bench.phase(orch, 64, bench.pid("orchestrator"), seconds=max(1.0, args.seconds / 3)))
                 for _ in range(3)]
        ratios = sorted(o.rate / h.rate for h, o in pairs)
        h, o = sorted(pairs, key=lambda p: p[1].rate / p[0].rate)[1]  # the median pair
        lines += [row("P4 HAProxy, instant, 64 clients", h, "CPU %.0f + %.0f us/request (user + system)" % h.cpu_us),
                  row("P4 orchestrator", o, f"{ratios[1]:.3f} x HAProxy's req/s (>= 0.4; rounds "
                                            f"{', '.join(f'{r:.3f}' for r in ratios)}); p99 <= 50 ms; "
                                            "CPU %.0f + %.0f us/request" % o.cpu_us)]

        quiet = bench.phase(orch, 15)
        held = hold_slow_clients(int(orch.split(":")[2].split("/")[0]), args.slow, args.slow)
        try:
            busy = bench.phase(orch, 15)
        finally:
            for s in held:
                s.close()
        lines += [row("slow: orchestrator, instant, 15 clients", quiet),
                  row(f"slow: same, {args.slow:,} half-sent + {args.slow:,} idle connections open", busy,
                      f"p50 {busy.p50_ms - quiet.p50_ms:+.2f} ms (within 100)")]
    print(f"{CONTAINERS} light containers, {args.seconds:g} s per phase, wrk; "
          f"HAProxy {subprocess.run(['haproxy', '-v'], capture_output=True, text=True).stdout.split()[2]} (nbthread 1)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
