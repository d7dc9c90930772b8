"""Rolling updates of a real local process cluster, through the console
script: the tiny model, real gunicorn workers, a real orchestrator.
A roll to another model directory under a closed-loop load fails no request
and every answer after it names the new model; a roll whose new workers
cannot load their model stops, exits 1 and leaves the old ones serving; a
25 % canary sends 20-30 % of 2,000 requests to the new version, `--promote`
finishes the roll and `up` with the old model removes a canary."""
from __future__ import annotations

import json
import os
import shutil
import signal
from collections import Counter

import requests

from mlcluster.deploy.localhost import find_marked, marker
from support.console import cli, home_fixture
from support.load import ClosedLoop, ask, failed
from support.waiting import wait_for

home = home_fixture("roll", "broken", "canary", "healed", "scaled")
SHAPE = ("--workers", "2", "--containers-per-worker", "1", "--backend", "torch")


def up(name: str, model: str, *extra: str, check: bool = True):
    return cli("up", "--name", name, *SHAPE, "--model", model, *extra, check=check)


def status(name: str) -> dict:
    return json.loads(cli("status", "--name", name, "--json").stdout)


def answered_by(url: str, n: int = 20) -> set[tuple[int, str]]:
    """The (status, model) pairs of `n` requests in a row."""
    with requests.Session() as http:
        return {(a.status, a.model) for a in (ask(http, url, "which model answers") for _ in range(n))}


def another_copy(model: str, tmp_path, name: str) -> str:
    other = tmp_path / name
    shutil.copytree(model, other)
    return str(other)


def test_a_roll_under_load_fails_no_request_and_every_answer_after_it_names_the_new_model(home, tiny_model, tmp_path):
    new_model = another_copy(tiny_model, tmp_path, "model-b")
    up("roll", tiny_model)
    url = status("roll")["orchestrator_url"]
    load = ClosedLoop(url, clients=4, watch=True)
    wait_for(lambda: load.count() >= 500, "the load to run", timeout=60)
    rolled = up("roll", new_model, "--max-unavailable", "1")
    at_the_end = load.count()
    wait_for(lambda: load.count() >= max(5000, at_the_end + 500), "5,000 requests", timeout=90)
    answers = load.finish()

    assert "serving " + new_model in rolled.stdout
    assert failed(answers) == [] and len(answers) >= 5000, Counter(a.status for a in answers)
    after = [a.model for a in answers[at_the_end + 8:]]  # past the few in flight when `up` returned
    assert after and all(m == "model-b" for m in after), Counter(after)
    assert {a.model for a in answers[:at_the_end]} >= {"tiny-distilbert"}
    # During the roll the orchestrator held old and new at once, and never fewer than N - K serving.
    versions = [{c["version"] for c in sample} for sample in load.samples]
    assert any(len(v) == 2 for v in versions)
    assert min(sum(c["status"] in ("free", "busy") for c in sample) for sample in load.samples) >= 1

    final = status("roll")
    assert final["model"] == new_model and {c["model"] for c in final["containers"]} == {new_model}
    assert len(final["containers"]) == 2 and all(c["status"] in ("free", "busy") for c in final["containers"])
    rolls = [e for e in json.loads(cli("events", "--name", "roll", "--json").stdout)["events"] if e["kind"] == "roll"]
    assert [e["reason"].split(":")[0] for e in rolls] == ["wave 1/2", "wave 2/2", "roll done"]
    cli("down", "--name", "roll", "--yes")
    assert find_marked(marker("roll")) == []


