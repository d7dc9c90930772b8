"""The elastic cluster on a compressed day, beside Ray Serve's autoscaling (same trace, same work, same run):

    .venv/bin/python benchmarks/elastic_diurnal.py [--minutes 10] [--service-ms 50] [--max 6] [--peak-load 0.8]
        [--slo-ms 5 x service] [--target-ongoing 1] [--upscale-delay 2] [--downscale-delay 6] [--rounds 1]
        [--static] [--no-ray]

The day (DAY below, a fraction of the peak rate for each hour, interpolated linearly): a night trough at 10 %
of the peak (03:00-05:00), a morning ramp from 06:00, a day plateau at 88-100 % (10:00-17:00, a small dip at
lunch), an evening decline to 20 % at midnight: the shape of a single-region business service, whose mean is
0.54 of its peak. The whole day is compressed into --minutes (10: one hour of the day in 25 s), after a
warm-up of its last two hours (the day before, counted in no figure: the day starts on a cluster that served
its evening, not on one just started). The peak rate is --peak-load x the capacity of --max containers
(0.8 x 6 x 20 req/s = 96 req/s): a static cluster sized for the peak runs it with 20 % headroom (at 100 %
Poisson arrivals queue without bound, even on the static cluster). The static reference is --max containers
for the whole day.
Arrivals are Poisson (exponential gaps, drawn once with a fixed seed, the same list of send times for every
system): independent users arrive so, and the bursts are what makes a queue; evenly spaced sends would hide
them. The load is an open loop (elastic_trace.OpenLoop): each request goes at its time whatever the answers,
and its latency counts from that time; a closed loop would slow down with the system and hide its queue.
The SLO is on each 10-s window's p99. Its default, 5 x the service time, is not the load step's 2 x: with
capacity-1 containers and Poisson arrivals no cluster can hold a p99 of 2 x (the M/D/c queue's p99 is 122 ms
for one 50-ms container at 20 % load, 128 ms for 6 at the peak's 80 %), so the static cluster itself would
miss it in most windows. The script prints the best any scaler could do at the SLO given (elastic_oracle.py:
the fewest containers within it for each window's rate, known in advance): 0.58 x static at 5 x, 0.64 at
4 x, 0.73 at 2 x, so the target of 0.6 x is out of reach for every scaler below 5 x on this day.
Systems: mlcluster, a real `mlcluster up` local process cluster of overhead-test workers (a fixed service time,
capacity 1) autoscaling 1..--max at --target-ongoing with the delays given; Ray Serve 2.60 (elastic_ray.py)
with replicas sleeping the same time behind its HTTP proxy, `max_ongoing_requests=1`, 1..--max, the same
target and the same delays; with --static also a fixed mlcluster cluster of --max containers (its SLO share:
what the peak-sized cluster itself achieves). Rounds alternate which system goes first.
Prints for each: container-seconds (the containers the orchestrator's /status lists, draining ones included,
or Ray's replicas in any state from serve.status(), sampled every 0.5 s and integrated over the day), its ratio
to the static peak, the share of 10-s windows whose p99 (from the scheduled send time) is within the SLO
(a failed request counts as over it), failed requests (warm-up included; one that has not left 120 s after the
day's last send time, behind a backlog, counts as failed: the run stays bounded); then mlcluster / Ray ratios.
Targets (issue 20): container-seconds <= 0.6 x static peak with the SLO met in >= 95 % of windows.
Figures of one run on a shared machine; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import elastic_ray
import requests
from elastic_oracle import oracle_container_s
from elastic_trace import OpenLoop, Sampler, integrate, windows_within

MLCLUSTER = str(Path(sys.executable).with_name("mlcluster"))
# The day: the peak's fraction at 00:00, 01:00, ..., 24:00.
DAY = (0.20, 0.14, 0.11, 0.10, 0.10, 0.12, 0.20, 0.35, 0.55, 0.75, 0.88, 0.95, 0.92, 0.95, 1.00, 1.00, 0.95,
       0.85, 0.70, 0.58, 0.50, 0.42, 0.33, 0.26, 0.20)
SEED = 20
WARMUP_HOURS = 2


def day_fraction(hour: float) -> float:
    """The peak's fraction at `hour` (0..24) of the day, DAY interpolated linearly."""
    i = min(int(hour), 23)
    return DAY[i] + (DAY[i + 1] - DAY[i]) * (hour - i)


