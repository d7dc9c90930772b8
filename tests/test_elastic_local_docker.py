"""A local Docker cluster's controller (the pool controller, run on this machine:
elastic/pool_here.py) against the real Docker engine, through the console
script: overhead-test worker containers (a fixed service time), a real
orchestrator container. A `docker kill`ed worker serves again with no command;
a step load scales up to the cap and never past it, the load gone scales down
to the minimum with no failed request; `down` leaves nothing of the cluster."""
from __future__ import annotations

import json
import os
import time

import pytest
import requests

from mlcluster.deploy.localhost import find_marked, marker
from support.console import cli, home_fixture
from support.load import ClosedLoop, failed
from support.localdocker import labelled
from support.waiting import wait_for

pytestmark = pytest.mark.docker
HEAL, SCALE, IDLE = (f"ld{kind}-{os.getpid()}" for kind in ("heal", "scale", "idle"))  # two runs must not meet
home = home_fixture(HEAL, SCALE, IDLE)


def up(name: str, *args: str) -> None:
    cli("up", "--name", name, "--runtime", "docker", "--model", "overhead-test", "--service-ms", "50",
        "--workers", "1", *args, timeout=900)


def status(name: str) -> dict:
    return json.loads(cli("status", "--name", name, "--json").stdout)


def orchestrator_status(url: str) -> dict:
    return requests.get(url + "/status", timeout=5).json()


def down_leaves_nothing(engine, home, name: str) -> None:
    cli("down", "--name", name, "--yes", timeout=300)
    assert labelled(engine, name) == []
    assert labelled(engine, name, "networks") == [] and labelled(engine, name, "volumes") == []
    assert find_marked(marker(name)) == []  # the controller too


def controller_pid(home, name: str) -> int:
    return json.loads((home / name / "state.json").read_text())["resources"]["services"]["controller"]["pid"]


def cleanup(engine, name: str) -> None:
    """Only when `down` itself failed (or the test did before it)."""
    for container in labelled(engine, name):
        container.remove(force=True)
    for kind in ("networks", "volumes"):
        for thing in labelled(engine, name, kind):
            thing.remove()


def test_a_killed_worker_container_serves_again_with_no_command(engine, home, tmp_path):
    config = tmp_path / "heal.toml"
    config.write_text("[autoscale]\nheal_grace = 1\n")  # a fixed cluster: the controller only heals
    try:
        up(HEAL, "--containers-per-worker", "2", "--config", str(config))
        url = status(HEAL)["orchestrator_url"]
        load = ClosedLoop(url, clients=2)
        try:
            victim = engine.containers.get(f"mlcluster-{HEAL}-worker1-2")
            wait_for(lambda: load.count() > 20, "requests served before the kill")
            victim.kill()
            killed = time.monotonic()
            wait_for(lambda: {c["id"]: c["status"] for c in orchestrator_status(url)["containers"]}["worker1-2"]
                     == "down", "the orchestrator to see it down", timeout=30)
            seen_down = time.monotonic()
            wait_for(lambda: {c["id"]: c["status"] for c in orchestrator_status(url)["containers"]}["worker1-2"]
                     in ("free", "busy"), "the killed container serving again", timeout=60)
            print(f"\nkilled container: seen down {seen_down - killed:.1f} s after the kill, serving again "
                  f"{time.monotonic() - seen_down:.1f} s after that (heal_grace 1 s)")
            victim.reload()
            assert victim.status == "running"
            served = load.count()
            wait_for(lambda: load.count() > served + 20, "more requests served after the heal")
        finally:
            answers = load.finish()
        assert answers and failed(answers) == [], f"{len(failed(answers))} failed requests"
        heals = [e for e in json.loads(cli("events", "--name", HEAL, "--json").stdout)["events"]
                 if e["kind"] == "heal"]
        assert heals and heals[0]["container"] == "worker1-2" and "restarted in place" in heals[0]["reason"]
        assert status(HEAL)["autoscale"]["running"] is True
        down_leaves_nothing(engine, home, HEAL)
    finally:
        cleanup(engine, HEAL)


