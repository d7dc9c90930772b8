"""The `mlcluster` console script, run for real as a subprocess on loopback."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import requests

from mlcluster.deploy.localhost import find_marked, marker
from support.console import MLCLUSTER, cli, home_fixture, plain_bind_fails
from support.waiting import wait_for

home = home_fixture("default", "lab", "other", "ctrlc")


def port_free(port: int) -> bool:
    return not plain_bind_fails(port)


def up_args(tiny_model: str, name: str = "lab", workers: int = 2, per: int = 2) -> list[str]:
    return ["up", "--name", name, "--workers", str(workers), "--containers-per-worker", str(per), "--model", tiny_model]


def test_lifecycle_up_status_bench_down(home, tiny_model, tmp_path):
    cli(*up_args(tiny_model))
    status = json.loads(cli("status", "--name", "lab", "--json").stdout)
    url = status["orchestrator_url"]
    assert url.startswith("http://127.0.0.1:")
    assert len(status["containers"]) == 4
    assert {c["status"] for c in status["containers"]} == {"free"}
    ports = [c["port"] for c in status["containers"]] + [int(url.rsplit(":", 1)[1])]
    state_file = home / "lab" / "state.json"
    assert oct(state_file.stat().st_mode & 0o777) == "0o600"

    result_file = tmp_path / "bench.json"
    bench = cli("bench", "--name", "lab", "--concurrency", "15", "--requests", "200", "--json", str(result_file))
    assert "p99" in bench.stdout
    result = json.loads(result_file.read_text())
    assert result["requests"] == 200 and result["ok"] == 200
    assert not result["errors"]
    assert result["concurrency"] == 15
    assert set(result["per_container"]) == {c["id"] for c in status["containers"]}
    assert all(n > 0 for n in result["per_container"].values())
    for key in ("p50", "p90", "p99", "max"):
        assert result["latency_ms"][key] > 0
    assert result["throughput_rps"] > 0 and result["duration_s"] > 0

    assert find_marked(marker("lab"))
    cli("down", "--name", "lab", "--yes")
    assert find_marked(marker("lab")) == []
    assert all(port_free(p) for p in ports)
    assert not (home / "lab").exists()


def test_up_twice_reconciles_and_a_killed_worker_shows_down(home, tiny_model, tmp_path):
    # The controller would restart a dead worker by itself (tests/test_elastic_local.py): not within this test.
    slow_heal = tmp_path / "slow-heal.toml"
    slow_heal.write_text("[autoscale]\nheal_grace = 600\n")
    cli(*up_args(tiny_model, workers=1), "--config", str(slow_heal))
    state = json.loads((home / "lab" / "state.json").read_text())
    first = {sid: p["pid"] for sid, p in state["resources"]["services"].items()}
    cli(*up_args(tiny_model, workers=1), "--config", str(slow_heal))
    state = json.loads((home / "lab" / "state.json").read_text())
    assert {sid: p["pid"] for sid, p in state["resources"]["services"].items()} == first  # nothing restarted
    status = json.loads(cli("status", "--name", "lab", "--json").stdout)
    assert len(status["containers"]) == 2

    victim = state["resources"]["services"]["worker1-2"]
    os.killpg(victim["pid"], signal.SIGKILL)

    def shown_down():
        status = json.loads(cli("status", "--name", "lab", "--json").stdout)
        return status if {c["id"]: c["status"] for c in status["containers"]}["worker1-2"] == "down" else None
    status = wait_for(shown_down, "status showing worker1-2 down", timeout=20, interval=0.5)
    assert {c["id"]: c["status"] for c in status["containers"]} == {"worker1-1": "free", "worker1-2": "down"}
    table = cli("status", "--name", "lab").stdout
    assert "worker1-2" in table and "down" in table and "1/2 containers up" in table

    # A request still gets an answer from the live container.
    answer = requests.post(status["orchestrator_url"] + "/new_request", json={"text": "hello"}, timeout=30).json()
    assert answer["container"]["id"] == "worker1-1"

    # `up` again restarts only the missing container, and it serves again.
    cli(*up_args(tiny_model, workers=1), "--config", str(slow_heal))
    state = json.loads((home / "lab" / "state.json").read_text())
    now = {sid: p["pid"] for sid, p in state["resources"]["services"].items()}
    assert now["worker1-1"] == first["worker1-1"] and now["orchestrator"] == first["orchestrator"]
    assert now["worker1-2"] != first["worker1-2"]
    status = json.loads(cli("status", "--name", "lab", "--json").stdout)
    assert {c["status"] for c in status["containers"]} == {"free"}
    cli("down", "--name", "lab", "--yes")
    assert find_marked(marker("lab")) == []


def test_down_finds_processes_when_the_state_file_is_lost(home, tiny_model):
    cli(*up_args(tiny_model, workers=1, per=1))
    assert len(find_marked(marker("lab"))) >= 2
    (home / "lab" / "state.json").unlink()
    result = cli("down", "--name", "lab", "--yes")
    assert "nothing of it is left" in result.stderr
    assert find_marked(marker("lab")) == []


def test_a_cluster_recorded_before_services_had_one_record_shows_and_goes_down(home, tiny_model):
    """A state file as the code before one service record wrote it (a `processes`
    list: tests/test_state.py has a recorded one) still loads: `status` shows its
    workers' pids from it, and `down` stops every process and forgets the cluster."""
    cli(*up_args(tiny_model, workers=2, per=1))
    state_file = home / "lab" / "state.json"
    state = json.loads(state_file.read_text())
    services = state["resources"].pop("services")
    state["resources"].pop("hosts")
    state["resources"]["processes"] = [
        {"admin_port": s["admin_port"], "id": sid, "log": s["log"], "pid": s["pid"], "port": s["port"],
         "role": s["kind"], "worker": s["worker"]} for sid, s in services.items()]
    state_file.write_text(json.dumps(state))
    pids = {s["pid"] for s in services.values()}
    assert pids <= set(find_marked(marker("lab"))) and len(pids) == 4  # orchestrator, 2 workers, controller
    shown = json.loads(cli("status", "--name", "lab", "--json").stdout)
    assert {c["id"]: c["pid"] for c in shown["containers"]} == {
        sid: str(s["pid"]) for sid, s in services.items() if s["kind"] == "worker"}
    result = cli("down", "--name", "lab", "--yes")
    assert "nothing of it is left" in result.stderr
    assert not pids & set(find_marked(marker("lab"))) and find_marked(marker("lab")) == []
    assert not (home / "lab").exists()