def arrivals(duration_s: float, peak_rps: float, warmup_s: float = 0.0, seed: int = SEED) -> list[float]:
    """Send times (s from the start) of a Poisson process whose rate follows the day compressed into
    `duration_s`, after `warmup_s` of the end of the day before (the day is cyclic): drawn at the peak rate,
    each kept with the day's fraction at its time (thinning)."""
    rng, t, kept = random.Random(seed), 0.0, []
    while True:
        t += rng.expovariate(peak_rps)
        if t >= warmup_s + duration_s:
            return kept
        if rng.random() < day_fraction(24 * ((t - warmup_s) % duration_s) / duration_s):
            kept.append(t)


def warmup(args: argparse.Namespace) -> float:
    """Seconds of the day before (its last two hours), played first and counted in no figure: the day starts
    on a cluster that has been serving its evening, not on one just started."""
    return args.minutes * 60 * WARMUP_HOURS / 24


@dataclass(frozen=True)
class DayFigures:
    system: str
    container_s: float
    static_s: float      # --max containers for the same day
    within: int          # 10-s windows whose p99 is within the SLO
    windows: int
    sent: int
    failed: int
    most: int            # the most containers (replicas) sampled at once

    @property
    def share(self) -> float:
        return self.within / self.windows if self.windows else 0.0

    @property
    def ratio(self) -> float:
        return self.container_s / self.static_s


def figures(system: str, load: OpenLoop, began: float, counts: list[tuple[float, int]],
            args: argparse.Namespace) -> DayFigures:
    duration = args.minutes * 60
    began += warmup(args)  # the day itself starts after the warm-up
    ended = began + duration
    within, windows = windows_within(load.answers, began, duration, args.slo_ms / 1000)
    return DayFigures(system, integrate(counts, began, ended), args.max * duration, within, windows,
                      len(load.answers), sum(1 for a in load.answers if a[2] != 200),
                      max((n for t, n in counts if began <= t <= ended), default=0))


def run_mlcluster(args: argparse.Namespace, at: list[float], static: bool) -> DayFigures:
    """The day on a fresh local cluster: autoscaling 1..--max, or (static) --max containers fixed."""
    home = Path(tempfile.mkdtemp(prefix="mlcluster-diurnal-"))
    env = dict(os.environ, MLCLUSTER_HOME=str(home), HF_HUB_OFFLINE="1")

    def cli(*a: str) -> str:
        return subprocess.run([MLCLUSTER, *a], env=env, check=True, capture_output=True, text=True).stdout

    size = ["-m", str(args.max)] if static else [
        "-m", "1", "--min-containers", "1", "--max-containers", str(args.max),
        "--target-ongoing", f"{args.target_ongoing:g}", "--upscale-delay", f"{args.upscale_delay:g}",
        "--downscale-delay", f"{args.downscale_delay:g}"]
    try:
        cli("up", "-n", "diurnal", "--model", "overhead-test", "--service-ms", f"{args.service_ms:g}", "-w", "1",
            *size)
        url = json.loads(cli("status", "-n", "diurnal", "--json"))["orchestrator_url"]
        load, counts = OpenLoop(url, at), []
        with requests.Session() as http, \
                Sampler(lambda: len(http.get(url + "/status", timeout=5).json()["containers"]), counts):
            began = load.start()
            load.wait()
    finally:
        subprocess.run([MLCLUSTER, "down", "-n", "diurnal", "--yes"], env=env, capture_output=True)
    return figures(f"mlcluster, static {args.max}" if static else "mlcluster", load, began, counts, args)


def run_ray(args: argparse.Namespace, at: list[float]) -> DayFigures:
    with elastic_ray.RaySession() as ray_serve:
        load, began, counts = ray_serve.open_loop(at, args.service_ms, args.max, args.upscale_delay,
                                                  args.downscale_delay, args.target_ongoing)
    return figures("Ray Serve", load, began, counts, args)