def test_a_step_load_scales_up_to_the_cap_then_down_to_the_minimum(engine, home):
    try:
        args = ("--containers-per-worker", "1", "--min-containers", "1", "--max-containers", "3",
                "--target-ongoing", "1", "--upscale-delay", "1", "--downscale-delay", "2")
        up(SCALE, *args)
        url = status(SCALE)["orchestrator_url"]
        load = ClosedLoop(url, clients=8, watch=True)  # 8 ongoing at target 1: wants 8, capped at 3
        try:
            stepped = time.monotonic()
            wait_for(lambda: [c["status"] for c in orchestrator_status(url)["containers"]].count("busy") == 3,
                     "three containers serving", timeout=120)
            print(f"\nstep load: three containers serving {time.monotonic() - stepped:.1f} s after the step")
            scaled = status(SCALE)["autoscale"]
            assert (scaled["min"], scaled["max"], scaled["target"], scaled["current"]) == (1, 3, 1, 3)
            assert scaled["desired"] <= 3
            assert len(labelled(engine, SCALE)) == 4  # the orchestrator and three workers
            controller = controller_pid(home, SCALE)
            up(SCALE, *args)  # the same settings: the controller and its containers stay, nothing is drained
            assert controller_pid(home, SCALE) == controller and len(orchestrator_status(url)["containers"]) == 3
            served = orchestrator_status(url)["served"]
            wait_for(lambda: orchestrator_status(url)["served"] > served + 100, "more requests served at the cap")
            assert load.drained() == set()
        finally:
            answers = load.finish()
        unloaded = time.monotonic()
        wait_for(lambda: len(orchestrator_status(url)["containers"]) == 1, "the scale-down to the minimum",
                 timeout=60)
        print(f"load gone: down to one container {time.monotonic() - unloaded:.1f} s later (downscale delay 2 s)")
        assert load.most() == 3  # at the cap, never past it
        assert answers and failed(answers) == [], f"{len(failed(answers))} failed requests"
        wait_for(lambda: len(labelled(engine, SCALE)) == 2, "the drained containers removed", timeout=60)
        decisions = json.loads(cli("events", "--name", SCALE, "--json").stdout)["events"]
        kinds = [e["kind"] for e in decisions]
        assert kinds[0] == "started" and "scale_up" in kinds and "scale_down" in kinds
        assert all(e["desired"] <= 3 for e in decisions if e["kind"] == "scale_up")
        down_leaves_nothing(engine, home, SCALE)
    finally:
        cleanup(engine, SCALE)


def test_the_controller_is_the_autostop_agent_and_down_leaves_nothing(engine, home):
    """One agent per cluster: the controller stops the idle cluster's containers and itself;
    `status` says so; `down` then stops nothing more and leaves no container, network, volume
    or process of the cluster."""
    idle_s = 6.0
    try:
        up(IDLE, "--containers-per-worker", "1", "--autostop", f"{idle_s:g}s")
        state = json.loads((home / IDLE / "state.json").read_text())
        services = state["resources"]["services"]
        assert "watchdog" not in services and services["controller"]["pid"] in find_marked(marker(IDLE))
        assert len(labelled(engine, IDLE)) == 2
        started = time.monotonic()
        wait_for(lambda: (home / IDLE / "autostop.json").exists(), "the controller to stop the idle cluster",
                 timeout=60)
        assert time.monotonic() - started >= idle_s - 1.0
        wait_for(lambda: labelled(engine, IDLE) == [] and find_marked(marker(IDLE)) == [],
                 "its containers and the controller gone", timeout=60)
        assert json.loads((home / IDLE / "autostop.json").read_text())["reason"] == "autostop"
        said = json.loads(cli("events", "--name", IDLE, "--json").stdout)["events"]
        assert said[0]["kind"] == "started" and said[-1]["kind"] == "autostop"
        stopped = cli("status", "--name", IDLE, check=False)
        assert stopped.returncode == 1 and "stopped itself (autostop at " in stopped.stderr, stopped.stderr
        assert labelled(engine, IDLE, "networks") and labelled(engine, IDLE, "volumes")  # `down`'s to remove
        down_leaves_nothing(engine, home, IDLE)
        assert not (home / IDLE).exists()
    finally:
        cleanup(engine, IDLE)
