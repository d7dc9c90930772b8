"""What the orchestrator itself costs: throughput and added latency.

Starts real processes on loopback: N worker containers in the overhead-test
mode (no model; each answers after a fixed service time) and one orchestrator
(gunicorn, as in production), then measures with closed-loop clients:

  1. direct      C clients, each calling its own worker: the baseline latency.
  2. at capacity C clients through the orchestrator (no queueing):
                 added latency = orchestrator percentile - direct percentile.
  3. loaded      K clients (K > C) through the orchestrator: throughput against
                 the ideal C / service time, and latency minus queue wait.
  4. pass-through  workers answering at once (service time 0): the most
                 requests per second the orchestrator passes on; and, for
                 scale, the same clients calling those workers directly.

In phase 3 every container is busy from one grant to its release, so
throughput = C / (service time + the serving path's cost per request); the
report splits that cost into what a direct call to a worker already costs
(the worker's own HTTP stack) and what the orchestrator adds.

    python benchmarks/orchestrator_overhead.py [--seconds 10] [--json]

The clients run on the same machine as everything else (on a 2-core machine
they compete with the orchestrator and workers for the CPUs), so the figures
are a lower bound on what the orchestrator manages on its own. Each client is
a thread with one keep-alive HTTP connection (http.client: the cheapest
client Python has), so the clients' own cost stays small.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlcluster import services
from mlcluster.deploy.localhost import free_port

TOKEN = "benchmark-token"


# -- statistics ---------------------------------------------------------------
def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (1..100 -> p95 = 95)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Stats:
    """Collect one phase's results, then summarise them (times in ms)."""
    latencies_ms: list[float] = field(default_factory=list)
    net_ms: list[float] = field(default_factory=list)  # latency minus the orchestrator's queue wait
    errors: int = 0
    started: float = 0.0
    ended: float = 0.0

    def add(self, latency_ms: float, queue_ms: float | None = None) -> None:
        self.latencies_ms.append(latency_ms)
        if queue_ms is not None:
            self.net_ms.append(latency_ms - queue_ms)

    def summary(self) -> dict:
        lat, net = sorted(self.latencies_ms), sorted(self.net_ms)
        seconds = self.ended - self.started
        out = {
            "requests": len(lat), "errors": self.errors, "seconds": round(seconds, 2),
            "rps": round(len(lat) / seconds, 1) if seconds > 0 else math.nan,
            "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
        }
        if net:
            out.update(net_p50_ms=round(percentile(net, 50), 2), net_p99_ms=round(percentile(net, 99), 2))
        return out


# -- clients ------------------------------------------------------------------
def _client(host: str, port: int, path: str, stats: Stats, lock: threading.Lock,
            start: threading.Event, stop: threading.Event, measure: threading.Event) -> None:
    """One closed-loop client: send, wait for the answer, send again."""
    body = b"{}"
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    conn = http.client.HTTPConnection(host, port, timeout=60)
    start.wait()
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=60)
            ok, data = False, b""
        elapsed_ms = (time.perf_counter() - t0) * 1000
        if not measure.is_set():
            continue
        queue_ms = json.loads(data).get("queue_ms") if ok else None
        with lock:
            if ok:
                stats.add(elapsed_ms, queue_ms)
            else:
                stats.errors += 1
    conn.close()


def run_phase(targets: list[tuple[str, int, str]], seconds: float, warmup: float) -> dict:
    """Run one closed-loop client per target for `warmup` + `seconds`."""
    stats, lock = Stats(), threading.Lock()
    start, stop, measure = threading.Event(), threading.Event(), threading.Event()
    threads = [threading.Thread(target=_client, args=(h, p, path, stats, lock, start, stop, measure), daemon=True)
               for h, p, path in targets]
    for t in threads:
        t.start()
    start.set()
    time.sleep(warmup)
    stats.started = time.perf_counter()
    measure.set()
    time.sleep(seconds)
    measure.clear()
    stats.ended = time.perf_counter()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    return stats.summary()


# -- services -----------------------------------------------------------------
class Processes:
    """Services started in their own process groups; `stop_all()` ends exactly them."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.procs, self.logs = log_dir, [], []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        self.logs.append(log)
        proc = subprocess.Popen(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1", LOG_LEVEL="warning", **env),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGINT (gunicorn's quick shutdown) to every group, SIGKILL to any that linger."""
        running = [p for p in self.procs if p.poll() is None]
        for sig, grace in ((signal.SIGINT, 3.0), (signal.SIGKILL, 10.0)):
            for proc in running:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            for proc in running:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            running = [p for p in running if p.poll() is None]
        self.procs.clear()
        for log in self.logs:
            log.close()
        self.logs.clear()


def _call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Authorization": f"Bearer {TOKEN}",
                                                       "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def wait_until(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def start_workers(procs: Processes, count: int, service_ms: float) -> list[int]:
    ports = [free_port() for _ in range(count)]
    for i, port in enumerate(ports):
        env = services.worker_env(model="overhead-test", port=port, token="", worker_id=f"w{i}",
                                  service_ms=service_ms)
        procs.start(f"worker-{service_ms:g}ms-{i}", services.worker_command(), env)
    for port in ports:
        wait_until(lambda: _call(port, "GET", "/ready")[0] == 200, f"worker on port {port}")
    return ports


