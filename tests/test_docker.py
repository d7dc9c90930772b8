"""The images and a local Docker cluster, against a real Docker engine.

Builds both images (from python:3.11-slim when the engine has it, else from
mlcluster-base:bookworm, made by .ci/setup-docker.sh), runs an orchestrator and
two worker containers with the tiny model, and sends real requests through
them. Skipped only where no Docker engine answers.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from mlcluster import images
from mlcluster.deploy.docker import L_CLUSTER, L_PROVIDER
from mlcluster.errors import MlclusterError
from mlcluster.providers.local import LocalProvider
from mlcluster.resources import LOCAL_HOST, DockerSetup, Service
from mlcluster.state import ClusterSpec, ClusterState
from mlcluster.ui import QuietUI
from support.console import cli
from support.localdocker import labelled
from support.waiting import wait_for

pytestmark = pytest.mark.docker
NAME = f"dockertest-{os.getpid()}"  # two runs on one engine must not meet
TOKEN = "docker-test-token"
MLCLUSTER = str(Path(sys.executable).parent / "mlcluster")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("mlcluster-home")
        mp.setenv("MLCLUSTER_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def built(engine, home) -> dict[str, str]:
    """Both images (built once per engine; a later run finds them by their context hash)."""
    tags = {}
    for kind in images.KINDS:
        started = time.monotonic()
        tags[kind] = images.ensure_image(engine, kind, QuietUI())
        size = engine.images.get(tags[kind]).attrs["Size"] / 1e6
        print(f"\n{kind} image {tags[kind]}: {size:.0f} MB, ensured in {time.monotonic() - started:.1f} s")
    return tags


@pytest.fixture(scope="module")
def cluster(engine, built, tiny_model):
    """One orchestrator and two worker containers, registered and ready."""
    runtime = LocalProvider()
    # The runtime gets the model as workers load it: the torch backend serves the model directory itself
    # (the ONNX backends get a directory that cluster.up exports first: see the CLI test below).
    spec = ClusterSpec(name=NAME, runtime="docker", workers=1, containers_per_worker=2, model=tiny_model,
                       backend="torch")
    state = ClusterState(name=NAME, provider="local", token=TOKEN, runtime="docker")
    try:
        deployment = runtime.up(spec, state, QuietUI())
        register(deployment, state)
        yield runtime, spec, state, deployment
    finally:
        left = runtime.down(NAME, None, QuietUI())
        for container in labelled(engine, NAME):  # only if down itself failed
            container.remove(force=True)
        assert not left, left


def register(deployment, state, timeout: float = 120.0) -> None:
    """Through the orchestrator's admin listener (published on 127.0.0.1 only);
    its public port does not serve the admin endpoints."""
    body = {"containers": [{"id": c.id, "host": c.host, "port": c.port} for c in deployment.containers]}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    public = requests.post(f"{deployment.orchestrator_url}/workers", json=body, headers=headers, timeout=10)
    assert public.status_code == 404, public.text
    admin_port = state.resources.services["orchestrator"].admin_port
    assert admin_port and admin_port != state.resources.services["orchestrator"].port
    response = requests.post(f"http://127.0.0.1:{admin_port}/workers", json=body, headers=headers, timeout=10)
    assert response.status_code in (201, 409), response.text
    wait_all_free(deployment.orchestrator_url, len(deployment.containers), timeout)


def wait_all_free(url: str, count: int, timeout: float = 120.0) -> dict:
    def ready() -> dict | None:
        status = requests.get(f"{url}/status", timeout=5).json()
        return status if sum(c["status"] in ("free", "busy") for c in status["containers"]) == count else None
    return wait_for(ready, f"{count} containers serving", timeout=timeout, interval=0.3)


@contextmanager
def logs_shown(container):
    """A failed assertion inside shows the container's logs with it."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{container.logs().decode()}") from None


