"""The worker as a real gunicorn process serving the tiny DistilBERT: its
answers are the model's, bad input gets a 4xx, and it says when it is ready."""
from __future__ import annotations

import json
import string
import subprocess
import sys

import pytest
import requests

from support.serving import Cluster, error_of
from support.waiting import wait_for

MAX_BATCH = 64  # the worker's default


@pytest.fixture(scope="module")
def worker(tmp_path_factory, tiny_model):
    cluster = Cluster(tmp_path_factory.mktemp("worker"))
    try:
        (w,) = cluster.start_workers(["tiny"], model=tiny_model, torch_threads=2)
        yield w
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def reference(tiny_model):
    """The same model run in this process, to compare the worker's answers with."""
    from mlcluster_worker.model import Classifier
    return Classifier(tiny_model, torch_threads=1)


def run(worker, **kw) -> requests.Response:
    return requests.post(worker.url + "/run_model", timeout=30, **kw)


def assert_same(answer: dict, expected: dict) -> None:
    assert answer["label"] == expected["label"]
    assert answer["probabilities"].keys() == expected["probabilities"].keys()
    for label, p in expected["probabilities"].items():
        assert answer["probabilities"][label] == pytest.approx(p, abs=1e-4)


# -- answers ---------------------------------------------------------------------
def test_a_text_gets_the_models_answer(worker, reference):
    answer = run(worker, json={"text": "the service works"}).json()
    assert answer["text"] == "the service works"
    assert "random weights" in answer["model"] and answer["worker"] == "tiny"
    assert answer["inference_ms"] > 0
    assert sum(answer["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert_same(answer, reference.classify(["the service works"])[0])


def test_a_batch_is_answered_in_order(worker, reference):
    texts = ["first text", "a second, longer text than the first", "third"]
    answer = run(worker, json={"texts": texts}).json()
    assert answer["texts"] == texts and len(answer["results"]) == 3
    for got, expected in zip(answer["results"], reference.classify(texts)):
        assert_same(got, expected)


@pytest.mark.parametrize("kw", [{}, {"json": {}}], ids=["no body", "empty object"])
def test_no_text_classifies_a_random_lab_text(worker, reference, kw):
    answer = run(worker, **kw).json()
    text = answer["text"]
    assert len(text) == 50 and set(text) <= set(string.ascii_lowercase)
    assert_same(answer, reference.classify([text])[0])


def test_an_over_long_text_is_truncated_not_refused(worker, reference):
    text = " ".join(f"word{i}" for i in range(5000))  # far past the 512-token limit
    r = run(worker, json={"text": text})
    assert r.status_code == 200, r.text
    assert_same(r.json(), reference.classify([text])[0])


# -- bad input -------------------------------------------------------------------
BAD_BODIES = {
    "not json": b"this is not json",
    "a json list": b'["text"]',
    "a json number": b"42",
    "text not a string": b'{"text": 5}',
    "empty text": b'{"text": ""}',
    "texts not a list": b'{"texts": "abc"}',
    "texts of numbers": b'{"texts": [1, 2]}',
    "texts with an empty one": b'{"texts": ["a", " "]}',
    "empty texts": b'{"texts": []}',
    "too many texts": json.dumps({"texts": ["t"] * (MAX_BATCH + 1)}).encode(),
    "unknown field": b'{"text": "a", "temperature": 1}',
    "text and texts": b'{"text": "a", "texts": ["b"]}',
    "invalid utf-8": b'{"text": "\xff\xfe"}',
    "deeply nested": b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_input_gets_400_and_a_sentence(worker, body):
    served = requests.get(worker.url + "/stats", timeout=10).json()["served"]
    error_of(run(worker, data=body, headers={"Content-Type": "application/json"}), 400)
    assert requests.get(worker.url + "/stats", timeout=10).json()["served"] == served


def test_a_body_over_the_limit_is_413_also_when_chunked(worker):
    big = json.dumps({"text": "a" * (1 << 20)}).encode()
    assert "limit" in error_of(run(worker, data=big), 413)
    assert "limit" in error_of(run(worker, data=(big[i:i + 65536] for i in range(0, len(big), 65536))), 413)
    assert run(worker, json={"text": "still serving"}).status_code == 200


# -- readiness, health, statistics, metrics ---------------------------------------
def test_ready_health_stats_and_metrics(worker):
    assert requests.get(worker.url + "/ready", timeout=10).json() == {
        "ready": True, "model": "tiny-distilbert (random weights, outputs meaningless)", "torch_threads": 2,
        "threads": 2, "backend": "torch", "capacity": 8, "batch_wait_ms": 10.0}
    assert requests.get(worker.url + "/health_check", timeout=10).json() == {"status": "alive"}
    run(worker, json={"text": "count me"})
    stats = requests.get(worker.url + "/stats", timeout=10).json()
    assert stats["served"] >= 1 and stats["in_flight"] == 0 and stats["max_in_flight"] == 1
    metrics = requests.get(worker.url + "/metrics", timeout=10).text
    for series in ['worker_requests_total{outcome="ok"}', "worker_errors_total", "worker_inference_seconds_bucket",
                   "worker_in_flight 0.0", "worker_ready 1.0"]:
        assert series in metrics, series


def test_a_model_that_cannot_load_is_alive_but_never_ready(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        (w,) = cluster.start_workers(["broken"], model=str(tmp_path / "no-such-model"), wait_path="/health_check")

        def failed() -> str | None:
            r = requests.get(w.url + "/ready", timeout=10)
            assert r.status_code == 503 and r.json()["ready"] is False
            return r.json()["reason"] if "could not be loaded" in r.json()["reason"] else None

        assert "no-such-model" in wait_for(failed, "the model load to fail")
        r = run(w, json={"text": "x"})
        assert "no-such-model" in error_of(r, 503) and r.headers["Retry-After"] == "1"
        assert requests.get(w.url + "/health_check", timeout=10).status_code == 200
    finally:
        cluster.stop()


def test_the_overhead_test_mode_says_it_has_no_model(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        (w,) = cluster.start_workers(["o"], service_ms=5)
        ready = requests.get(w.url + "/ready", timeout=10).json()
        assert ready["model"] == "overhead-test (no model, fixed 5 ms)" and ready["torch_threads"] is None
        answer = run(w, json={"texts": ["a", "b"]}).json()
        assert answer["texts"] == ["a", "b"] and answer["inference_ms"] >= 5
    finally:
        cluster.stop()


# -- the random-weight stand-in ----------------------------------------------------
def test_make_model_writes_a_loud_stand_in_with_the_real_tokenizer(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    from mlcluster_worker.make_model import SIZES

    assert SIZES["base"] == {"dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072}  # distilbert-base
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert tokenizer("hello world")["input_ids"] == [101, 7592, 2088, 102]
    assert tokenizer.model_max_length == 512 and tokenizer.vocab_size == 30522
    out = subprocess.run([sys.executable, "-m", "mlcluster_worker.make_model", str(tmp_path / "m"), "--size", "tiny"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "RANDOM WEIGHTS" in out.stderr and "meaningless" in out.stderr
    assert (tmp_path / "m" / "config.json").exists() and (tmp_path / "m" / "MLCLUSTER_RANDOM_WEIGHTS.json").exists()