def start_orchestrator(procs: Processes, worker_ports: list[int]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = services.orchestrator_env(port=port, token=TOKEN)
    proc = procs.start(f"orchestrator-{port}", services.orchestrator_command(), env)
    wait_until(lambda: _call(port, "GET", "/health_check")[0] == 200, "the orchestrator")
    status, answer = _call(port, "POST", "/workers",
                           {"containers": [{"host": "127.0.0.1", "port": p} for p in worker_ports]})
    if status != 201:
        raise SystemExit(f"registering workers failed: {status} {answer}")
    wait_until(lambda: all(c["status"] == "free" for c in _call(port, "GET", "/status")[1]["containers"]),
               "all containers free")
    return proc, port


# -- the benchmark ------------------------------------------------------------
def measure(args: argparse.Namespace, log_dir: Path) -> dict:
    procs = Processes(log_dir)
    try:
        workers = start_workers(procs, args.containers, args.service_ms)
        _, orch_port = start_orchestrator(procs, workers)

        def run(targets: list[tuple[str, int, str]]) -> dict:
            return run_phase(targets, args.seconds, args.warmup)
        direct = run([("127.0.0.1", p, "/run_model") for p in workers])
        at_capacity = run([("127.0.0.1", orch_port, "/new_request")] * args.containers)
        loaded = run([("127.0.0.1", orch_port, "/new_request")] * args.clients)
        procs.stop_all()  # a fresh set for the pass-through phases
        fast = start_workers(procs, args.containers, 0)
        _, orch_port = start_orchestrator(procs, fast)
        passthrough = run([("127.0.0.1", orch_port, "/new_request")] * args.clients)
        direct_fast = run([("127.0.0.1", fast[i % len(fast)], "/run_model") for i in range(args.clients)])
    finally:
        procs.stop_all()
    ideal = args.containers * 1000 / args.service_ms
    return {
        "setup": {"containers": args.containers, "service_ms": args.service_ms, "clients": args.clients,
                  "seconds_per_phase": args.seconds, "cpus": os.cpu_count()},
        "direct": direct, "at_capacity": at_capacity, "loaded": loaded,
        "passthrough": passthrough, "direct_passthrough": direct_fast,
        "ideal_rps": ideal,
        "throughput_pct_of_ideal": round(100 * loaded["rps"] / ideal, 1),
        "added_p50_ms": round(at_capacity["p50_ms"] - direct["p50_ms"], 2),
        "added_p99_ms": round(at_capacity["p99_ms"] - direct["p99_ms"], 2),
        "loaded_added_p50_ms": round(loaded["net_p50_ms"] - direct["p50_ms"], 2),
        "loaded_added_p99_ms": round(loaded["net_p99_ms"] - direct["p99_ms"], 2),
        # Each container is busy from one grant to its release: service time plus
        # what the serving path costs per request (the worker's HTTP stack included).
        "loaded_cycle_overhead_ms": round(args.containers * 1000 / loaded["rps"] - args.service_ms, 2),
        "worker_overhead_p50_ms": round(direct["p50_ms"] - args.service_ms, 2),
    }


def report(r: dict) -> str:
    s = r["setup"]
    lines = [
        f"orchestrator overhead: {s['containers']} overhead-test containers answering after {s['service_ms']:g} ms, "
        f"{s['seconds_per_phase']:g} s per phase, {s['cpus']} CPUs shared by clients, orchestrator and workers",
        "",
        f"{'phase':<50}{'requests':>9}{'errors':>7}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}",
    ]
    phases = [("direct to workers", "direct", s["containers"]),
              ("through orchestrator", "at_capacity", s["containers"]),
              ("through orchestrator", "loaded", s["clients"]),
              ("through orchestrator, 0 ms workers", "passthrough", s["clients"]),
              ("direct to 0 ms workers", "direct_passthrough", s["clients"])]
    for label, key, clients in phases:
        p = r[key]
        lines.append(f"{label + f' ({clients} clients)':<50}{p['requests']:>9}{p['errors']:>7}{p['rps']:>9.1f}"
                     f"{p['p50_ms']:>9.2f}{p['p99_ms']:>9.2f}")
    lines += [
        "",
        f"throughput, {s['clients']} clients: {r['loaded']['rps']:.1f} req/s = {r['throughput_pct_of_ideal']:.1f}% "
        f"of the ideal {r['ideal_rps']:g} req/s (target >= 97%)",
        f"  each container's cycle: {s['service_ms']:g} ms of service "
        f"+ {r['loaded_cycle_overhead_ms']:.2f} ms per request for the serving path; "
        f"of that, a direct call to a worker already costs {r['worker_overhead_p50_ms']:.2f} ms (p50)",
        f"added latency at capacity ({s['containers']} clients): p50 {r['added_p50_ms']:+.2f} ms (target < 2 ms), "
        f"p99 {r['added_p99_ms']:+.2f} ms",
        f"added latency with {s['clients']} clients, queue wait excluded: p50 {r['loaded_added_p50_ms']:+.2f} ms, "
        f"p99 {r['loaded_added_p99_ms']:+.2f} ms",
        f"most requests/s passed through (0 ms workers, {s['clients']} clients): {r['passthrough']['rps']:.0f} "
        f"(the same clients calling the workers directly: {r['direct_passthrough']['rps']:.0f})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", type=int, default=8)
    parser.add_argument("--clients", type=int, default=15)
    parser.add_argument("--service-ms", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured time before each phase")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead")
    parser.add_argument("--logs", help="keep the services' logs in this directory")
    args = parser.parse_args(argv)
    if args.clients <= 0 or args.containers <= 0 or args.service_ms <= 0 or args.seconds <= 0:
        parser.error("--containers, --clients, --service-ms and --seconds must be positive")
    with tempfile.TemporaryDirectory(prefix="mlcluster-bench-") as tmp:
        log_dir = Path(args.logs) if args.logs else Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        result = measure(args, log_dir)
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