def classify(url: str, text: str) -> dict:
    response = requests.post(f"{url}/new_request", json={"text": text}, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["result"]["text"] == text
    assert answer["result"]["label"] in answer["result"]["probabilities"]
    return answer


def test_images_are_non_root_small_and_healthchecked(engine, built):
    limits_mb = {"orchestrator": 200, "worker": 1500, "worker-onnx": 500}
    ports = {"orchestrator": "8000/tcp", "worker": "5000/tcp", "worker-onnx": "5000/tcp"}
    for kind, tag in built.items():
        config = engine.images.get(tag).attrs["Config"]
        assert config["User"] == "10001:10001"
        assert config["Healthcheck"]["Test"][0] == "CMD"
        assert list(config["ExposedPorts"]) == [ports[kind]]
        assert engine.images.get(tag).attrs["Size"] / 1e6 < limits_mb[kind]
    # The orchestrator's image holds no ML libraries.
    out = engine.containers.run(built["orchestrator"], ["python", "-c", "import importlib.util as u; "
                                "print([m for m in ('torch', 'transformers') if u.find_spec(m)])"], remove=True)
    assert out.decode().strip() == "[]"
    # Nor does the ONNX worker's: onnxruntime and tokenizers serve without torch.
    out = engine.containers.run(built["worker-onnx"], ["python", "-c", "import importlib.util as u; "
                                "print([m for m in ('torch', 'transformers', 'onnxruntime', 'tokenizers') "
                                "if u.find_spec(m)])"], remove=True)
    assert out.decode().strip() == "['onnxruntime', 'tokenizers']"


def test_requests_are_answered_through_the_orchestrator(cluster):
    runtime, spec, state, deployment = cluster
    assert deployment.orchestrator_url.startswith("http://127.0.0.1:")
    served_by = {classify(deployment.orchestrator_url, f"hello number {i}")["container"]["id"] for i in range(12)}
    assert served_by <= {"worker1-1", "worker1-2"}
    batch = requests.post(f"{deployment.orchestrator_url}/new_request", json={"texts": ["a b", "c d"]}, timeout=30)
    assert batch.status_code == 200 and len(batch.json()["result"]["results"]) == 2


def test_containers_run_as_non_root_hardened_on_loopback(engine, cluster):
    containers = labelled(engine, NAME)
    assert {c.labels["mlcluster.role"] for c in containers} == {"orchestrator", "worker"}
    assert len(containers) == 3
    for container in containers:
        processes = container.top(ps_args="-o pid,uid,cmd")["Processes"]
        assert processes and all(uid != "0" for _, uid, _ in processes), processes
        assert container.exec_run(["id", "-u"]).output.decode().strip() == "10001"
        host_config = container.attrs["HostConfig"]
        assert host_config["ReadonlyRootfs"] and host_config["CapDrop"] == ["ALL"]
        for bindings in container.attrs["NetworkSettings"]["Ports"].values():
            assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings)
        if container.labels["mlcluster.role"] == "orchestrator":  # its admin listener too, on loopback only
            assert set(container.attrs["NetworkSettings"]["Ports"]) == {"8000/tcp", "8001/tcp"}


def test_logs_and_details(cluster):
    runtime, spec, state, deployment = cluster
    orchestrator_log = "".join(runtime.logs(state, None, False, 0))
    assert "registered worker1-1" in orchestrator_log
    worker_log = "".join(runtime.logs(state, "worker1-2", False, 0))
    assert "loaded and warmed up; ready" in worker_log
    with pytest.raises(MlclusterError, match="no container 'worker9-9'"):
        list(runtime.logs(state, "worker9-9", False, 10))
    details = runtime.details(state)
    assert set(details) == {"worker1-1", "worker1-2"}
    assert {facts["worker"] for facts in details.values()} == {"worker1"}
    for facts in details.values():  # each worker also answers directly on its loopback port
        assert requests.get(f"http://{facts['published']}/ready", timeout=5).status_code == 200


def test_killing_a_worker_container_during_a_burst_loses_no_request(engine, cluster):
    runtime, spec, state, deployment = cluster
    victim = engine.containers.get(f"mlcluster-{NAME}-worker1-2")
    texts = [f"burst request {i}" for i in range(60)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(classify, deployment.orchestrator_url, t) for t in texts]
        while sum(f.done() for f in futures) < 10:
            time.sleep(0.01)
        victim.kill()
        answers = [f.result() for f in futures]  # classify() asserts a 200 with the right text
    assert len(answers) == len(texts)
    victim.reload()
    assert victim.status != "running"
    wait_for(lambda: {c["id"]: c["status"] for c in requests.get(f"{deployment.orchestrator_url}/status", timeout=5)
                      .json()["containers"]}["worker1-2"] == "down",
             "worker1-2 seen down (the orchestrator's health checker notices within seconds)", timeout=30,
             interval=0.2)
    classify(deployment.orchestrator_url, "one container still serves")


