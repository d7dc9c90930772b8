"""The batcher's policy on its own (real threads, a recording classifier): how
batches form, how results are split back, and that a failure reaches everyone."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from mlcluster_worker.batching import Batcher


class Recorder:
    """Classifies text t as {"label": t.upper()}; remembers each forward pass."""

    def __init__(self, fail: bool = False, gate: threading.Event | None = None):
        self.calls: list[list[str]] = []
        self.fail, self.gate = fail, gate

    def __call__(self, texts: list[str]) -> list[dict]:
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append(list(texts))
        if self.fail:
            raise RuntimeError("forward pass failed")
        return [{"label": t.upper()} for t in texts]


def test_capacity_one_runs_each_request_alone_in_the_callers_thread():
    rec = Recorder()
    batcher = Batcher(rec, 1, 5.0)  # the wait is irrelevant at capacity 1
    done = batcher.run(["a", "b"])
    assert done.results == [{"label": "A"}, {"label": "B"}] and (done.batch_texts, done.batch_requests) == (2, 1)
    assert rec.calls == [["a", "b"]]


def test_a_full_batch_runs_at_once_and_results_go_back_to_their_requests():
    rec = Recorder()
    batcher = Batcher(rec, 3, 30.0)  # a 30 s window: only a full batch can explain a quick answer
    requests = [["a"], ["b", "c"], ["d"]]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(batcher.run, requests))
    assert len(rec.calls) == 1 and sorted(rec.calls[0]) == ["a", "b", "c", "d"]
    for texts, answer in zip(requests, answers):
        assert answer.results == [{"label": t.upper()} for t in texts]
        assert (answer.batch_texts, answer.batch_requests) == (4, 3)
    batcher.close()


def test_requests_beyond_capacity_wait_for_the_next_batch():
    gate = threading.Event()
    rec = Recorder(gate=gate)
    batcher = Batcher(rec, 2, 0.05)
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(batcher.run, [str(i)]) for i in range(5)]
        gate.set()
        answers = [f.result(timeout=10) for f in futures]
    assert all(len(call) <= 2 for call in rec.calls) and sum(map(len, rec.calls)) == 5
    assert sorted(a.results[0]["label"] for a in answers) == ["0", "1", "2", "3", "4"]
    batcher.close()


def test_a_failed_forward_pass_reaches_every_request_of_the_batch():
    batcher = Batcher(Recorder(fail=True), 2, 30.0)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(batcher.run, ["x"]), pool.submit(batcher.run, ["y"])]
        for f in futures:
            with pytest.raises(RuntimeError, match="forward pass failed"):
                f.result(timeout=10)
    batcher.close()


@pytest.mark.parametrize("args", [(0, 1.0), (2, -1.0)])
def test_bad_settings_are_refused(args):
    with pytest.raises(ValueError):
        Batcher(Recorder(), *args)
