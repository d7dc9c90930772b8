"""The elastic cluster on this machine, beside Ray Serve's autoscaling (same work, same clients, same run):

    .venv/bin/python benchmarks/elastic.py [--service-ms 50] [--max 6] [--upscale-delay 2] [--downscale-delay 6]
        [--rounds 1] [--ray-window 60] [--no-ray]

mlcluster: a local process cluster of overhead-test workers (a fixed service time, capacity 1, so one container
serves 1000 / service_ms requests a second), started by the real `mlcluster up` with autoscaling between 1 and
--max containers at a target of 1 ongoing request each, in a private MLCLUSTER_HOME. One trace:
  1. 1 closed-loop client for 6 s; then a step to --max clients (the load of --max containers);
  2. after 25 s, back to 1 client for 25 s: the cluster drains down to one container;
  3. the first worker killed with SIGKILL: the time until it serves again (the controller's heal).
Ray Serve 2.60 (benchmarks/elastic_ray.py; skipped, saying so, when ray is not installed): replicas sleeping the
same service time behind its HTTP proxy on 127.0.0.1, max_ongoing_requests=1, 1..--max replicas, target 1, with
the same delays ("tuned") and with its defaults (30 s / 600 s); the same 6 s of 1 client, then the same step,
measured for --ray-window seconds. Rounds alternate which system goes first.
Prints: time from the step until the first new container (replica) answers and until --max answer, until a 2-s
window's p99 is back within the SLO (2 x service time), failed requests; for mlcluster also failures over the
whole trace (scale-downs and the kill included), container-seconds against a static cluster of --max
containers for the same time, the heal time. Ratios are mlcluster / Ray tuned (medians over rounds).
Figures of one run on a shared machine; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import elastic_ray
import requests
from elastic_trace import StepFigures, Trace, secs, step_figures

MLCLUSTER = str(Path(sys.executable).with_name("mlcluster"))
HIGH_S = 25.0  # mlcluster's trace: seconds at --max clients after the step


def run_mlcluster(args: argparse.Namespace) -> tuple[StepFigures, list[str]]:
    """mlcluster's whole trace: the step's figures, and the lines of its own figures (drain, heal, cost)."""
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
        time.sleep(HIGH_S)
        trace.clients(1)
        time.sleep(25)
        ended = time.monotonic()
        state = json.loads((home / "bench" / "state.json").read_text())
        victim = state["resources"]["services"]["worker1-1"]
        os.killpg(victim["pid"], signal.SIGKILL)
        killed = time.monotonic()
        healed = None
        while time.monotonic() - killed < 60 and healed is None:
            answers = [a for a in trace.since(killed) if a[3] == "worker1-1" and a[2] == 200]
            healed = answers[0][0] + answers[0][1] - killed if answers else None
            time.sleep(0.1)
    finally:
        trace.finish()
        sampling.set()
        subprocess.run([MLCLUSTER, "down", "-n", "bench", "--yes"], env=env, capture_output=True)

    figures = step_figures("mlcluster", trace, began, step, HIGH_S, slo_s, args.max)
    answers = trace.since(began)
    failed = sum(1 for a in answers if a[2] != 200)
    used = sum(n * (t1 - t0) for (t0, n), (t1, _) in zip(counts, counts[1:]) if t1 <= ended)
    static = args.max * (min(ended, counts[-1][0]) - counts[0][0])
    return figures, [
        f"requests over the whole trace: {len(answers)} sent, {failed} failed (scale-downs and the kill included)",
        f"container-seconds: {used:.0f} against {static:.0f} for a static {args.max} ({used / static:.2f} x)",
        f"SIGKILLed worker answering again after {secs(healed, 60)} (heal grace 5 s by default)",
        f"the most containers at once: {max(n for _, n in counts)} (cap {args.max})"]


def run_ray(args: argparse.Namespace) -> list[StepFigures]:
    tuned = f"Ray Serve, delays {args.upscale_delay:g} s / {args.downscale_delay:g} s"
    default = "Ray Serve, defaults {:g} s / {:g} s".format(*elastic_ray.DEFAULT_DELAYS)
    with elastic_ray.RaySession() as ray_serve:
        return [ray_serve.step(tuned, args.service_ms, args.max, args.upscale_delay, args.downscale_delay, 6,
                               args.ray_window),
                ray_serve.step(default, args.service_ms, args.max, *elastic_ray.DEFAULT_DELAYS, 6, args.ray_window)]


def table(rows: list[tuple[int, StepFigures]], most: int) -> list[str]:
    lines = [f"| round | system | first new serving | {most} serving | 2-s p99 within SLO | failed / sent "
             "| most answering |", "|---|---|---|---|---|---|---|"]
    for r, f in rows:
        lines.append(f"| {r} | {f.system} | {secs(f.first_new, f.window_s)} | {secs(f.all_serving, f.window_s)} | "
                     f"{secs(f.back_in_slo, f.window_s)} | {f.failed} / {f.sent:,} | {f.most_serving} |")
    return lines


def ratio(ours: list[StepFigures], theirs: list[StepFigures], field: str) -> str:
    a = [getattr(f, field) for f in ours]
    b = [getattr(f, field) for f in theirs]
    if None in a:
        return "mlcluster not within its window"
    mine = statistics.median(a)
    if None in b:
        return f"< {mine / theirs[0].window_s:.2f} x (Ray not within {theirs[0].window_s:.0f} s)"
    return f"{mine / statistics.median(b):.2f} x ({mine:.1f} s against {statistics.median(b):.1f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service-ms", type=float, default=50.0)
    parser.add_argument("--max", type=int, default=6)
    parser.add_argument("--upscale-delay", type=float, default=2.0)
    parser.add_argument("--downscale-delay", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=1, help="rounds; odd rounds run mlcluster first")
    parser.add_argument("--ray-window", type=float, default=60.0, help="seconds measured after Ray's step")
    parser.add_argument("--no-ray", action="store_true", help="mlcluster's side alone")
    args = parser.parse_args()
    if args.rounds < 1 or args.max < 2 or args.service_ms <= 0 or args.ray_window < 5:
        parser.error("need --rounds >= 1, --max >= 2, --service-ms > 0, --ray-window >= 5")
    with_ray = not args.no_ray and elastic_ray.available()
    if not with_ray and not args.no_ray:
        print(f"ray is not installed: mlcluster's side alone (for Ray Serve beside it: {elastic_ray.INSTALL})",
              flush=True)
    ours: list[StepFigures] = []
    ray_tuned: list[StepFigures] = []
    rows: list[tuple[int, StepFigures]] = []
    notes: list[str] = []
    for r in range(1, args.rounds + 1):
        order = ["mlcluster", "ray"] if r % 2 else ["ray", "mlcluster"]
        for system in order if with_ray else ["mlcluster"]:
            print(f"round {r}: {system} ...", file=sys.stderr, flush=True)
            if system == "mlcluster":
                figures, lines = run_mlcluster(args)
                ours.append(figures)
                rows.append((r, figures))
                notes += [f"round {r}, mlcluster: {line}" for line in lines]
            else:
                both = run_ray(args)
                ray_tuned.append(both[0])
                rows += [(r, f) for f in both]
    print(f"load step 1 -> {args.max} closed-loop clients; containers of {args.service_ms:g} ms, capacity 1, "
          f"1..{args.max}, target 1; SLO {2 * args.service_ms:g} ms; mlcluster delays {args.upscale_delay:g} s / "
          f"{args.downscale_delay:g} s, measured {HIGH_S:g} s after the step"
          + (f"; Ray Serve measured {args.ray_window:g} s after it" if with_ray else ""))
    print("\n".join(table(rows, args.max)))
    print("\n".join(notes))
    if ray_tuned:
        print(f"mlcluster / Ray Serve with the same delays, first new serving: {ratio(ours, ray_tuned, 'first_new')}")
        print(f"mlcluster / Ray Serve with the same delays, p99 within SLO: {ratio(ours, ray_tuned, 'back_in_slo')}")


if __name__ == "__main__":
    main()
