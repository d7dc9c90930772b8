"""Where the load comes from (issue 22): `bench --from here` through a relay
standing for the laptop's distance, `bench --from orchestrator`, and wrk run
on the orchestrator's host (inside its network namespace), in one run.

    python benchmarks/bench_from.py [--seconds 5] [--runs 5] [--delay-ms 40] [--jitter-ms 5]
                                    [--concurrency 8] [--service-ms 20]

On the SSH test network (tests/support/sshhosts.py: one namespace and sshd
per host; needs root), an ssh cluster: the orchestrator on `orch`, 2 + 2
overhead-test containers of a fixed service time on `w1` and `w2`. The three
clients send the same body with the same keep-alive connections for the same
time, in alternating order (ABBA), `--runs` rounds. Prints every run, then the
ratios: --from orchestrator / wrk (throughput, p50), and each bench's
network part (client latency less the orchestrator's own time: the relay's two
one-way delays from here; the p50s differ by less, since at this concurrency
the containers queue requests only without the relay). Then two load
hosts (`--from orch,w1`, no warm-up): the merged record count beside the
orchestrator's served counter for the run.
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
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from support.relay import Relay  # noqa: E402
from support.sshcluster import CLUSTER, bench_network, up_cluster  # noqa: E402
from support.sshhosts import SSHTestNetwork  # noqa: E402

MLCLUSTER = str(Path(sys.executable).with_name("mlcluster"))
TEXT = "the quick brown fox jumps over the lazy dog again!"


def ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


class Rig:
    def __init__(self, args, net: SSHTestNetwork, tmp: Path):
        self.args, self.net, self.tmp = args, net, tmp
        self.env = {**os.environ, "MLCLUSTER_HOME": str(tmp / "home"), "COLUMNS": "120", "HF_HUB_OFFLINE": "1"}
        self.texts = tmp / "texts.txt"
        self.texts.write_text(TEXT + "\n")
        self.lua = tmp / "post.lua"
        self.lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                            f"wrk.body = '{json.dumps({'text': TEXT})}'\n")
        self.orch = net.hosts["orch"]
        self.url = f"http://{self.orch.address}:8000"

    def mlcluster(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run([MLCLUSTER, *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if result.returncode != 0:
            raise SystemExit(f"mlcluster {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        return result

    def bench(self, *args: str) -> dict:
        out = self.tmp / "bench.json"
        c = str(self.args.concurrency)
        self.mlcluster("bench", *args, "--concurrency", c, "--duration", str(self.args.seconds), "--warmup", c,
                       "--texts", str(self.texts), "--json", str(out))
        data = json.loads(out.read_text())
        return {"rate": data["throughput_rps"], "p50": data["latency_ms"]["p50"], "errors": data["errors"],
                "network": data["breakdown_ms"]["network"]["p50"],
                "engine": ",".join(h["engine"] for h in data["setup"]["load_from"])}

    def wrk(self) -> dict:
        out = subprocess.run(["ip", "netns", "exec", self.orch.namespace, "wrk", "-t1",
                              f"-c{self.args.concurrency}", f"-d{round(self.args.seconds)}s", "--latency",
                              "-s", str(self.lua), self.url + "/new_request"],
                             capture_output=True, text=True, check=True, timeout=self.args.seconds + 60).stdout
        p50 = next(ms(v, u) for v, u in re.findall(r"^\s+50%\s+([\d.]+)(us|ms|s)", out, re.M))
        total = int(re.search(r"(\d+) requests in", out).group(1))
        errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) * (total - errors) / max(total, 1)
        return {"rate": rate, "p50": p50, "errors": errors, "network": None, "engine": "wrk"}

    def served(self) -> int:
        """The orchestrator's served counter once nothing is in flight (a client that
        ended may leave requests the orchestrator still finishes)."""
        deadline = time.monotonic() + 30
        while True:
            status = requests.get(self.url + "/status", timeout=5).json()
            if status["in_flight"] == 0 and status["queue"]["depth"] == 0 or time.monotonic() > deadline:
                return status["served"]
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delay-ms", type=float, default=40.0)
    parser.add_argument("--jitter-ms", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--service-ms", type=float, default=20.0)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores (shared); {args.runs} alternating rounds of {args.seconds:g} s; "
          f"concurrency {args.concurrency}; 4 containers of {args.service_ms:g} ms; relay {args.delay_ms:g} "
          f"± {args.jitter_ms:g} ms each way")
    with bench_network("orch", "w1", "w2", prefix="bench-from-") as (net, tmp), \
            up_cluster(tmp / "home", net, "overhead-test", ["w1", "w2"],
                       top={"service_ms": args.service_ms}):
        rig = Rig(args, net, tmp)
        with Relay((rig.orch.address, 8000), args.delay_ms, args.jitter_ms, seed=1) as relay:
            clients = {"here (relay)": lambda: rig.bench("--url", relay.url, "--from", "here"),
                       "orchestrator": lambda: rig.bench("--name", CLUSTER, "--from", "orchestrator"),
                       "wrk on orch": rig.wrk}
            rig.bench("--name", CLUSTER, "--from", "orchestrator")  # uploads the agent: uncounted
            runs: dict[str, list[dict]] = {name: [] for name in clients}
            for i in range(args.runs):
                for name in (list(clients) if i % 2 == 0 else list(reversed(clients))):
                    run = clients[name]()
                    runs[name].append(run)
                    network = "" if run["network"] is None else f"  network p50 {run['network']:6.2f} ms"
                    print(f"  round {i + 1}  {name:13s} {run['rate']:8.1f} req/s  p50 {run['p50']:7.2f} ms"
                          f"{network}  errors {run['errors']}  ({run['engine']})", flush=True)

        def ratio(key: str) -> list[float]:
            return [o[key] / w[key] for o, w in zip(runs["orchestrator"], runs["wrk on orch"])]
        for key, label in (("rate", "throughput"), ("p50", "p50")):
            r = ratio(key)
            print(f"--from orchestrator / wrk on orch, {label}: median {statistics.median(r):.3f} "
                  f"(min {min(r):.3f}, max {max(r):.3f})")
        for name in ("here (relay)", "orchestrator"):
            network = statistics.median(r["network"] for r in runs[name])
            print(f"--from {name}: p50 of the network part (client latency less the orchestrator's "
                  f"time) median {network:.2f} ms (relay: 2 × {args.delay_ms:g} ms)")
        before = rig.served()
        out = rig.tmp / "two.json"
        rig.mlcluster("bench", "--name", CLUSTER, "--from", "orch,w1", "--concurrency", str(args.concurrency),
                      "--duration", str(args.seconds), "--warmup", "0", "--json", str(out))
        data = json.loads(out.read_text())
        print(f"two load hosts (orch, w1): merged records {data['requests']}, orchestrator served "
              f"{rig.served() - before} in the run, {data['throughput_rps']:.1f} req/s, "
              f"p50 {data['latency_ms']['p50']:.2f} ms")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as exc:  # `up` failed: say so without a traceback
        raise SystemExit(f"gave up: {exc}") from None