def table(rows: list[tuple[int, DayFigures]]) -> list[str]:
    lines = ["| round | system | container-seconds | × static peak | 10-s windows with p99 within SLO | failed / sent "
             "| most containers |", "|---|---|---|---|---|---|---|"]
    for r, f in rows:
        lines.append(f"| {r} | {f.system} | {f.container_s:,.0f} | {f.ratio:.2f} | {f.within} / {f.windows} "
                     f"({100 * f.share:.0f} %) | {f.failed} / {f.sent:,} | {f.most} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="the length of the compressed day")
    parser.add_argument("--service-ms", type=float, default=50.0)
    parser.add_argument("--max", type=int, default=6)
    parser.add_argument("--peak-load", type=float, default=0.8, help="the peak rate / the capacity of --max")
    parser.add_argument("--target-ongoing", type=float, default=1.0)
    parser.add_argument("--upscale-delay", type=float, default=2.0)
    parser.add_argument("--downscale-delay", type=float, default=6.0)
    parser.add_argument("--slo-ms", type=float, help="the SLO on a 10-s window's p99 (default 5 x --service-ms)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; odd rounds run mlcluster first")
    parser.add_argument("--static", action="store_true", help="also a static mlcluster cluster of --max")
    parser.add_argument("--no-ray", action="store_true", help="mlcluster's side alone")
    args = parser.parse_args()
    if args.slo_ms is None:
        args.slo_ms = 5 * args.service_ms
    if args.rounds < 1 or args.max < 2 or args.service_ms <= 0 or args.minutes < 1 or \
            not 0 < args.peak_load <= 1 or args.target_ongoing <= 0 or args.slo_ms <= 0:
        parser.error("need --rounds >= 1, --max >= 2, --service-ms > 0, --minutes >= 1, 0 < --peak-load <= 1, "
                     "--target-ongoing > 0, --slo-ms > 0")
    with_ray = not args.no_ray and elastic_ray.available()
    if not with_ray and not args.no_ray:
        print(f"ray is not installed: mlcluster's side alone (for Ray Serve beside it: {elastic_ray.INSTALL})",
              flush=True)
    peak_rps = args.peak_load * args.max * 1000 / args.service_ms
    at = arrivals(args.minutes * 60, peak_rps, warmup(args))
    duration, service_s = args.minutes * 60, args.service_ms / 1000
    rates = [peak_rps * day_fraction(24 * (i + 0.5) * 10 / duration) for i in range(int(duration // 10))]
    oracle = oracle_container_s(rates, 10, service_s, args.slo_ms / 1000, args.max) / (args.max * 10 * len(rates))
    rows: list[tuple[int, DayFigures]] = []
    for r in range(1, args.rounds + 1):
        order = ["mlcluster", "ray"] if r % 2 else ["ray", "mlcluster"]
        order = [s for s in order if with_ray or s != "ray"] + (["static"] if args.static else [])
        for system in order:
            print(f"round {r}: {system} ...", file=sys.stderr, flush=True)
            rows.append((r, run_ray(args, at) if system == "ray" else run_mlcluster(args, at, system == "static")))
    print(f"compressed day of {args.minutes:g} min after {warmup(args):.0f} s of the day before (not counted): "
          f"{len(at):,} Poisson arrivals (seed {SEED}), peak "
          f"{peak_rps:.0f} req/s ({args.peak_load:g} x {args.max} containers of {args.service_ms:g} ms, capacity 1), "
          f"trough {DAY[3] * peak_rps:.0f} req/s; autoscaling 1..{args.max} at target {args.target_ongoing:g}, "
          f"delays {args.upscale_delay:g} s / {args.downscale_delay:g} s; "
          f"SLO: a 10-s window's p99 <= {args.slo_ms:g} ms")
    print("\n".join(table(rows)))
    print(f"the best any scaler could do at this SLO (elastic_oracle.py: the fewest containers within it for each "
          f"window's rate, known in advance, started at once): {oracle:.2f} x static peak")
    ours = [f for _, f in rows if f.system == "mlcluster"]
    theirs = [f for _, f in rows if f.system == "Ray Serve"]
    print(f"mlcluster: container-seconds {statistics.median(f.ratio for f in ours):.2f} x static peak "
          f"(target <= 0.6), SLO met in {100 * statistics.median(f.share for f in ours):.0f} % of windows "
          "(target >= 95 %)")
    if theirs:
        ratio = statistics.median(f.container_s for f in ours) / statistics.median(f.container_s for f in theirs)
        print(f"mlcluster / Ray Serve: container-seconds {ratio:.2f} x, "
              f"windows within SLO {statistics.median(f.share for f in ours):.2f} / "
              f"{statistics.median(f.share for f in theirs):.2f}")


if __name__ == "__main__":
    main()
