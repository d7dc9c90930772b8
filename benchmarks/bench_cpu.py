"""Where does `mlcluster bench` spend its CPU? Per request, during the
measured run (what the cluster under test loses) and after it (decoding the
answers, summaries, the report: costs time, takes nothing from the cluster).

    python benchmarks/bench_cpu.py [--seconds 4] [--runs 3] [--connections 64]
                                   [--delay-ms 0] [--baseline REV]

Starts bench_client.py's trivial endpoint on loopback (one Python process
answering /new_request, at once or --delay-ms late: 64 connections and 10 ms
pace it at ~5k req/s, 15 and 100 ms at ~150), then runs the real `mlcluster
bench` command against it, closed loop, with progress on a pipe (as scripts
and benchmarks/bench_vs_wrk.py run it), and wrk -t1 beside it as the
reference. The command's CPU (utime + stime from /proc/<pid>/stat, in ticks
of 10 ms: coarse for short, slow runs) is read when it prints "measuring ..."
and when it prints "done: measuring ...", so "run" is the measured step's
own CPU (its main thread's apart) and "after" is everything from then to
exit; "total" includes start-up (~0.6 s of imports). With --baseline REV the
package as it was at git revision REV is extracted to a temporary folder and
run alternately with the working tree's, so the ratio new / baseline comes
from one run of a shared, noisy machine. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_client import BODY, Trivial, wait_listening  # noqa: E402  (the same trivial endpoint)

from mlcluster.deploy.localhost import free_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


class Delayed(Trivial):
    """The trivial endpoint, each answer `DELAY_S` late: a cluster with a set
    pace (connections / delay requests per second), so the bench's fixed
    costs per second (progress, polling) show per request as they would at
    a real cluster's rate."""
    DELAY_S = 0.0

    def connection_made(self, transport):
        loop, delay = asyncio.get_running_loop(), self.DELAY_S
        late = type("Late", (), {"write": lambda _, data: loop.call_later(delay, transport.write, data)})()
        super().connection_made(late if delay else transport)


def serve(port: int, delay_ms: float) -> None:
    Delayed.DELAY_S = delay_ms / 1000.0

    async def main():
        server = await asyncio.get_running_loop().create_server(Delayed, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()
    asyncio.run(main())


def cpu_s(pid: int, tid: int | None = None) -> float:
    """utime + stime of process `pid` (all its threads), or of its thread `tid`, in seconds."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_marks(pid: int) -> tuple[float, float]:
    """The process's CPU and its main thread's (the thread whose id is the process's)."""
    return cpu_s(pid), cpu_s(pid, pid)


def measure(source: Path, url: str, connections: int, seconds: float, tmp: Path) -> dict:
    """One `mlcluster bench` run from the package at `source`; its figures and CPU split."""
    result = tmp / "result.json"
    env = {**os.environ, "PYTHONPATH": str(source), "COLUMNS": "120", "MLCLUSTER_PROGRESS_S": "10"}
    start = os.times()
    proc = subprocess.Popen([sys.executable, "-m", "mlcluster", "bench", "--url", url, "--concurrency",
                             str(connections), "--duration", str(seconds), "--warmup", str(connections),
                             "--json", str(result)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=tmp)
    marks = {}
    for line in proc.stderr:
        if line.startswith("measuring") and "start" not in marks:  # later ones are progress
            marks["start"] = cpu_marks(proc.pid)
        elif line.startswith("done: measuring"):
            marks["end"] = cpu_marks(proc.pid)
    proc.wait(timeout=60)
    end = os.times()
    total = (end.children_user - start.children_user) + (end.children_system - start.children_system)
    if proc.returncode or len(marks) != 2:
        raise RuntimeError(f"mlcluster bench failed (exit {proc.returncode}, marks {marks})")
    data = json.loads(result.read_text())
    requests = max(1, data["requests"])
    return {"rps": data["throughput_rps"], "p50": data["latency_ms"]["p50"], "requests": data["requests"],
            "run_us": (marks["end"][0] - marks["start"][0]) / requests * 1e6,
            "main_us": (marks["end"][1] - marks["start"][1]) / requests * 1e6,
            "after_us": (total - marks["end"][0]) / requests * 1e6, "total_us": total / requests * 1e6}


def measure_wrk(url: str, connections: int, seconds: float, tmp: Path) -> dict | None:
    """wrk -t1 (Debian's package) with the same body and connections: the reference."""
    if not shutil.which("wrk"):
        return None
    script = tmp / "post.lua"
    script.write_text('wrk.method = "POST"\n'
                      'wrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = '{BODY.decode()}'\n")
    start = os.times()
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "-s", str(script),
                          url + "/new_request"], capture_output=True, text=True, check=True).stdout
    end = os.times()
    cpu = (end.children_user - start.children_user) + (end.children_system - start.children_system)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1)), "requests": requests,
            "cpu_us": cpu / max(1, requests) * 1e6}