def test_up_again_keeps_what_runs_and_restarts_what_stopped(engine, cluster):
    runtime, spec, state, deployment = cluster
    before = {c.name: c.id for c in labelled(engine, NAME)}
    again = runtime.up(spec, state, QuietUI())
    assert again.orchestrator_url == deployment.orchestrator_url
    after = labelled(engine, NAME)
    assert {c.name: c.id for c in after} == before  # the same containers, none replaced
    assert all(c.status == "running" for c in after)
    wait_all_free(deployment.orchestrator_url, 2)
    classify(deployment.orchestrator_url, "after the restart")
    saved = json.loads((state.dir / "state.json").read_text())
    # every running container recorded (the one Service record names a container; the ids are checked above)
    assert {s["container"] for s in saved["resources"]["services"].values() if s["runtime"] == "docker"} == set(before)


def test_down_without_state_removes_every_labelled_thing(engine, cluster):
    runtime = cluster[0]
    assert labelled(engine, NAME) and labelled(engine, NAME, "networks") and labelled(engine, NAME, "volumes")
    assert runtime.down(NAME, None, QuietUI()) == []
    assert labelled(engine, NAME) == []
    assert labelled(engine, NAME, "networks") == [] and labelled(engine, NAME, "volumes") == []


def test_worker_without_a_model_is_not_ready_and_does_not_crash_loop(engine, built):
    container = engine.containers.run(built["worker"], detach=True, name=f"mlcluster-{NAME}-nomodel",
                                      labels={L_CLUSTER: NAME, L_PROVIDER: "local"},
                                      ports={"5000/tcp": ("127.0.0.1",)}, restart_policy={"Name": "on-failure"})
    try:
        container.reload()
        port = container.attrs["NetworkSettings"]["Ports"]["5000/tcp"][0]["HostPort"]
        with logs_shown(container):
            wait_for(lambda: (lambda r: r.status_code == 503 and "could not be loaded" in r.json()["reason"])(
                requests.get(f"http://127.0.0.1:{port}/ready", timeout=5)), "the worker not ready, saying why",
                timeout=90, interval=0.3)
        assert "NOT READY: model '/model' could not be loaded" in container.logs().decode()
        container.reload()
        assert container.status == "running" and container.attrs["RestartCount"] == 0
    finally:
        container.remove(force=True)


def test_a_model_baked_into_the_image_serves_without_a_mount(engine, built, tiny_model):
    options = images.BuildOptions.from_env("worker")
    options.model_dir = Path(tiny_model)
    tag = images.ensure_image(engine, "worker", QuietUI(), options)
    container = engine.containers.run(tag, detach=True, name=f"mlcluster-{NAME}-baked", read_only=True,
                                      tmpfs={"/tmp": ""}, labels={L_CLUSTER: NAME, L_PROVIDER: "local"},
                                      ports={"5000/tcp": ("127.0.0.1",)})
    try:
        container.reload()
        url = f"http://127.0.0.1:{container.attrs['NetworkSettings']['Ports']['5000/tcp'][0]['HostPort']}"
        with logs_shown(container):
            wait_for(lambda: requests.get(f"{url}/ready", timeout=5).status_code == 200, "the worker ready",
                     timeout=90, interval=0.3)
        answer = requests.post(f"{url}/run_model", json={"text": "baked in"}, timeout=30).json()
        assert answer["text"] == "baked in" and "random weights" in answer["model"]
    finally:
        container.remove(force=True)
        engine.images.remove(tag)


def remove_labelled(engine, name: str) -> None:
    """Whatever cluster `name` left in Docker: containers, networks, volumes."""
    for container in labelled(engine, name):
        container.remove(force=True)
    for network in labelled(engine, name, "networks"):
        network.remove()
    for volume in labelled(engine, name, "volumes"):
        volume.remove(force=True)


