"""The elastic controller on a real local cluster, through the console script:
overhead-test workers (real gunicorn processes answering after a fixed
service time), a real orchestrator, the controller as `up` starts it.
A step load scales up to the cap and never past it, the load gone scales down
to the minimum with no failed request, a SIGKILLed worker comes back with no
command; `status --json` and `events --json` show what it did and why."""
from __future__ import annotations

import json
import os
import signal

import requests

from mlcluster.deploy.localhost import find_marked, is_alive, marker
from support.console import cli, home_fixture
from support.load import ClosedLoop, failed
from support.waiting import wait_for

home = home_fixture("elastic", "heal")


def up(name: str, *args: str) -> None:
    cli("up", "--name", name, "--model", "overhead-test", "--service-ms", "50", "--workers", "1", *args)


def status(name: str) -> dict:
    return json.loads(cli("status", "--name", name, "--json").stdout)


def orchestrator_status(url: str) -> dict:
    return requests.get(url + "/status", timeout=5).json()


def own_workers(home, name: str) -> list[dict]:
    path = home / name / "elastic.json"
    return json.loads(path.read_text())["workers"] if path.exists() else []


def test_a_step_load_scales_up_to_the_cap_then_down_to_the_minimum_with_no_failed_request(home):
    up("elastic", "--containers-per-worker", "1", "--min-containers", "1", "--max-containers", "3",
       "--target-ongoing", "1", "--upscale-delay", "1", "--downscale-delay", "2")
    url = status("elastic")["orchestrator_url"]
    load = ClosedLoop(url, clients=8, watch=True)  # 8 ongoing at target 1: wants 8, capped at 3
    try:
        wait_for(lambda: [c["status"] for c in orchestrator_status(url)["containers"]].count("busy") == 3,
                 "three containers serving", timeout=40)
        elastic = status("elastic")["autoscale"]
        assert (elastic["min"], elastic["max"], elastic["target"], elastic["current"]) == (1, 3, 1, 3)
        assert elastic["desired"] <= 3
        started = own_workers(home, "elastic")
        assert len(started) == 2
        served_before = orchestrator_status(url)["served"]
        wait_for(lambda: orchestrator_status(url)["served"] > served_before + 100, "more requests served at the cap")
        assert load.most() == 3  # at the cap all along, never past it
    finally:
        answers = load.finish()
    wait_for(lambda: len(orchestrator_status(url)["containers"]) == 1, "the scale-down to the minimum", timeout=40)
    assert load.most() == 3
    assert answers and failed(answers) == [], f"{len(failed(answers))} failed requests"
    wait_for(lambda: not any(is_alive(w["pid"], marker("elastic")) for w in started)
             and own_workers(home, "elastic") == [], "the drained workers to stop and be forgotten")
    assert status("elastic")["autoscale"]["current"] == 1

    decisions = json.loads(cli("events", "--name", "elastic", "--json").stdout)["events"]
    kinds = [e["kind"] for e in decisions]
    assert kinds[0] == "started" and "scale_up" in kinds and kinds[-1] == "scale_down"
    ups = [e for e in decisions if e["kind"] == "scale_up"]
    assert all(e["desired"] <= 3 and "queued" in e["reason"] and "->" in e["reason"] for e in ups)
    last_up = max(i for i, kind in enumerate(kinds) if kind == "scale_up")
    downs = decisions[last_up + 1:]  # one step, or more when a straggler kept one container busy in the window
    assert {e["kind"] for e in downs} == {"scale_down"} and all("< target 1" in e["reason"] for e in downs)
    assert downs[0]["current"] == 3 and downs[-1]["desired"] == 1
    cli("down", "--name", "elastic", "--yes")
    assert find_marked(marker("elastic")) == []


