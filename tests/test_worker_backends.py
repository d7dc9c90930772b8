"""The worker's backends (torch, onnx, onnx-int8) on the tiny model, as real
gunicorn processes with real ONNX Runtime sessions: the export is made once and
reused, the ONNX path never imports torch, answers are the model's and name
their backend and batch, batches really form under concurrency, bad input is
a 4xx on every backend, and the worker token guards /run_model."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from mlcluster import services
from mlcluster_contract import BACKENDS
from support.services import Service, free_port
from support.serving import Cluster, stop_service
from support.signing import sign

# int8 weights move probabilities a little; fp32 ONNX matches torch closely.
TOLERANCE = {"torch": 1e-4, "onnx": 1e-4, "onnx-int8": 0.05}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("export-cache")


@pytest.fixture(scope="module")
def prepared(tiny_model, cache_dir) -> dict[str, str]:
    from mlcluster_worker.export import prepare_model
    return {b: str(prepare_model(tiny_model, b, cache_dir)) for b in BACKENDS}


@pytest.fixture(scope="module")
def reference(tiny_model):
    from mlcluster_worker.model import Classifier
    return Classifier(tiny_model, torch_threads=1)


def start(tmp_path, model: str, backend: str, worker_id: str = "w", **extra: str) -> Service:
    """A worker process with the backend's settings added to the usual environment."""
    port = free_port()
    env = services.worker_env(model=model, port=port, token="", torch_threads=1, worker_id=worker_id)
    env.update(BACKEND=backend, **extra)
    return Service(services.worker_command(), env, f"http://127.0.0.1:{port}",
                   tmp_path / f"worker-{backend}-{port}.log").wait("/ready", timeout=120)


@pytest.fixture(scope="module", params=BACKENDS)
def worker(request, tmp_path_factory, prepared):
    w = start(tmp_path_factory.mktemp("w"), prepared[request.param], request.param, MAX_TEXT_CHARS="200000")
    w.backend = request.param
    yield w
    stop_service(w)


def run(worker, **kw) -> requests.Response:
    return requests.post(worker.url + "/run_model", timeout=30, **kw)


def assert_close(got: dict, expected: dict, tolerance: float) -> None:
    assert got["probabilities"].keys() == expected["probabilities"].keys()
    for label, p in expected["probabilities"].items():
        assert got["probabilities"][label] == pytest.approx(p, abs=tolerance)
    if max(expected["probabilities"].values()) - min(expected["probabilities"].values()) > 2 * tolerance:
        assert got["label"] == expected["label"]