def test_down_of_an_unknown_name_is_an_error(home):
    result = cli("down", "--name", "nosuch", "--yes", check=False)
    assert_clean_error(result, "no cluster named 'nosuch'", "mlcluster list", "--provider")
    assert "nothing of it is left" not in result.stderr


def test_a_smaller_up_stops_the_rest_and_down_says_what_it_removes_and_keeps_the_logs(home, tiny_model):
    cli(*up_args(tiny_model, workers=2, per=1))
    state = json.loads((home / "lab" / "state.json").read_text())
    gone = state["resources"]["services"]["worker2-1"]["pid"]
    shown = json.loads(cli(*up_args(tiny_model, workers=1, per=1), "--json").stdout)
    assert [c["id"] for c in shown["containers"]] == ["worker1-1"] and shown["orchestrator_url"].startswith("http")
    assert gone not in find_marked(marker("lab"))
    listed = json.loads(cli("list", "--json").stdout)
    assert listed == [{"name": "lab", "provider": "local", "containers": 1,
                       "orchestrator_url": shown["orchestrator_url"]}]
    status = json.loads(cli("status", "--name", "lab", "--json").stdout)
    assert [c["id"] for c in status["containers"]] == ["worker1-1"]

    # The orchestrator, the worker and the controller (mlcluster/elastic); no terminal: the question is shown,
    # nothing is done
    asked = cli("down", "--name", "lab", check=False)
    said = " ".join(asked.stderr.split())
    assert asked.returncode == 1 and "local; 1 container(s); 3 process(es) on this machine" in said, said
    assert "pass --yes" in said
    result = json.loads(cli("down", "--name", "lab", "--yes", "--json").stdout)
    assert result["left"] == [] and result["forgotten"]
    archive = Path(result["archive"])
    assert archive.parent == home / "archive" and archive.name.startswith("lab-")
    assert "registered" in (archive / "orchestrator.log").read_text()
    assert "ready" in (archive / "worker1-1.log").read_text()
    assert json.loads((archive / "state.json").read_text())["token"] == ""
    assert oct(archive.stat().st_mode & 0o777) == "0o700"
    assert "lab" not in cli("list").stdout and find_marked(marker("lab")) == []


