"""Does `mlcluster bench` slow what it measures? Its figures beside wrk's,
through the same orchestrator, in one run (issue 13, "the bench keeps up").

    python benchmarks/bench_vs_wrk.py [--seconds 5] [--runs 7] [--setups tiny,instant]
                                      [--engines c,python]

Setups, each behind a real orchestrator (`python -m mlcluster_orchestrator`)
on loopback:
  tiny     4 worker containers (a 2 x 2 cluster) serving a tiny DistilBERT
           (real inference, 1 torch thread each), loaded at concurrency 15;
  instant  8 light containers (benchmarks/light_container.py) answering at
           once, loaded by 64 connections.
In each, wrk (Debian's package; -t1 unless --wrk-threads) and the real
`mlcluster bench` command alternate, `--runs` times each, with the same
duration, connections and request body; with two --engines (the compiled
closed loop, `c`, and the Python one, MLCLUSTER_BENCH_ENGINE=python) each
round is wrk and the bench on each, every other round in reverse order
(ABBA: a machine that drifts steadily favours no client). `--engines c,wrk`
runs wrk a second time in place of an engine: the spread of wrk against
itself is the floor under any comparison this machine can make. Prints every run, then per engine the
ratios bench / wrk of throughput and p50 (median, min-max over the rounds) and each
client's CPU per request (the bench's less its start-up: the CPU of a
one-request run). Both clients share the machine with the cluster,
which is the point: a heavier client leaves the cluster less CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "orchestrator_image"), str(HERE.parent / "worker_image")]
from dispatch import Bench, _ms, free_port, wait_port  # noqa: E402  (the same containers and process handling)

from mlcluster import services  # noqa: E402

TOKEN, WORKER_TOKEN = "bench-token", "bench-worker-token"
TEXT = "the quick brown fox jumps over the lazy dog again!"  # 50 characters, like the bench's random text
MLCLUSTER = str(Path(sys.executable).with_name("mlcluster"))


@dataclass
class Run:
    client: str
    rate: float      # answered ok per second
    p50_ms: float
    errors: int
    cpu_us: float    # the client's CPU per answered request


class Setup(Bench):
    """The processes of one setup and the two clients' runs against it."""

    def __init__(self, seconds: float, wrk_threads: int):
        super().__init__(seconds)
        self.wrk_threads = wrk_threads
        self.lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                            f"wrk.body = '{json.dumps({'text': TEXT})}'\n")
        self.texts = self.tmp / "texts.txt"
        self.texts.write_text(TEXT + "\n")

    def orchestrator(self, containers: list[int]) -> str:
        port = free_port()
        env = services.orchestrator_env(port=port, token=TOKEN, queue_limit=1000, worker_token=WORKER_TOKEN)
        self.start(services.orchestrator_command(), {**env, "PYTHONPATH": str(HERE.parent / "orchestrator_image")},
                   log="orchestrator.log")
        wait_port(port)
        url = f"http://127.0.0.1:{port}"
        body = {"containers": [{"id": f"c{i}", "host": "127.0.0.1", "port": p} for i, p in enumerate(containers)]}
        requests.post(url + "/workers", json=body, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=10).raise_for_status()
        deadline = time.monotonic() + 60
        while any(c["status"] != "free" for c in requests.get(url + "/status", timeout=5).json()["containers"]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the containers did not become free; see {self.tmp}")
            time.sleep(0.2)
        return url

    def tiny_workers(self, count: int) -> list[int]:
        from mlcluster_worker.make_model import make_model
        model = make_model(self.tmp / "tiny-distilbert", size="tiny")
        ports = [free_port() for _ in range(count)]
        for port in ports:
            env = services.worker_env(model=str(model), port=port, token=WORKER_TOKEN, torch_threads=1)
            self.start(services.worker_command(), {**env, "HF_HUB_OFFLINE": "1",
                                                   "PYTHONPATH": str(HERE.parent / "worker_image")},
                       log=f"worker-{port}.log")
        for port in ports:
            wait_port(port, timeout=120)
        return ports

    # -- the two clients --------------------------------------------------------
    def run_wrk(self, url: str, connections: int, name: str = "wrk") -> Run:
        before = os.times()
        out = subprocess.run(["wrk", f"-t{self.wrk_threads}", f"-c{connections}", f"-d{round(self.seconds)}s",
                              "--latency", "-s", str(self.lua), url + "/new_request"],
                             capture_output=True, text=True, check=True).stdout
        cpu = _children_cpu(before)
        p50 = next(_ms(v, u) for v, u in re.findall(r"^\s+50%\s+([\d.]+)(us|ms|s)", out, re.M))
        total = int(re.search(r"(\d+) requests in", out).group(1))
        errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
        errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) * (total - errors) / max(total, 1)
        return Run(name, rate, p50, errors, cpu / max(1, total - errors) * 1e6)

    def run_bench(self, url: str, connections: int, engine: str) -> Run:
        data, cpu = self._bench(url, engine, "--concurrency", str(connections), "--duration", str(self.seconds),
                                "--warmup", str(connections))
        net = max(0.0, cpu - self.startup_cpu[engine])  # less the command's own start-up (imports, report)
        return Run(f"bench ({engine})", data["throughput_rps"], data["latency_ms"]["p50"], data["errors"],
                   net / max(1, data["ok"] + connections) * 1e6)

    def _bench(self, url: str, engine: str, *args: str) -> tuple[dict, float]:
        """The real command on `engine`; its JSON result and CPU seconds."""
        result = self.tmp / "bench.json"
        before = os.times()
        subprocess.run([MLCLUSTER, "bench", "--url", url, "--texts", str(self.texts), "--json", str(result), *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=self.seconds + 120,
                       env={**os.environ, "COLUMNS": "120", "MLCLUSTER_BENCH_ENGINE": engine})
        return json.loads(result.read_text()), _children_cpu(before)

    def compare(self, name: str, url: str, connections: int, runs: int, engines: list[str]) -> list[str]:
        self.run_wrk(url, connections)  # warm-up, uncounted
        self.startup_cpu = {e: min(self._bench(url, e, "--requests", "1", "--warmup", "0")[1] for _ in range(2))
                            for e in engines if e != "wrk"}
        clients = [lambda: self.run_wrk(url, connections)] + [
            (lambda: self.run_wrk(url, connections, "wrk again")) if e == "wrk"
            else (lambda e=e: self.run_bench(url, connections, e)) for e in engines]
        rounds = []
        for i in range(runs):  # ABBA order (every other round reversed), so a steady drift favours no client
            order = range(len(clients)) if i % 2 == 0 else reversed(range(len(clients)))
            done = {k: clients[k]() for k in order}
            rounds.append([done[k] for k in range(len(clients))])
        lines = [f"\n{name}: {connections} connections, {self.seconds:g} s per run",
                 f"{'run':>4} {'client':>16} {'req/s':>9} {'p50 ms':>8} {'errors':>7} {'CPU µs/req':>11}"]
        for i, runs_of_round in enumerate(rounds, 1):
            lines += [f"{i:>4} {r.client:>16} {r.rate:>9.1f} {r.p50_ms:>8.2f} {r.errors:>7} {r.cpu_us:>11.0f}"
                      for r in runs_of_round]
        for k, engine in enumerate(engines, 1):
            pairs = [(r[0], r[k]) for r in rounds]
            rates = [b.rate / w.rate for w, b in pairs]
            p50s = [b.p50_ms / w.p50_ms for w, b in pairs]
            who = "wrk again" if engine == "wrk" else f"bench ({engine})"
            # The machine drifts within seconds, more than the clients differ: the means over
            # all the alternating runs are the steadier estimate of how much the bench's own cost weighs.
            mean_rate = statistics.mean(b.rate for _, b in pairs) / statistics.mean(w.rate for w, _ in pairs)
            mean_p50 = statistics.mean(b.p50_ms for _, b in pairs) / statistics.mean(w.p50_ms for w, _ in pairs)
            lines += [f"  {who} / wrk throughput: median {statistics.median(rates):.3f} "
                      f"(min {min(rates):.3f}, max {max(rates):.3f}); target 0.95-1.05",
                      f"  {who} / wrk p50:        median {statistics.median(p50s):.3f} "
                      f"(min {min(p50s):.3f}, max {max(p50s):.3f}); target 0.95-1.05",
                      f"  over all runs, mean {who} / mean wrk: throughput {mean_rate:.3f}, p50 {mean_p50:.3f}"]
        return lines


def _children_cpu(before: os.times_result) -> float:
    after = os.times()
    return (after.children_user - before.children_user) + (after.children_system - before.children_system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--runs", type=int, default=7,
                        help="runs of each client per setup (alternating pairs: the machine drifts within seconds)")
    parser.add_argument("--setups", default="tiny,instant", help="which setups: tiny, instant or both")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--engines", default="c,python",
                        help="the bench's closed-loop engines to run beside wrk: c (compiled), python, or both; "
                             "wrk adds wrk itself again, a control for how much two runs of one client differ")
    args = parser.parse_args()
    engines = args.engines.split(",")
    if not set(engines) <= {"c", "python", "wrk"}:
        raise SystemExit(f"unknown --engines {args.engines!r}: choose from c, python, wrk")
    os.environ["HF_HUB_OFFLINE"] = "1"
    print(f"machine: {os.cpu_count()} cores; wrk -t{args.wrk_threads}; {args.runs} alternating runs per client")
    lines: list[str] = []
    for name in args.setups.split(","):
        with Setup(args.seconds, args.wrk_threads) as setup:
            if name == "tiny":
                url = setup.orchestrator(setup.tiny_workers(4))
                lines += setup.compare("tiny model, 2 x 2 containers", url, 15, args.runs, engines)
            elif name == "instant":
                setup.start_containers()
                url = setup.orchestrator(setup.ports)
                lines += setup.compare("8 instant light containers", url, 64, args.runs, engines)
            else:
                raise SystemExit(f"unknown setup {name!r}: choose tiny or instant")
        print("\n".join(lines[-(2 + (1 + len(engines)) * args.runs + 3 * len(engines)):]), flush=True)


if __name__ == "__main__":
    main()
