"""The scenario of autoscaling below `up`'s count on the ssh test network
(tests/test_elastic_ssh_min.py on the process runtime,
tests/test_elastic_ssh_docker_min.py on Docker): a 2 x 2 cluster with a spare,
--min-containers 1 --max-containers 5, target 1.

Under a light load (one closed-loop client) the idle cluster goes down to the
minimum: `up`'s own containers drain and stop (w2 empties first), 0 failed
requests. A step load brings `up`'s containers back first, at home, and only
then starts one on the spare; never past the maximum. The load gone, it is
back at one container. `status --json` and `mlcluster events` show it."""
from __future__ import annotations

import time
from typing import Callable

from support.console import cli
from support.load import ClosedLoop, failed
from support.sshcluster import UpCluster, autoscale, containers, events
from support.waiting import wait_for

SERVING = ("free", "busy")
AUTOSCALE = {"min_containers": 1, "max_containers": 5, "target_ongoing": 1, "upscale_delay": 1,
             "downscale_delay": 3, "heal_grace": 1}  # the cluster's [autoscale] table


def serving(url: str) -> set[str]:
    return {cid for cid, s in containers(url).items() if s in SERVING}


def scale_below_up_and_back(cluster: UpCluster, running: Callable[[str], int]) -> None:
    """The scenario on `cluster` (made with `AUTOSCALE`); `running(host)`: the
    cluster's worker containers running on a test host."""
    home, url, name = cluster.home, cluster.url, cluster.name
    base = ClosedLoop(url, clients=1, watch=True)  # a light load throughout: every scale-down happens under it
    loop = None
    try:
        low = time.monotonic()
        wait_for(lambda: (lambda a: a if a.get("current") == 1 else None)(autoscale(name, home)),
                 "status showing the minimum, 1 container", timeout=120, interval=0.5)
        wait_for(lambda: len(containers(url)) == 1 and running("w1") + running("w2") == 1,
                 "one of up's containers left, the others drained and stopped", timeout=60, interval=0.3)
        print(f"\nidle -> down to the minimum: {time.monotonic() - low:.1f} s (downscale_delay 3 s)")
        assert running("spare") == 0
        downs = [e for e in events(name, home) if e["kind"] == "scale_down"]
        assert downs and "(up's)" in downs[0]["reason"] and downs[-1]["desired"] == 1, downs

        loop = ClosedLoop(url, clients=9)
        step = time.monotonic()
        wait_for(lambda: len(serving(url)) == 5, "5 containers serving (the maximum)", timeout=120, interval=0.2)
        print(f"step -> 5 containers serving: {time.monotonic() - step:.1f} s")
        wait_for(lambda: running("spare") == 1, "one new container on the spare", timeout=30)
        assert {"w1-1", "w1-2", "w2-1", "w2-2"} <= serving(url)
        ups = [e["reason"] for e in events(name, home) if e["kind"] == "scale_up"]
        first_new = next(i for i, r in enumerate(ups) if "started spare-scale" in r)
        assert sum(r.count("(up's, port") for r in ups[:first_new + 1]) == 3, ups  # home before a new host
        assert max(e["desired"] for e in events(name, home) if e["kind"] == "scale_up") == 5
        loop.finish()
        gone = time.monotonic()
        wait_for(lambda: len(containers(url)) == 1 and running("spare") + running("w1") + running("w2") == 1,
                 "back to one container", timeout=120, interval=0.3)
        print(f"step gone -> back to one container: {time.monotonic() - gone:.1f} s")
    except AssertionError:
        print("\n" + cli("events", "-n", name, home=home, check=False).stdout)  # what the controller did
        raise
    finally:
        answers = (loop.finish() if loop else []) + base.finish()
    assert base.most() <= 5  # never past the maximum, the draining ones counted
    assert len(answers) > 50 and failed(answers) == [], failed(answers)[:5]
    shown = wait_for(lambda: (lambda a: a if a.get("current") == 1 and a.get("desired") == 1 else None)(
        autoscale(name, home)), "status showing the minimum again", timeout=30, interval=0.5)
    assert (shown["min"], shown["max"]) == (1, 5), shown
    print("\n" + cli("events", "-n", name, home=home).stdout)
