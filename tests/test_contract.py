"""The contract between the CLI and the images (mlcluster_contract): what the
CLI writes is what each service reads, both sides hold the same objects, and
every way the services reach a machine carries the contract with them."""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import pytest

import mlcluster_contract as contract
from mlcluster import images, services
from mlcluster.state import BACKENDS, ClusterSpec


def test_both_sides_hold_the_same_definitions():
    import mlcluster_orchestrator.settings as orchestrator
    import mlcluster_worker.config as worker
    import mlcluster_worker.export as export

    assert BACKENDS is contract.BACKENDS and export.BACKENDS is contract.BACKENDS
    assert worker.BACKENDS is contract.BACKENDS and worker.BATCH_DEFAULTS is contract.BATCH_DEFAULTS
    assert orchestrator.DEFAULTS is contract.ORCHESTRATOR_DEFAULTS
    assert ClusterSpec().model == contract.DEFAULT_MODEL == worker.settings_from_env({})["MODEL"]


def test_the_worker_reads_what_the_cli_writes():
    from mlcluster_worker.config import resolve_batching, settings_from_env

    env = services.process_env(services.worker_env(model="/models/m", port=5123, token="t0k", torch_threads=3,
                                                   worker_id="w7", backend="onnx", batch_max=4, batch_wait_ms=2.5),
                               "worker", caller={})
    settings = settings_from_env(env)
    assert (settings["MODEL"], settings["BACKEND"], settings["WORKER_TOKEN"], settings["WORKER_ID"]) == \
        ("/models/m", "onnx", "t0k", "w7")
    assert (settings["THREADS"], settings["TORCH_THREADS"]) == (3, 3)
    assert resolve_batching(settings, "onnx") == contract.Batching(4, 2.5)
    assert env[contract.BIND] == "127.0.0.1:5123"
    # Unset batching leaves the backend's default, from the same table the CLI sizes containers by.
    defaults = settings_from_env(services.worker_env(model="m", port=1, token="t", backend="onnx-int8"))
    assert resolve_batching(defaults, "onnx-int8") == contract.BATCH_DEFAULTS["onnx-int8"]


def test_the_orchestrator_reads_what_the_cli_writes():
    from mlcluster_orchestrator.settings import settings_from_env

    env = services.orchestrator_env(port=8123, token="adm", queue_limit=7, queue_timeout_s=1.5,
                                    status_file="/tmp/r.json", health_interval_s=0.25, worker_token="wt",
                                    admin_bind="127.0.0.1:8124")
    settings = settings_from_env(env)
    assert {k: settings[k] for k in ("ORCH_TOKEN", "ORCH_WORKER_TOKEN", "ORCH_QUEUE_LIMIT", "ORCH_QUEUE_TIMEOUT_S",
                                     "ORCH_STATUS_FILE", "ORCH_HEALTH_INTERVAL_S", "ORCH_ADMIN_BIND")} == {
        "ORCH_TOKEN": "adm", "ORCH_WORKER_TOKEN": "wt", "ORCH_QUEUE_LIMIT": 7, "ORCH_QUEUE_TIMEOUT_S": 1.5,
        "ORCH_STATUS_FILE": "/tmp/r.json", "ORCH_HEALTH_INTERVAL_S": 0.25, "ORCH_ADMIN_BIND": "127.0.0.1:8124"}
    assert env[contract.BIND] == "127.0.0.1:8123"


def test_a_variable_no_service_reads_is_refused():
    with pytest.raises(ValueError, match="ORCH_QUEUE_LIMT"):
        contract.env_vars(contract.ORCHESTRATOR_DEFAULTS, ORCH_QUEUE_LIMT=5)
    assert contract.env_vars(contract.WORKER_DEFAULTS, MODEL="m", THREADS=2) == {"MODEL": "m", "THREADS": "2"}


def test_a_bad_value_is_one_sentence():
    with pytest.raises(RuntimeError, match=r"^ORCH_QUEUE_LIMIT='many' is not a valid int$"):
        contract.settings_from_env(contract.ORCHESTRATOR_DEFAULTS, {"ORCH_QUEUE_LIMIT": "many"})


@pytest.mark.parametrize("kind, package, module", [
    ("worker", "mlcluster_worker", "mlcluster_worker.config"),
    ("worker-onnx", "mlcluster_worker", "mlcluster_worker.config"),
    ("orchestrator", "mlcluster_orchestrator", "mlcluster_orchestrator.settings"),
])
def test_every_build_context_carries_the_contract(tmp_path, kind, package, module):
    """The Dockerfiles copy the service's package and mlcluster_contract to /app:
    in the prepared context both stand side by side, and the service's settings
    import from there alone (no site-packages: -S)."""
    context = images.prepare_context(kind, tmp_path / "ctx")
    assert (context / "mlcluster_contract" / "__init__.py").is_file() and (context / package).is_dir()
    code = f"import {module}, mlcluster_contract; print(mlcluster_contract.__file__)"
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(context)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(context / "mlcluster_contract" / "__init__.py")
    dockerfile = (context / "Dockerfile").read_text()
    assert f"cp -a /ctx/{package} /extras/app/" in dockerfile
    assert "cp -a /ctx/mlcluster_contract /extras/app/" in dockerfile


def test_the_source_the_ssh_runtime_uploads_carries_the_contract():
    from mlcluster.deploy.process import source_tarball

    data, _ = source_tarball()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = set(tar.getnames())
    assert "src/contract/mlcluster_contract/__init__.py" in names and "src/pyproject.toml" in names