def extract(rev: str, into: Path) -> Path:
    """The `mlcluster` package as it was at `rev`, under `into`."""
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", rev, "mlcluster"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--baseline", help="a git revision to compare with, run alternately")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="the endpoint answers this late")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.delay_ms)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--delay-ms", str(args.delay_ms)],
                              start_new_session=True)
    try:
        wait_listening(port)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            sources = {"working tree": HERE.parent}
            if args.baseline:
                sources = {args.baseline: extract(args.baseline, Path(tempfile.mkdtemp(dir=tmp))), **sources}
            runs: dict[str, list[dict]] = {name: [] for name in sources}
            print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; trivial endpoint; "
                  f"{args.connections} connections; answers {args.delay_ms:g} ms late; {args.seconds:g} s per run\n")
            print(f"{'source':>14} {'req/s':>8} {'p50 ms':>7} {'requests':>9} {'run µs/req':>11} "
                  f"{'(main thread)':>14} {'after µs/req':>13} {'total µs/req':>13}")
            for _ in range(args.runs):
                for name, source in sources.items():
                    row = measure(source, url, args.connections, args.seconds, tmp)
                    runs[name].append(row)
                    print(f"{name:>14} {row['rps']:>8.0f} {row['p50']:>7.2f} {row['requests']:>9} "
                          f"{row['run_us']:>11.1f} {row['main_us']:>14.2f} {row['after_us']:>13.1f} "
                          f"{row['total_us']:>13.1f}", flush=True)
                    time.sleep(0.5)
                wrk = measure_wrk(url, args.connections, args.seconds, tmp)
                if wrk:
                    runs.setdefault("wrk", []).append(wrk)
                    print(f"{'wrk -t1':>14} {wrk['rps']:>8.0f} {'':>7} {wrk['requests']:>9} {wrk['cpu_us']:>11.1f} "
                          f"{'':>14} {'':>13} {wrk['cpu_us']:>13.1f}", flush=True)
            print("\nmedians:")
            for name, rows in runs.items():
                if name == "wrk":
                    print(f"{'wrk -t1':>14} {statistics.median(r['rps'] for r in rows):>8.0f} req/s; "
                          f"{statistics.median(r['cpu_us'] for r in rows):.1f} µs/req (its whole process)")
                    continue
                med = {k: statistics.median(r[k] for r in rows)
                       for k in ("rps", "run_us", "main_us", "after_us", "total_us")}
                print(f"{name:>14} {med['rps']:>8.0f} req/s; run {med['run_us']:.1f} "
                      f"(main thread {med['main_us']:.2f}), after {med['after_us']:.1f}, "
                      f"total {med['total_us']:.1f} µs/req")
            if args.baseline:
                base, new = runs[args.baseline], runs["working tree"]
                for key in ("rps", "run_us", "total_us"):
                    ratios = [n[key] / b[key] for b, n in zip(base, new)]
                    print(f"  new / baseline {key:>9}: median {statistics.median(ratios):.3f} "
                          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
