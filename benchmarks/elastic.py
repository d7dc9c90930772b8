"""The elastic cluster on this machine, mlcluster's side only (no Ray Serve run yet):

    .venv/bin/python benchmarks/elastic.py [--service-ms 50] [--max 6] [--upscale-delay 2] [--downscale-delay 6]

A local process cluster of overhead-test workers (a fixed service time, capacity 1, so one container serves
1000 / service_ms requests a second), started by the real `mlcluster up` with autoscaling between 1 and
--max containers at a target of 1 ongoing request each, in a private MLCLUSTER_HOME. One trace:
  1. 1 closed-loop client for 6 s; then a step to --max clients (the load of --max containers);
  2. after 25 s, back to 1 client for 25 s: the cluster drains down to one container;
  3. the first worker killed with SIGKILL: the time until it serves again (the controller's heal).
Prints: time from the step until the first new container answers and until all serve, until a 2-s window's
p99 is back within the SLO (2 x service time); failed requests over the whole trace (scale-downs included);
container-seconds against a static cluster of --max containers for the same time; the heal time.
Figures of one run on a shared machine; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

MLCLUSTER = str(Path(sys.executable).with_name("mlcluster"))


class Trace:
    """Closed-loop clients whose number can change, and every answer: (sent at, latency s, status, container)."""

    def __init__(self, url: str):
        self.url, self.wanted, self.stop = url, 0, threading.Event()
        self.answers: list[tuple[float, float, int, str]] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def clients(self, n: int) -> None:
        self.wanted = n
        while len(self.threads) < n:
            t = threading.Thread(target=self.client, args=(len(self.threads),), daemon=True)
            self.threads.append(t)
            t.start()

    def client(self, i: int) -> None:
        with requests.Session() as http:
            while not self.stop.is_set():
                if i >= self.wanted:
                    time.sleep(0.01)
                    continue
                start = time.monotonic()
                try:
                    r = http.post(self.url + "/new_request", json={"text": "elastic"}, timeout=60)
                    outcome = (r.status_code, r.json()["container"]["id"] if r.ok else "")
                except requests.RequestException:
                    outcome = (0, "")
                with self.lock:
                    self.answers.append((start, time.monotonic() - start, *outcome))

    def since(self, t: float) -> list[tuple[float, float, int, str]]:
        with self.lock:
            return [a for a in self.answers if a[0] >= t]


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service-ms", type=float, default=50.0)
    parser.add_argument("--max", type=int, default=6)
    parser.add_argument("--upscale-delay", type=float, default=2.0)
    parser.add_argument("--downscale-delay", type=float, default=6.0)
    args = parser.parse_args()
    slo_s = 2 * args.service_ms / 1000
    home = Path(tempfile.mkdtemp(prefix="mlcluster-elastic-"))
    env = dict(os.environ, MLCLUSTER_HOME=str(home), HF_HUB_OFFLINE="1")

    def cli(*a: str) -> str:
        return subprocess.run([MLCLUSTER, *a], env=env, check=True, capture_output=True, text=True).stdout

    cli("up", "-n", "bench", "--model", "overhead-test", "--service-ms", str(args.service_ms), "-w", "1", "-m", "1",
        "--min-containers", "1", "--max-containers", str(args.max), "--target-ongoing", "1",
        "--upscale-delay", str(args.upscale_delay), "--downscale-delay", str(args.downscale_delay))
    url = json.loads(cli("status", "-n", "bench", "--json"))["orchestrator_url"]
    counts: list[tuple[float, int]] = []  # (time, containers the orchestrator holds)
    trace = Trace(url)
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.2):
            try:
                counts.append((time.monotonic(), len(requests.get(url + "/status", timeout=5).json()["containers"])))
            except requests.RequestException:
                pass
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        began = time.monotonic()
        sampler.start()
        trace.clients(1)
        time.sleep(6)
        step = time.monotonic()
        trace.clients(args.max)
        time.sleep(25)
        trace.clients(1)
        time.sleep(25)
        ended = time.monotonic()
        state = json.loads((home / "bench" / "state.json").read_text())
        victim = next(p for p in state["resources"]["processes"] if p["id"] == "worker1-1")
        os.killpg(victim["pid"], signal.SIGKILL)
        killed = time.monotonic()
        healed = None
        while time.monotonic() - killed < 60 and healed is None:
            answers = [a for a in trace.since(killed) if a[3] == "worker1-1" and a[2] == 200]
            healed = answers[0][0] + answers[0][1] - killed if answers else None
            time.sleep(0.1)
    finally:
        trace.stop.set()
        sampling.set()
        subprocess.run([MLCLUSTER, "down", "-n", "bench", "--yes"], env=env, capture_output=True)

    after = trace.since(step)
    first_new = min((a[0] + a[1] for a in after if a[3].startswith("elastic-")), default=None)
    served_by: dict[str, float] = {}
    for start, latency, status, cid in after:
        served_by.setdefault(cid, start + latency)
    all_serving = sorted(served_by.values())[args.max - 1] if len(served_by) >= args.max else None
    back_in_slo = None
    for t0 in [step + 0.5 * i for i in range(50)]:
        window = [a[1] for a in after if t0 <= a[0] < t0 + 2 and a[2] == 200]
        if window and p99(window) <= slo_s:
            back_in_slo = t0 + 2 - step
            break
    answers = trace.since(began)
    failed = sum(1 for a in answers if a[2] != 200)
    used = sum(n * (t1 - t0) for (t0, n), (t1, _) in zip(counts, counts[1:]) if t1 <= ended)
    static = args.max * (min(ended, counts[-1][0]) - counts[0][0])

    def secs(x) -> str:
        return "never" if x is None else f"{x:.1f} s"
    print(f"elastic cluster, overhead-test workers of {args.service_ms:g} ms, 1..{args.max} containers, target 1, "
          f"upscale delay {args.upscale_delay:g} s, downscale delay {args.downscale_delay:g} s")
    print(f"step 1 -> {args.max} clients: first new container answering after {secs(first_new and first_new - step)}, "
          f"{args.max} containers answering after {secs(all_serving and all_serving - step)}, "
          f"2-s p99 within {slo_s * 1000:.0f} ms after {secs(back_in_slo)}")
    print(f"requests: {len(answers)} sent, {failed} failed (scale-downs and the kill included)")
    print(f"container-seconds: {used:.0f} against {static:.0f} for a static {args.max} ({used / static:.2f} x)")
    print(f"SIGKILLed worker answering again after {secs(healed)} (heal grace 5 s by default)")
    print(f"the most containers at once: {max(n for _, n in counts)} (cap {args.max})")


if __name__ == "__main__":
    main()