def test_a_roll_whose_new_workers_cannot_load_stops_exits_1_and_the_old_ones_keep_serving(home, tiny_model, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "nothing-real"}')
    up("broken", tiny_model)
    url = status("broken")["orchestrator_url"]
    processes = len(find_marked(marker("broken")))  # the orchestrator, the controller, each worker's two

    refused = up("broken", str(broken), check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "the roll stopped" in refused.stderr and "could not be loaded" in refused.stderr
    assert "Traceback" not in refused.stderr and "serving" not in refused.stdout

    after = status("broken")
    assert after["model"] == tiny_model and len(after["containers"]) == 2
    assert all(c["model"] == tiny_model and c["status"] in ("free", "busy") for c in after["containers"])
    assert answered_by(url) == {(200, "tiny-distilbert")}
    saved = json.loads((home / "broken" / "state.json").read_text())
    assert saved["spec"]["model"] == tiny_model and len(saved["containers"]) == 2
    assert len([p for p in saved["resources"]["services"].values() if p["kind"] == "worker"]) == 2
    wait_for(lambda: len(find_marked(marker("broken"))) == processes, "the new worker to be gone")
    same = up("broken", tiny_model, "--canary", "25", check=False)  # a canary of what it serves already
    assert same.returncode == 1 and "a canary needs another model" in same.stderr, same.stderr
    cli("down", "--name", "broken", "--yes")


def test_a_25_percent_canary_gets_20_to_30_percent_of_2000_requests_then_promote_or_rollback(home, tiny_model,
                                                                                             tmp_path):
    new_model = another_copy(tiny_model, tmp_path, "model-c")
    up("canary", tiny_model)
    url = status("canary")["orchestrator_url"]
    started = up("canary", new_model, "--canary", "25")
    assert "canary: 25 %" in started.stdout
    during = status("canary")
    assert during["model"] == tiny_model  # not changed yet: only a canary runs
    assert during["canary"]["percent"] == 25 and during["canary"]["model"] == new_model
    assert Counter(c["model"] for c in during["containers"]) == {tiny_model: 2, new_model: 1}

    load = ClosedLoop(url, clients=8)
    wait_for(lambda: load.count() >= 2000, "2,000 requests", timeout=90)
    answers = load.finish()[:2000]
    assert len(answers) == 2000 and failed(answers) == []
    share = sum(1 for a in answers if a.model == "model-c") / 2000
    assert 0.20 <= share <= 0.30, share

    up("canary", tiny_model)  # the cluster's own model: the canary goes
    back = status("canary")
    assert "canary" not in back or back["canary"] is None
    assert {c["model"] for c in back["containers"]} == {tiny_model} and len(back["containers"]) == 2

    up("canary", new_model, "--canary", "25")
    cli("up", "--name", "canary", *SHAPE, "--promote")
    done = status("canary")
    assert done["model"] == new_model and {c["model"] for c in done["containers"]} == {new_model}
    assert answered_by(url) == {(200, "model-c")}
    cli("down", "--name", "canary", "--yes")


def test_canary_and_promote_without_a_running_cluster_or_out_of_range_are_refused(home, tiny_model):
    for extra, code in ((("--canary", "25"), 1), (("--promote",), 1), (("--canary", "150"), 2),
                        (("--canary", "0"), 2), (("--max-unavailable", "0"), 2)):
        refused = up("canary", tiny_model, *extra, check=False)
        assert refused.returncode == code, (extra, refused.stdout, refused.stderr)
        assert "Traceback" not in refused.stderr
    assert find_marked(marker("canary")) == [] and not (home / "canary" / "state.json").exists()


def test_a_worker_killed_after_a_roll_comes_back_with_the_new_model_and_rolls_back_with_no_failure(home, tiny_model,
                                                                                                   tmp_path):
    new_model = another_copy(tiny_model, tmp_path, "model-d")
    up("healed", tiny_model)
    up("healed", new_model)
    state = json.loads((home / "healed" / "state.json").read_text())
    victim = state["resources"]["services"]["worker2-1"]
    shown = next(c for c in status("healed")["containers"] if c["id"].startswith("worker2-1."))
    assert shown["pid"] == str(victim["pid"]) and shown["serves"].startswith("model-d")
    os.killpg(victim["pid"], signal.SIGKILL)

    def healed() -> bool:
        now = json.loads((home / "healed" / "state.json").read_text())
        pid = now["resources"]["services"]["worker2-1"]["pid"]
        return pid != victim["pid"] and {c["status"] for c in status("healed")["containers"]} == {"free"}
    wait_for(healed, "worker2-1 to be restarted by the controller and serve again", timeout=60)
    url = status("healed")["orchestrator_url"]
    assert answered_by(url) == {(200, "model-d")}  # healed with what it serves now

    load = ClosedLoop(url, clients=2)
    wait_for(lambda: load.count() >= 100, "the load to run", timeout=60)
    up("healed", tiny_model)  # back again, under load
    at_the_end = load.count()
    wait_for(lambda: load.count() >= at_the_end + 200, "answers after the roll", timeout=60)
    answers = load.finish()
    assert failed(answers) == []
    assert {a.model for a in answers[at_the_end + 4:]} == {"tiny-distilbert"}
    assert {c["model"] for c in status("healed")["containers"]} == {tiny_model}
    assert len(status("healed")["containers"]) == 2
    cli("down", "--name", "healed", "--yes")


def test_a_roll_of_an_autoscaled_cluster_replaces_the_controllers_containers_too(home, tiny_model):
    scaled = ("--workers", "1", "--containers-per-worker", "1", "--backend", "torch", "--min-containers", "1",
              "--max-containers", "3", "--target-ongoing", "1", "--upscale-delay", "1", "--downscale-delay", "600")
    cli("up", "--name", "scaled", *scaled, "--model", "overhead-test", "--service-ms", "50")
    url = status("scaled")["orchestrator_url"]
    load = ClosedLoop(url, clients=4)
    wait_for(lambda: len(status("scaled")["containers"]) == 3, "the controller to scale up to 3", timeout=60)
    cli("up", "--name", "scaled", *scaled, "--model", tiny_model, "--service-ms", "50")
    at_the_end = load.count()
    wait_for(lambda: load.count() >= at_the_end + 300, "answers after the roll", timeout=60)
    answers = load.finish()
    assert failed(answers) == []
    assert {a.model for a in answers[at_the_end + 8:]} == {"tiny-distilbert"}  # the controller's old ones are gone
    assert json.loads((home / "scaled" / "state.json").read_text())["spec"]["model"] == tiny_model
    cli("down", "--name", "scaled", "--yes")
