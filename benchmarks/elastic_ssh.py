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
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from support.load import ClosedLoop, failed  # noqa: E402
from support.sshcluster import CLUSTER, toml_config  # noqa: E402
from support.sshhosts import SSHTestNetwork, missing_facilities  # noqa: E402

MLCLUSTER = str(Path(sys.executable).with_name("mlcluster"))


def serving(url: str) -> dict[str, str]:
    try:
        return {c["id"]: c["status"] for c in requests.get(f"{url}/status", timeout=5).json()["containers"]}
    except requests.RequestException:
        return {}


def wait(predicate, what: str, timeout: float) -> float:
    """Seconds until `predicate` holds, looked at every 0.1 s."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--host-grace", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--service-ms", type=int, default=20)
    args = parser.parse_args()
    if missing_facilities():
        raise SystemExit(f"the SSH test network cannot be made here: {missing_facilities()}")
    up_serving = {"free", "busy"}
    home_ids, stand_ins = {"w1-1", "w1-2", "w2-1", "w2-2"}, {"w1-1-on-spare", "w1-2-on-spare"}
    with tempfile.TemporaryDirectory(prefix="bench-elastic-ssh-") as tmp, SSHTestNetwork() as net:
        net.add_hosts(["orch", "w1", "w2", "spare"])
        env = {**os.environ, "MLCLUSTER_HOME": str(Path(tmp) / "home"), "HF_HUB_OFFLINE": "1"}
        spare = net.hosts["spare"]
        config = Path(tmp) / "cluster.toml"
        config.write_text(
            toml_config(net, "overhead-test", ["w1", "w2"], host_grace=args.host_grace)
            + f'spares = [ {{ address = "{spare.address}", name = "spare", workdir = "{spare.workdir}", '
            'runtime = "process" } ]\n'
            + "[autoscale]\nheal_grace = 1\n")
        up = subprocess.run([MLCLUSTER, "up", "--provider", "ssh", "--config", str(config),
                             "--service-ms", str(args.service_ms)], env=env,
                            capture_output=True, text=True)
        if up.returncode:
            raise SystemExit(f"up failed:\n{up.stderr[-3000:]}")
        url = json.loads((Path(tmp) / "home" / CLUSTER / "state.json").read_text())["orchestrator_url"]
        w1 = net.hosts["w1"]
        moves, returns = [], []
        load = ClosedLoop(url, clients=args.clients)
        try:
            wait(lambda: load.count() >= 200, "the load to run", 60)
            for r in range(args.rounds):
                net.cut(w1)
                moves.append(wait(lambda: {k for k, v in serving(url).items() if v in up_serving} >= stand_ins,
                                  "w1's containers serving from the spare", 120))
                net.restore(w1)
                returns.append(wait(lambda: set(serving(url)) == home_ids
                                    and set(serving(url).values()) <= up_serving, "w1's containers back home", 120))
                print(f"round {r + 1}: cut -> serving on the spare {moves[-1]:.1f} s; "
                      f"restore -> back home, stand-ins gone {returns[-1]:.1f} s", flush=True)
                served = load.count()
                wait(lambda: load.count() >= served + 100, "more load", 60)
        finally:
            answers = load.finish()
            net.restore(w1)
            subprocess.run([MLCLUSTER, "down", "--name", CLUSTER, "--yes"], env=env, capture_output=True)
    print(f"\nhost_grace {args.host_grace:g} s, {args.clients} closed-loop clients, containers of {args.service_ms} ms")
    print(f"cut -> both containers serving on the spare: median {statistics.median(moves):.1f} s "
          f"(rounds: {', '.join(f'{m:.1f}' for m in moves)}); target <= 60 s")
    print(f"restore -> back home, stand-ins drained and stopped: median {statistics.median(returns):.1f} s")
    print(f"failed requests: {len(failed(answers))} of {len(answers)}")


if __name__ == "__main__":
    main()
