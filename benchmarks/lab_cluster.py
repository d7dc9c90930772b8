"""The lab's cluster for each backend: 4 workers x 2 containers on this machine,
loaded through the orchestrator by `mlcluster bench --concurrency 15`.

One run: for each backend, the real console script brings the cluster up
(`mlcluster up --workers 4 --containers-per-worker 2 --backend B`, the
distilbert-base stand-in or `--model DIR`), runs a warm-up and then the
measured bench, and takes the cluster down again. Prints throughput and latency
per backend with the ratio to the torch backend measured in the same run.
Targets (issue 11): the lab's cluster >= 2.5 x the torch backend's throughput,
with p99 no worse.

    flock /tmp/mlc-bench.lock python benchmarks/lab_cluster.py [--seconds 30] [--backends torch,onnx,onnx-int8]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MLCLUSTER = [sys.executable, "-m", "mlcluster"]


def run(args: list[str], env: dict, timeout: float = 1800) -> str:
    done = subprocess.run([*MLCLUSTER, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"`mlcluster {' '.join(args)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def measure(backend: str, model: str | None, seconds: float, home: str) -> dict:
    env = dict(os.environ, MLCLUSTER_HOME=home, HF_HUB_OFFLINE="1", COLUMNS="200")
    name = f"lab-{backend}"
    up = ["up", "--name", name, "--workers", "4", "--containers-per-worker", "2", "--backend", backend]
    if model:
        up += ["--model", model]
    started = time.perf_counter()
    run(up, env)
    up_s = time.perf_counter() - started
    try:
        run(["bench", "--name", name, "--concurrency", "15", "--duration", "5"], env)  # warm-up, not counted
        out = Path(home) / f"{name}.json"
        run(["bench", "--name", name, "--concurrency", "15", "--duration", str(seconds), "--json", str(out)], env)
        data = json.loads(out.read_text())
    finally:
        run(["down", "--name", name, "--yes"], env)
    return {"backend": backend, "up_s": up_s, "rps": data["throughput_rps"], "ok": data["ok"],
            "errors": data["errors"], "p50": data["latency_ms"]["p50"], "p99": data["latency_ms"]["p99"],
            "containers": len(data.get("per_container", {}))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per backend")
    parser.add_argument("--backends", default="torch,onnx,onnx-int8")
    parser.add_argument("--model", default=None, help="a model directory (default: the distilbert-base stand-in)")
    args = parser.parse_args()
    backends = args.backends.split(",")
    with tempfile.TemporaryDirectory(prefix="mlcluster-lab-bench-") as home:
        rows = [measure(b, args.model, args.seconds, home) for b in backends]
    torch_row = next((r for r in rows if r["backend"] == "torch"), rows[0])
    print(f"\nthe lab's cluster (4 workers x 2 containers, this machine), mlcluster bench --concurrency 15, "
          f"{args.seconds:g} s per backend")
    print(f"| backend | up s | req/s | ratio to torch | p50 ms | p99 ms | p99 ratio | errors | containers served |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['up_s']:.0f} | {r['rps']:.1f} | {r['rps'] / torch_row['rps']:.2f} | "
              f"{r['p50']:.0f} | {r['p99']:.0f} | {r['p99'] / torch_row['p99']:.2f} | {r['errors']} | "
              f"{r['containers']} |")
    for r in rows:
        if r["backend"] != "torch":
            met = r["rps"] >= 2.5 * torch_row["rps"] and r["p99"] <= torch_row["p99"]
            print(f"target {r['backend']} >= 2.5 x torch with p99 no worse: {'met' if met else 'missed'}")


if __name__ == "__main__":
    main()
