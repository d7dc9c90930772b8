"""Autoscaling on the ssh test network: an ssh cluster (orchestrator host, one
worker host of 2 containers, one spare, the process runtime, a tiny model)
with --min-containers 2 --max-containers 4 (the [autoscale] table). A step of
closed-loop load makes the controller on the orchestrator's host start
containers on the pool host with room (the spare), never past the maximum;
`up` run again at the cap leaves them registered (the controller's, not stale
ones); the load gone, it drains them, stops them once they hold nothing and is back
at the minimum, with no failed request. `status --json` and `mlcluster events`
show the decisions with their reasons; `down` leaves nothing."""
from __future__ import annotations

import time

from support.console import cli
from support.load import ClosedLoop, failed
from support.sshcluster import autoscale, cluster_fixture, containers, events, host_network, marked, ssh_marks
from support.waiting import wait_for

pytestmark = ssh_marks()

NAME = "sshscale"  # unique to this file: other tests run ssh clusters beside it
net = host_network("orch", "w1", "spare")
cluster = cluster_fixture(["w1"], name=NAME, spares=("spare",), host_grace=2,
                          autoscale={"min_containers": 2, "max_containers": 4, "target_ongoing": 1,
                                     "upscale_delay": 1, "downscale_delay": 3})


def test_a_step_load_scales_onto_the_spare_within_the_cap_and_back_to_the_minimum(net, cluster):
    home, url = cluster.home, cluster.url
    shown = wait_for(lambda: autoscale(NAME, home).get("running") and autoscale(NAME, home), "the controller's state",
                     timeout=30, interval=0.5)
    assert (shown["min"], shown["max"], shown["target"], shown["current"]) == (2, 4, 1, 2), shown
    assert marked(net, "spare", NAME) == []

    base = ClosedLoop(url, clients=1, watch=True)  # runs throughout: the scale-down happens under its load
    loop = ClosedLoop(url, clients=7)
    step = time.monotonic()
    try:
        wait_for(lambda: any(a.container.startswith("spare-") for a in list(loop.answers)),
                 "a first answer from the spare", timeout=90, interval=0.1)
        print(f"\nstep -> first answer from a new container: {time.monotonic() - step:.1f} s (upscale_delay 1 s)")
        wait_for(lambda: sum(1 for cid, s in containers(url).items() if cid.startswith("spare-")
                             and s in ("free", "busy")) == 2, "two containers serving on the spare", timeout=90,
                 interval=0.2)
        wait_for(lambda: sum(1 for a in list(loop.answers) if a.container.startswith("spare-")) >= 20,
                 "answers from the spare's containers", timeout=30)
        up_shown = wait_for(lambda: (lambda a: a if a.get("current") == 4 else None)(autoscale(NAME, home)),
                            "status showing 4 containers", timeout=30, interval=0.5)
        assert up_shown["desired"] == 4 and up_shown["max"] == 4
        # `up` again at the cap (a reconcile): the controller's containers are its own, not stale ones to drain
        again = cli("up", "--provider", "ssh", "--config", str(cluster.config), home=home, timeout=300, check=False)
        assert again.returncode == 0, again.stderr[-2000:]
        spare = {cid: s for cid, s in containers(url).items() if cid.startswith("spare-")}
        assert len(spare) == 2 and set(spare.values()) <= {"free", "busy"}, spare
        loop.finish()  # the step is over; the base load goes on while the spare's containers drain
        gone = time.monotonic()
        wait_for(lambda: set(containers(url)) == {"w1-1", "w1-2"}, "back to up's two containers", timeout=60,
                 interval=0.2)
        wait_for(lambda: marked(net, "spare", NAME) == [], "the spare's containers stopped", timeout=30)
        print(f"step gone -> the spare's containers stopped: {time.monotonic() - gone:.1f} s (downscale_delay 3 s)")
    finally:
        answers = loop.finish() + base.finish()
    assert base.most() <= 4  # never past the maximum, the draining ones counted
    assert len(answers) > 50 and failed(answers) == []
    down_shown = wait_for(lambda: (lambda a: a if a.get("current") == 2 and a.get("desired") == 2 else None)(
        autoscale(NAME, home)), "status showing the minimum again", timeout=30,
        interval=0.5)
    assert "within target" in down_shown["reason"] or "< target" in down_shown["reason"], down_shown
    assert "autoscale 2..4 at 1 ongoing each" in " ".join(cli("status", "--name", NAME, home=home).stdout.split())

    found = events(NAME, home)
    ups = [e for e in found if e["kind"] == "scale_up"]
    downs = [e for e in found if e["kind"] == "scale_down"]
    assert ups and all("started spare-scale" in e["reason"] for e in ups), found
    assert max(e["desired"] for e in ups) == 4 and "queued" in ups[0]["reason"]
    assert downs and all("draining spare-scale" in e["reason"] for e in downs), found
    assert downs[-1]["desired"] == 2 and "< target 1" in downs[0]["reason"]
    print("\n" + cli("events", "-n", NAME, home=home).stdout)


def test_down_leaves_nothing(net, cluster):
    result = cli("down", "--name", NAME, "--yes", home=cluster.home, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("orch", "w1", "spare"):
        wait_for(lambda: marked(net, name, NAME) == [], f"nothing of {NAME} left on {name}", timeout=20)
