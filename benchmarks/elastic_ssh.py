"""Healing an ssh cluster (issue 20): a worker host's link cut under load, on the SSH test network.

    python benchmarks/elastic_ssh.py [--rounds 3] [--host-grace 2] [--clients 6] [--service-ms 20]

On the SSH test network (tests/support/sshhosts.py: one namespace and sshd per host; needs root), an ssh
cluster of the process runtime: the orchestrator and its controller on `orch`, 2 overhead-test containers of a
fixed service time on each of `w1` and `w2`, and a spare host. A closed loop of --clients runs throughout. Each
round cuts w1's link (its containers, as the controller sees them, are on a host that dropped off) and times:
  - cut -> both of w1's containers serving from the spare (the controller's move: host_grace, then a start);
  - restore -> w1's containers serving at home and the stand-ins gone (the return, a drain first);
and counts the failed requests of the whole run (in-flight requests on the cut host are retried elsewhere
after the orchestrator's forward time-out, 4 s here). The issue's target: a host replaced within 60 s on the
ssh test network, 0 failed requests. Prints each round and the medians; asserts nothing.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from support.load import ClosedLoop, failed  # noqa: E402
from support.sshcluster import bench_network, containers, up_cluster  # noqa: E402
from support.waiting import wait_for  # noqa: E402


def timed(predicate, what: str, timeout: float) -> float:
    """Seconds until `predicate` holds (`wait_for`, looked at every 0.1 s)."""
    start = time.monotonic()
    wait_for(predicate, what, timeout=timeout, interval=0.1)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--host-grace", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--service-ms", type=int, default=20)
    args = parser.parse_args()
    up_serving = {"free", "busy"}
    home_ids, stand_ins = {"w1-1", "w1-2", "w2-1", "w2-2"}, {"w1-1-on-spare", "w1-2-on-spare"}
    with bench_network("orch", "w1", "w2", "spare", prefix="bench-elastic-ssh-") as (net, tmp), \
            up_cluster(tmp / "home", net, "overhead-test", ["w1", "w2"], spares=("spare",),
                       autoscale={"heal_grace": 1}, host_grace=args.host_grace,
                       up_args=("--service-ms", str(args.service_ms))) as cluster:
        url, w1 = cluster.url, net.hosts["w1"]
        moves, returns = [], []
        load = ClosedLoop(url, clients=args.clients)
        try:
            timed(lambda: load.count() >= 200, "the load to run", 60)
            for r in range(args.rounds):
                net.cut(w1)
                moves.append(timed(lambda: {k for k, v in containers(url).items() if v in up_serving} >= stand_ins,
                                   "w1's containers serving from the spare", 120))
                net.restore(w1)
                returns.append(timed(lambda: set(containers(url)) == home_ids
                                     and set(containers(url).values()) <= up_serving, "w1's containers back home",
                                     120))
                print(f"round {r + 1}: cut -> serving on the spare {moves[-1]:.1f} s; "
                      f"restore -> back home, stand-ins gone {returns[-1]:.1f} s", flush=True)
                served = load.count()
                timed(lambda: load.count() >= served + 100, "more load", 60)
        finally:
            answers = load.finish()
            net.restore(w1)
    print(f"\nhost_grace {args.host_grace:g} s, {args.clients} closed-loop clients, containers of {args.service_ms} ms")
    print(f"cut -> both containers serving on the spare: median {statistics.median(moves):.1f} s "
          f"(rounds: {', '.join(f'{m:.1f}' for m in moves)}); target <= 60 s")
    print(f"restore -> back home, stand-ins drained and stopped: median {statistics.median(returns):.1f} s")
    print(f"failed requests: {len(failed(answers))} of {len(answers)}")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as exc:  # `up` failed, or something never happened: say which, without a traceback
        raise SystemExit(f"gave up: {exc}") from None