def test_up_again_keeps_the_controllers_containers_and_restarts_it_only_for_new_settings(home):
    """...and `up` without autoscaling drains the controller's own containers, failing no request."""
    args = ["--containers-per-worker", "1", "--max-containers", "2", "--upscale-delay", "0", "--downscale-delay", "60"]
    up("elastic", *args)
    url = status("elastic")["orchestrator_url"]
    load = ClosedLoop(url, clients=4, watch=True)
    try:
        wait_for(lambda: status("elastic")["autoscale"]["current"] == 2, "a scale-up to the cap", timeout=30)
        controller = controller_pid(home)
        up("elastic", *args)  # the same settings: nothing moves, the controller's container is not drained
        assert controller_pid(home) == controller
        up("elastic", *args[:-1], "30")  # a new downscale delay: a new controller, the same containers
        assert controller_pid(home) != controller
        wait_for(lambda: status("elastic")["autoscale"]["current"] == 2, "the new controller to count 2", timeout=30)
        served = orchestrator_status(url)["served"]
        wait_for(lambda: orchestrator_status(url)["served"] > served + 40, "more requests served")
        assert load.drained() == set() and load.most() == 2
        up("elastic", "--containers-per-worker", "1")  # autoscaling off: back to up's one container, drained
        wait_for(lambda: [c["id"] for c in orchestrator_status(url)["containers"]] == ["worker1-1"],
                 "the controller's container to leave", timeout=30)
        served = orchestrator_status(url)["served"]
        wait_for(lambda: orchestrator_status(url)["served"] > served + 20, "more requests served")
    finally:
        answers = load.finish()
    assert load.drained() <= {"elastic-1"} and load.most() == 2  # a 50-ms drain may pass between two looks
    assert answers and failed(answers) == []
    decisions = json.loads(cli("events", "-n", "elastic", "--json").stdout)["events"]
    assert [e["kind"] for e in decisions].count("started") == 3
    assert "autoscaling is off" in decisions[-1]["reason"] and status("elastic")["autoscale"]["max"] is None
    wait_for(lambda: own_workers(home, "elastic") == [], "the controller's worker to be stopped and forgotten")
    cli("down", "--name", "elastic", "--yes")
    assert find_marked(marker("elastic")) == []


def controller_pid(home) -> int:
    state = json.loads((home / "elastic" / "state.json").read_text())
    return state["resources"]["services"]["controller"]["pid"]


def test_a_sigkilled_worker_is_replaced_with_no_command(home, tmp_path):
    config = tmp_path / "heal.toml"
    config.write_text("[autoscale]\nheal_grace = 1\n")  # a fixed cluster: the controller only heals
    up("heal", "--containers-per-worker", "2", "--config", str(config))
    state = json.loads((home / "heal" / "state.json").read_text())
    victim = state["resources"]["services"]["worker1-2"]
    os.killpg(victim["pid"], signal.SIGKILL)

    def healed() -> bool:
        now = json.loads((home / "heal" / "state.json").read_text())
        pid = now["resources"]["services"]["worker1-2"]["pid"]
        return pid != victim["pid"] and {c["status"] for c in status("heal")["containers"]} == {"free"}
    wait_for(healed, "worker1-2 to be restarted and serve again", timeout=40)
    after = status("heal")
    assert [(c["id"], c["port"]) for c in sorted(after["containers"], key=lambda c: c["id"])] == [
        ("worker1-1", state["containers"][0]["port"]), ("worker1-2", victim["port"])]  # in place: same address
    assert after["autoscale"]["max"] is None and after["autoscale"]["current"] == 2 and after["autoscale"]["running"]
    answers = {requests.post(after["orchestrator_url"] + "/new_request", json={"text": f"t{i}"}, timeout=30)
               .json()["container"]["id"] for i in range(6)}
    assert answers == {"worker1-1", "worker1-2"}
    heals = [e for e in json.loads(cli("events", "-n", "heal", "--json").stdout)["events"] if e["kind"] == "heal"]
    assert len(heals) == 1 and heals[0]["container"] == "worker1-2" and str(victim["pid"]) in heals[0]["reason"]
    assert "Heals dead workers".lower() in cli("status", "--name", "heal").stdout.lower()
    controller = state["resources"]["services"]["controller"]
    os.killpg(controller["pid"], signal.SIGKILL)  # its published state stays; status says it is stale
    wait_for(lambda: not status("heal")["autoscale"]["running"], "status to see the controller gone")
    assert "controller: not running" in " ".join(cli("status", "--name", "heal").stdout.split())
    cli("down", "--name", "heal", "--yes")
    assert find_marked(marker("heal")) == []


def test_bad_autoscaling_settings_are_usage_errors(home, tmp_path):
    bad = [
        (["--min-containers", "2"], "need --max-containers"),
        (["--min-containers", "4", "--max-containers", "2"], "above --max-containers"),
        (["--max-containers", "0"], "--max-containers"),
        (["--provider", "ssh", "--min-containers", "3", "--max-containers", "2"], "above --max-containers"),
    ]
    for args, words in bad:
        result = cli("up", "--name", "elastic", "--model", "overhead-test", *args, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr)
        assert words in " ".join(result.stderr.split()), (args, result.stderr)
    config = tmp_path / "bad.toml"
    for text, words in [('[autoscale]\nmax_containers = "3"\n', "max_containers must be an integer"),
                        ("[autoscale]\nmax_container = 3\n", "did you mean 'max_containers'?")]:
        config.write_text(text)
        result = cli("up", "--name", "elastic", "--config", str(config), check=False)
        assert result.returncode == 2 and words in " ".join(result.stderr.split()), result.stderr
    assert not (home / "elastic").exists()
