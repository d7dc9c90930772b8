"""The scenario of healing a cut-off host on the ssh test network
(tests/test_elastic_ssh.py on the process runtime,
tests/test_elastic_ssh_docker.py on Docker): a 2 x 2 cluster (w1, w2) with a
spare, under a closed-loop load, with something of the user's listening on
the spare's first worker port.

w1's link is cut: its containers are restarted on the spare (on the next free
ports) and serve; a stand-in killed there is started again in place; the
controller's published state shows the stand-ins. The link restored, they
return home, the stand-ins drain and go, w1 serves again, and the user's
server still runs. No request fails; `mlcluster events` shows the moves and
returns with their reasons."""
from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator

from support.load import ClosedLoop, failed, served_by
from support.sshcluster import UpCluster, autoscale, containers, events
from support.sshhosts import SSHTestNetwork, TestHost
from support.waiting import wait_for

SERVING = ("free", "busy")
HOME = {"w1-1", "w1-2", "w2-1", "w2-2"}
STAND_INS = {"w1-1-on-spare", "w1-2-on-spare"}


@contextmanager
def users_server(host: TestHost, port: int = 5000) -> Iterator[subprocess.Popen]:
    """Something the user runs by hand on `host`: an HTTP server on `port`, answering before this returns."""
    theirs = subprocess.Popen(["ip", "netns", "exec", host.namespace, sys.executable, "-m", "http.server", str(port),
                               "--bind", host.address], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: host.exec("python3", "-c", f"import socket; socket.create_connection(('{host.address}', "
                                   f"{port}), 1)").returncode == 0, "the user's server on the spare")
        yield theirs
    finally:
        theirs.kill()
        theirs.wait()


def cut_off_and_back(cluster: UpCluster, net: SSHTestNetwork, kill_stand_in: Callable[[], None],
                     stand_ins_gone: Callable[[], bool], timeout: float = 60.0,
                     on_spare: Callable[[], None] = lambda: None) -> None:
    """The scenario. `kill_stand_in()` kills the stand-in w1-1-on-spare as the
    runtime can; `stand_ins_gone()`: nothing of the stand-ins is left on the
    spare; `timeout`: for the stand-ins to serve after the cut; `on_spare()`:
    more checks once they serve."""
    url, w1, name = cluster.url, net.hosts["w1"], cluster.name
    with users_server(net.hosts["spare"]) as theirs:
        loop = ClosedLoop(url, 6)
        try:
            wait_for(lambda: served_by(loop.answers, "w1") and served_by(loop.answers, "w2"), "load on both hosts",
                     timeout=60)
            net.cut(w1)
            cut_at = time.monotonic()
            wait_for(lambda: {k for k, v in containers(url).items() if v in SERVING} >= STAND_INS,
                     "w1's containers serving from the spare", timeout=timeout, interval=0.2)
            print(f"\nw1 cut -> both stand-ins serving on the spare: {time.monotonic() - cut_at:.1f} s "
                  "(host_grace 2 s)")
            on_spare()
            wait_for(lambda: served_by(loop.answers, "w1-1-on-spare") + served_by(loop.answers, "w1-2-on-spare")
                     >= 20, "requests answered by the stand-ins", timeout=30)
            kill_stand_in()  # a stand-in that dies is started again in place too
            wait_for(lambda: any(e["kind"] == "heal" and "stand-in w1-1-on-spare" in e["reason"]
                                 for e in events(name, cluster.home))
                     and containers(url).get("w1-1-on-spare") in SERVING,
                     "the killed stand-in started again and serving", timeout=60, interval=0.5)

            def shown() -> dict:
                return autoscale(name, cluster.home)
            # The controller publishes what it sees at its looks: wait until a look saw the healed stand-in serve.
            wait_for(lambda: "w1-1 on spare, w1-2 on spare" in shown().get("reason", "")
                     and (shown()["max"], shown()["desired"], shown()["current"], shown()["running"])
                     == (None, 4, 4, True), "status to show the stand-ins, all four serving", timeout=30)
            net.restore(w1)
            wait_for(lambda: set(containers(url)) == HOME and set(containers(url).values()) <= set(SERVING),
                     "the stand-ins drained and gone", timeout=60, interval=0.2)
            wait_for(stand_ins_gone, "the stand-ins stopped on the spare", timeout=30)
            back = loop.count()
            wait_for(lambda: served_by(loop.answers[back:], "w1") >= 10, "w1 serving again", timeout=30)
            assert theirs.poll() is None  # the user's server still runs
        finally:
            answers = loop.finish()
            net.restore(w1)
    assert len(answers) > 50
    assert not failed(answers), Counter(a.status for a in failed(answers))

    found = events(name, cluster.home)
    moves = [e for e in found if e["kind"] == "move"]
    returns = [e for e in found if e["kind"] == "return"]
    assert sorted(e["container"] for e in moves) == ["w1-1", "w1-2"]
    assert all("w1 unreachable for" in e["reason"] and "restarted on spare" in e["reason"] for e in moves)
    assert sorted(e["reason"].rsplit("(port ", 1)[1] for e in moves) == ["5001)", "5002)"]  # 5000 was the user's
    assert sorted(e["container"] for e in returns) == ["w1-1", "w1-2"]
    assert all("w1 answers again" in e["reason"] for e in returns)
    assert found[0]["kind"] == "started"
