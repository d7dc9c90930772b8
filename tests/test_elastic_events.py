"""The controller's event log (mlcluster/elastic/events.py) and `mlcluster
events`, through the real console script."""
from __future__ import annotations

import json
import stat
import subprocess
import threading

from mlcluster.elastic import events
from mlcluster.elastic.events import Event
from mlcluster.state import ClusterState
from support.console import MLCLUSTER, cli, home_fixture
from support.waiting import wait_for

home = home_fixture()

UP = Event(time=1_796_000_000.0, kind="scale_up", current=2, desired=4,
           reason="16 ongoing (2 in flight + 14 queued) over 2 containers for 3 s > target 2 -> 4 containers")
HEAL = Event(time=1_796_000_010.0, kind="heal", current=4, desired=4, container="worker1-2",
             reason="its process (pid 4242) died; restarted on port 40001")


def make_cluster(name: str = "lab") -> ClusterState:
    state = ClusterState(name=name, provider="local", token="t")
    state.save()
    return state


def test_events_are_appended_as_private_json_lines_and_read_back(home):
    state = make_cluster()
    assert events.read(state.dir) == []
    events.append(state.dir, UP)
    events.append(state.dir, HEAL)
    path = events.events_path(state.dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [json.loads(line)["kind"] for line in path.read_text().splitlines()] == ["scale_up", "heal"]
    assert events.read(state.dir) == [UP, HEAL]
    assert events.read(state.dir, last=1) == [HEAL]
    with open(path, "a") as f:
        f.write('{"time": 1, "kind": "heal", "rea')  # a line cut short by a crash is skipped
    assert events.read(state.dir) == [UP, HEAL]


def test_an_unknown_kind_is_refused(home):
    state = make_cluster()
    try:
        events.append(state.dir, Event(time=0, kind="party", reason="no"))
    except ValueError as exc:
        assert "party" in str(exc)
    else:
        raise AssertionError("an unknown kind was written")
    assert events.read(state.dir) == []


def test_the_events_command_lists_decisions_with_reasons(home):
    state = make_cluster()
    events.append(state.dir, UP)
    events.append(state.dir, HEAL)
    listed = json.loads(cli("events", "-n", "lab", "--json").stdout)
    assert listed["name"] == "lab"
    assert [(e["kind"], e["current"], e["desired"], e["reason"]) for e in listed["events"]] == [
        ("scale_up", 2, 4, UP.reason), ("heal", 4, 4, HEAL.reason)]
    assert json.loads(cli("events", "-n", "lab", "--json", "--last", "1").stdout)["events"][0]["kind"] == "heal"
    text = cli("events", "--name", "lab").stdout.splitlines()
    assert text[0].startswith("2026-") and "scale_up" in text[0] and "2 -> 4" in text[0] and UP.reason in text[0]
    assert "worker1-2: its process" in text[1]


def test_a_cluster_without_events_says_so(home):
    make_cluster()
    result = cli("events", "-n", "lab")
    assert result.stdout == "" and "no events yet" in result.stderr
    assert json.loads(cli("events", "-n", "lab", "--json").stdout)["events"] == []


def test_usage_errors_exit_2_and_an_unknown_cluster_exits_1(home):
    make_cluster()
    for args in (["--last", "0"], ["--name", "Bad Name!"], ["--lats", "3"]):
        result = cli("events", *args, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr)
    result = cli("events", "-n", "nope", check=False)
    assert result.returncode == 1 and "no cluster named 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_follow_prints_new_events_as_they_come(home):
    state = make_cluster()
    events.append(state.dir, UP)
    proc = subprocess.Popen([MLCLUSTER, "events", "-n", "lab", "-f", "--json"], stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(lines) == 1, "the event already written", timeout=30)
        events.append(state.dir, HEAL)
        wait_for(lambda: len(lines) == 2, "the new event", timeout=30)
        assert [Event.from_json(json.loads(line)) for line in lines] == [UP, HEAL]
    finally:
        proc.kill()
        proc.wait(timeout=10)
