"""What the canary split costs the scheduler, in process (no HTTP), same run, alternating rounds:

    .venv/bin/python benchmarks/canary_hot_path.py [--ref main] [--rounds 21] [--requests 50000]

Three schedulers on the same work: the reference branch's scheduler (`git show REF:...`, loaded as its own
package), this one with no canary (the hot path the split must not slow), and this one with a 25 % canary.
The work: 8 containers of capacity 1 and 16 requests outstanding all the time (so half of them wait in the
queue), each grant released in arrival order. Prints requests per second (the best round, the least
disturbed by the machine's other work, and the median) and their ratios to the reference. Figures of one run
on a shared machine; asserts nothing.
"""
from __future__ import annotations

import argparse
import collections
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("__init__.py", "containers.py", "scheduler.py")


def reference_package(ref: str, where: Path) -> str:
    """The reference's scheduler and containers modules as the package `ref_orchestrator`."""
    package = where / "ref_orchestrator"
    package.mkdir()
    for name in FILES:
        source = f"{ref}:orchestrator_image/mlcluster_orchestrator/{name}"
        text = subprocess.run(["git", "-C", str(ROOT), "show", source],
                              check=True, capture_output=True, text=True).stdout
        (package / name).write_text(text)
    sys.path.insert(0, str(where))
    return "ref_orchestrator"


def run(scheduler_module, canary, requests: int, labelled: bool) -> float:
    """Requests per second through `request`/`release` with 16 outstanding over 8 containers
    (with `labelled`, two of them are version v2)."""
    scheduler = scheduler_module.Scheduler(queue_limit=1000)
    for i in range(8):
        kw = {"version": "v2" if i < 2 else "v1"} if labelled else {}
        scheduler.add("127.0.0.1", 9000 + i, capacity=1, id=f"c{i}", **kw)
    if canary is not None:
        scheduler.set_canary(canary)
    granted: collections.deque = collections.deque()
    for _ in range(16):
        scheduler.request(granted.append)
    start = time.perf_counter()
    for _ in range(requests):
        scheduler.release(granted.popleft(), ok=True)
        scheduler.request(granted.append)
    return requests / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ref", default="main")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--requests", type=int, default=50_000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "orchestrator_image"))
    from mlcluster_orchestrator import scheduler as this
    from mlcluster_orchestrator.containers import Canary
    with tempfile.TemporaryDirectory() as tmp:
        ref = importlib.import_module(reference_package(args.ref, Path(tmp)) + ".scheduler")
        setups = {f"{args.ref} (reference)": (ref, None), "this branch, no canary": (this, None),
                  "this branch, 25 % canary": (this, Canary("v2", 25))}
        rates: dict[str, list[float]] = {name: [] for name in setups}
        for _ in range(args.rounds):
            for name, (module, canary) in setups.items():
                rates[name].append(run(module, canary, args.requests, labelled=module is this))
    reference = rates[f"{args.ref} (reference)"]
    best, median = max(reference), statistics.median(reference)
    print(f"{args.rounds} rounds of {args.requests:,} requests, 8 containers, 16 outstanding:")
    for name, values in rates.items():
        print(f"  {name:<28} best {max(values):>9,.0f} req/s ({max(values) / best:.3f} x)   "
              f"median {statistics.median(values):>9,.0f} req/s ({statistics.median(values) / median:.3f} x)")


if __name__ == "__main__":
    main()