def test_logs_show_the_orchestrator_and_a_container(home, tiny_model):
    cli(*up_args(tiny_model, workers=1, per=1))
    assert "registered" in cli("logs", "--name", "lab").stdout
    assert "ready" in cli("logs", "worker1-1", "--name", "lab", "--tail", "0").stdout
    missing = cli("logs", "worker9-9", "--name", "lab", check=False)
    assert missing.returncode == 1 and "no container 'worker9-9'" in missing.stderr
    cli("down", "--name", "lab", "--yes")


def assert_clean_error(result: subprocess.CompletedProcess, *phrases: str, code: int = 1) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def test_person_made_errors_get_one_sentence(home, tiny_model, tmp_path):
    assert_clean_error(cli("status", "--name", "nosuch", check=False), "no cluster named 'nosuch'")
    assert_clean_error(cli("logs", "--name", "nosuch", check=False), "no cluster named 'nosuch'")
    assert_clean_error(cli("bench", "--name", "nosuch", "--requests", "5", check=False), "nosuch")
    assert_clean_error(cli("up", "--model", str(tmp_path / "no-such-model"), check=False), "does not exist")
    # Usage errors, bad values included, exit 2
    assert_clean_error(cli("up", "--name", "Bad Name!", check=False), "not allowed", code=2)
    assert_clean_error(cli("up", "--workers", "0", check=False), "--workers", code=2)
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("wrkers = 3\n")
    assert_clean_error(cli("up", "--config", str(bad_config), check=False), "unknown setting 'wrkers'",
                       "did you mean 'workers'", code=2)
    assert_clean_error(cli("down", "--name", "lab", check=False), "no cluster named 'lab'")
    assert find_marked(marker("default")) == [] and not (home / "default").exists()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_clean_error(cli(*up_args(tiny_model, workers=1, per=1), "--port", str(port), check=False),
                           f"port {port}", "already in use")
    assert not (home / "lab").exists()  # the failed first `up` left no trace, so `down` would find no cluster
    assert find_marked(marker("lab")) == []


def refused(url: str) -> bool:
    """Nothing listens at `url` any more."""
    try:
        requests.get(url + "/health_check", timeout=2)
    except requests.ConnectionError:
        return True
    return False


def test_bench_without_a_running_cluster(home, tiny_model):
    cli(*up_args(tiny_model, workers=1, per=1))
    state = json.loads((home / "lab" / "state.json").read_text())
    orchestrator = state["resources"]["services"]["orchestrator"]
    os.killpg(orchestrator["pid"], signal.SIGKILL)
    wait_for(lambda: refused(state["orchestrator_url"]), "the killed orchestrator's port to refuse")
    assert_clean_error(cli("bench", "--name", "lab", "--requests", "5", check=False), "not answering")
    assert_clean_error(cli("status", "--name", "lab", check=False), "not answering")
    cli("down", "--name", "lab", "--yes")


def test_ctrl_c_during_up_is_recorded_and_down_cleans_it(home, tiny_model):
    proc = subprocess.Popen([MLCLUSTER, *up_args(tiny_model, name="ctrlc", workers=2, per=2)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    state_file = home / "ctrlc" / "state.json"
    wait_for(lambda: state_file.exists() and json.loads(state_file.read_text())["resources"].get("services"),
             "up to record its first services", timeout=60, interval=0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "mlcluster down --name ctrlc" in stderr
    assert "Traceback" not in stderr
    recorded = {p["pid"] for p in json.loads(state_file.read_text())["resources"]["services"].values()}
    assert recorded and set(find_marked(marker("ctrlc"))) >= recorded
    cli("down", "--name", "ctrlc", "--yes")
    assert find_marked(marker("ctrlc")) == []