# -- the export ------------------------------------------------------------------
def test_prepare_reuses_the_export_and_a_changed_model_gets_a_new_one(tiny_model, cache_dir, prepared, tmp_path):
    onnx_file = os.path.join(prepared["onnx-int8"], "model.onnx")
    before = os.stat(onnx_file)
    # A second prepare, in a fresh process: same directory, same file, and torch never imported.
    code = ("import sys; from mlcluster_worker.export import prepare_model; "
            f"print(prepare_model({tiny_model!r}, 'onnx-int8', {str(cache_dir)!r})); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [prepared["onnx-int8"], "False"]
    after = os.stat(onnx_file)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    manifest = json.loads(open(os.path.join(prepared["onnx-int8"], "mlcluster_export.json")).read())
    assert manifest["backend"] == "onnx-int8"
    assert prepared["torch"] == str(os.path.realpath(tiny_model))

    from mlcluster_worker.export import prepare_model
    changed = tmp_path / "changed"
    shutil.copytree(tiny_model, changed)
    config = json.loads((changed / "config.json").read_text())
    config["id2label"] = {"0": "NEGATIVE", "1": "POSITIVE"}
    config["label2id"] = {"NEGATIVE": 0, "POSITIVE": 1}
    (changed / "config.json").write_text(json.dumps(config))
    other = prepare_model(changed, "onnx", cache_dir)
    assert str(other) != prepared["onnx"] and (other / "model.onnx").is_file()
    with pytest.raises(ValueError, match="backend must be one of"):
        prepare_model(tiny_model, "tensorrt", cache_dir)


def test_the_onnx_worker_never_imports_torch(prepared):
    code = f"""
import sys, time
from mlcluster_worker.app import create_app
app = create_app({{"MODEL": {prepared['onnx-int8']!r}, "BACKEND": "onnx-int8"}})
client = app.test_client()
deadline = time.monotonic() + 60
while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
    time.sleep(0.05)
answer = client.post("/run_model", json={{"text": "no torch here"}}).get_json()
assert answer["backend"] == "onnx-int8", answer
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print("loaded:", loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stderr
    assert "loaded: []" in out.stdout, out.stdout


# -- answers -----------------------------------------------------------------------
def test_each_backend_gives_the_models_answers(worker, reference):
    texts = ["the service works", "a second and rather longer text than the first one", "three"]
    answer = run(worker, json={"texts": texts}).json()
    assert answer["backend"] == worker.backend and answer["batch_size"] == 3 and answer["batch_requests"] == 1
    assert answer["texts"] == texts and answer["text_chars"] == [len(t) for t in texts]
    for got, expected in zip(answer["results"], reference.classify(texts), strict=True):
        assert_close(got, expected, TOLERANCE[worker.backend])
    ready = requests.get(worker.url + "/ready", timeout=10).json()
    assert ready["backend"] == worker.backend and ready["capacity"] >= 1 and ready["threads"] == 1


def test_the_labs_payload_classifies_a_random_text(worker, reference):
    answer = run(worker, json={"payload": "dummy payload"}).json()
    assert len(answer["text"]) == 50 and answer["text"].isalpha()
    assert_close(answer, reference.classify([answer["text"]])[0], TOLERANCE[worker.backend])
    assert run(worker, json={"payload": "x", "extra": 1}).status_code == 400
    assert run(worker, json={"payload": "x", "text": "y"}).status_code == 400


# -- bad and large input -------------------------------------------------------------
@pytest.mark.parametrize("body, status", [
    (b'{"text": "\\ud800 poison"}', 400),
    (b'{"texts": ["fine", "\\udfff"]}', 400),
    (b'{"text": "ok", "temperature": 1}', 400),
    (json.dumps({"text": "a" * 300_000}).encode(), 413),
], ids=["lone surrogate", "surrogate in a batch", "unknown field", "over MAX_TEXT_CHARS"])
def test_bad_input_is_the_callers_error_on_every_backend(worker, body, status):
    r = run(worker, data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"] and len(r.content) < 1000
    assert run(worker, json={"text": "still serving"}).status_code == 200


def test_a_long_text_is_cut_and_never_echoed_whole(worker, reference):
    text = " ".join(f"word{i}" for i in range(15_000))  # ~140,000 characters, far past 512 tokens
    began = time.monotonic()
    r = run(worker, json={"text": text})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["text"] == text[:200] and answer["text_chars"] == len(text) and len(r.content) < 2000
    assert_close(answer, reference.classify([text])[0], TOLERANCE[worker.backend])
    assert time.monotonic() - began < 10  # generous: only a runaway tokenizer (seconds per MB) fails this


# -- batching -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_requests_share_a_forward_pass_and_a_lone_one_waits_at_most_w(tmp_path, prepared, reference,
                                                                                  backend):
    wait_ms = 400
    w = start(tmp_path, prepared[backend], backend, BATCH_MAX="4", BATCH_WAIT_MS=str(wait_ms))
    try:
        assert requests.get(w.url + "/ready", timeout=10).json()["capacity"] == 4
        texts = ["short", "a somewhat longer text to pad the others to", "middle length text", "x y z"]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda t: run(w, json={"text": t}).json(), texts))
        assert [a["batch_requests"] for a in answers] == [4] * 4, answers
        assert [a["batch_size"] for a in answers] == [4] * 4
        for text, answer in zip(texts, answers):  # padding to the batch's longest changes no answer
            assert answer["text"] == text
            assert_close(answer, reference.classify([text])[0], TOLERANCE[backend])

        began = time.monotonic()
        lone = run(w, json={"text": "all alone"}).json()
        elapsed = time.monotonic() - began
        assert lone["batch_requests"] == 1 and lone["batch_size"] == 1
        assert elapsed < wait_ms / 1000 + 1.5, f"a lone request took {elapsed:.2f} s with W = {wait_ms} ms"
        stats = requests.get(w.url + "/stats", timeout=10).json()
        assert stats["max_in_flight"] == 4 and stats["in_flight"] == 0
    finally:
        stop_service(w)


# -- the worker token -------------------------------------------------------------------
def test_the_worker_token_guards_run_model_only(tmp_path, prepared):
    token = "s3cret-worker-token"
    w = start(tmp_path, prepared["onnx-int8"], "onnx-int8", WORKER_TOKEN=token)
    try:
        body = json.dumps({"text": "hello"}).encode()
        for headers in ({}, {"Authorization": f"Bearer {token}"}, sign("wrong", body),
                        {"X-Mlcluster-Signature": token}):
            r = run(w, data=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"]
            assert r.headers["WWW-Authenticate"] == "Mlcluster-Signature"
        assert run(w, data=body, headers=sign(token, body)).status_code == 200
        assert requests.get(w.url + "/ready", timeout=10).status_code == 200
        assert requests.get(w.url + "/health_check", timeout=10).status_code == 200
        assert token not in w.log()
    finally:
        stop_service(w)


# -- through the orchestrator ---------------------------------------------------------------
def test_each_backend_serves_through_the_orchestrator(tmp_path, prepared, reference):
    cluster = Cluster(tmp_path)
    try:
        for backend in BACKENDS:
            w = start(tmp_path, prepared[backend], backend, worker_id=backend)
            cluster.services.append(w)
            cluster.workers[backend] = w
        cluster.start_orchestrator()
        cluster.register()
        seen = {}
        texts = [f"request number {i} through the orchestrator" for i in range(30)]
        with ThreadPoolExecutor(3) as pool:  # three at once: every container of capacity 1 gets work
            responses = list(pool.map(lambda t: cluster.new_request({"text": t}), texts))
        for text, r in zip(texts, responses):
            assert r.status_code == 200, r.text
            result = r.json()["result"]
            assert result["worker"] == result["backend"] == r.json()["container"]["id"]
            assert_close(result, reference.classify([text])[0], TOLERANCE[result["backend"]])
            seen[result["backend"]] = seen.get(result["backend"], 0) + 1
        poison = cluster.new_request(data=b'{"text": "\\ud800 poison"}', headers={"Content-Type": "application/json"})
        assert 400 <= poison.status_code < 500, poison.text
        assert set(seen) == set(BACKENDS), seen
    finally:
        cluster.stop()