def test_cli_up_logs_down_with_the_docker_runtime(engine, built, tiny_model, tmp_path):
    """Through the command line; a world-readable model is mounted, not copied."""
    model = tmp_path / "readable-model"
    shutil.copytree(tiny_model, model)
    for path in [model, *model.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = {**os.environ, "MLCLUSTER_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    name = f"{NAME}-cli"
    try:
        cli("up", "--name", name, "--runtime", "docker", "--workers", "1", "--containers-per-worker", "1",
            "--model", str(model), "--backend", "torch", env=env, timeout=600)
        url = json.loads(cli("status", "--name", name, "--json", env=env).stdout)["orchestrator_url"]
        assert classify(url, "from the command line")["result"]["backend"] == "torch"
        assert "Listening at" in cli("logs", "--name", name, env=env).stdout
        worker = engine.containers.get(f"mlcluster-{name}-worker1-1")
        mounts = {m["Destination"]: m for m in worker.attrs["Mounts"]}
        assert mounts["/model"]["Type"] == "bind" and mounts["/model"]["RW"] is False
        cli("down", "--name", name, "--yes", env=env)
        assert labelled(engine, name) == [] and labelled(engine, name, "networks") == []
    finally:
        remove_labelled(engine, name)


def test_cli_onnx_int8_serves_from_the_torch_free_image(engine, built, tiny_model, tmp_path):
    """The default backend: the model exported here once, served by the ONNX worker image."""
    env = {**os.environ, "MLCLUSTER_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    name = f"{NAME}-onnx"
    try:
        up = cli("up", "--name", name, "--runtime", "docker", "--workers", "1", "--containers-per-worker", "1",
                 "--model", tiny_model, "--backend", "onnx-int8", env=env, timeout=600)
        assert "onnx-int8 backend" in up.stdout
        url = json.loads(cli("status", "--name", name, "--json", env=env).stdout)["orchestrator_url"]
        assert classify(url, "served without torch")["result"]["backend"] == "onnx-int8"
        worker = engine.containers.get(f"mlcluster-{name}-worker1-1")
        assert worker.image.id == engine.images.get(built["worker-onnx"]).id
        cli("down", "--name", name, "--yes", env=env)
        assert labelled(engine, name) == []
    finally:
        remove_labelled(engine, name)


def test_a_cluster_recorded_before_it_was_deployed_like_the_others_goes_down(engine, built, home):
    """The state a local Docker cluster had before the one deployment layer ran it
    (every service on this machine's one record, no host recorded, a `docker` part)
    still goes down: its containers, network and volumes, and its state."""
    name = f"{NAME}-before"
    labels = {L_CLUSTER: name, L_PROVIDER: "local"}
    network = engine.networks.create(f"mlcluster-{name}", driver="bridge",
                                     labels={**labels, "mlcluster.role": "network"})
    volumes = [f"mlcluster-{name}-state", f"mlcluster-{name}-model-0123abcd"]
    for volume in volumes:
        engine.volumes.create(volume, labels={**labels, "mlcluster.role": volume.split("-")[-2]})
    state = ClusterState(name=name, provider="local", token=TOKEN, runtime="docker",
                         spec=ClusterSpec(name=name, runtime="docker", workers=1, containers_per_worker=2))
    state.resources.docker = DockerSetup(volumes, {"orchestrator": built["orchestrator"]}, network.id)
    try:
        for sid in ("orchestrator", "worker1-1", "worker1-2"):
            kind = "orchestrator" if sid == "orchestrator" else "worker"
            container = engine.containers.run(built[kind], ["python", "-c", "import time; time.sleep(600)"],
                                              detach=True, name=f"mlcluster-{name}-{sid}", network=network.name,
                                              labels={**labels, "mlcluster.role": kind, "mlcluster.id": sid})
            state.resources.services[sid] = Service("docker", LOCAL_HOST, container=container.name, kind=kind,
                                                    worker=sid.rsplit("-", 1)[0] if kind == "worker" else "")
        state.save()
        assert len(labelled(engine, name)) == 3
        saved = json.loads((home / name / "state.json").read_text())["resources"]
        assert {r["host"] for r in saved["services"].values()} == {LOCAL_HOST} and not saved.get("hosts")
        result = json.loads(cli("down", "--name", name, "--yes", "--json", env={**os.environ, "COLUMNS": "200"}).stdout)
        assert result["left"] == [] and result["forgotten"]
        assert labelled(engine, name) == [] and labelled(engine, name, "networks") == []
        assert labelled(engine, name, "volumes") == [] and not (home / name).exists()
    finally:
        remove_labelled(engine, name)
