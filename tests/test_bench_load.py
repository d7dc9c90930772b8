"""`mlcluster bench`'s load generator against a real loopback endpoint
(tests/support/endpoint.py, its own process): the closed loop keeps exactly C
requests in flight, the open loop sends on schedule whatever the answers do,
connections are kept alive, and every failure is recorded, not raised.
Counts come from the server's side. The closed-loop tests run on both
engines: the Python loop and the compiled one (mlcluster/bench/_engine.c)."""
from __future__ import annotations

import json
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

import pytest
import requests

from mlcluster.bench import engine as compiled
from mlcluster.bench.load import LoadStep, Target, start_run
from mlcluster.bench.runner import BenchConfig, run_bench
from mlcluster.bench.stats import Recorder
from mlcluster.bench.wire import now_ns
from mlcluster.errors import MlclusterError
from support.services import Service, free_port
from support.waiting import wait_for

ENDPOINT = Path(__file__).parent / "support" / "endpoint.py"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    port = free_port()
    service = Service([sys.executable, str(ENDPOINT), str(port)], {}, f"http://127.0.0.1:{port}",
                      tmp_path_factory.mktemp("endpoint") / "endpoint.log")
    try:
        yield service.wait("/counts", timeout=30).url
    finally:
        service.stop()


@pytest.fixture(params=["python", "c"])
def engine(request, monkeypatch):
    """The closed loop's engine for this test (MLCLUSTER_BENCH_ENGINE)."""
    if request.param == "c" and not compiled.available():
        pytest.skip("the compiled engine is not built (no C compiler when mlcluster was installed)")
    monkeypatch.setenv(compiled.ENV, request.param)
    return request.param


def counts(url: str) -> dict:
    """The endpoint's counts since the last call (and zero them)."""
    return requests.get(url + "/counts?reset=1", timeout=5).json()


def arrived(url: str) -> int:
    """How many requests reached the endpoint since the counts were last zeroed (zeroing nothing)."""
    return requests.get(url + "/counts", timeout=5).json()["requests"]


def bodies(*texts: str) -> list[bytes]:
    return [json.dumps({"text": t}).encode() for t in texts]


def run(url: str, plan: LoadStep, texts: list[bytes], timeout_s: float = 10.0) -> list:
    """Run `plan` to its end on a fresh target; the records, by index."""
    target, recorder = Target(url, timeout_s=timeout_s), Recorder()
    try:
        load = start_run(target, texts, plan, recorder, now_ns())
        assert load.join(60), "the run did not finish"
        assert load.error is None
        assert load.sent == len(recorder)
    finally:
        target.close()
    return sorted(recorder.records(), key=lambda r: r.index)


def test_closed_loop_keeps_exactly_c_in_flight_on_c_kept_alive_connections(endpoint, engine):
    counts(endpoint)
    records = run(endpoint, LoadStep(concurrency=7, requests=140), bodies("sleep:40"))
    seen = counts(endpoint)
    assert [r.index for r in records] == list(range(140)) and all(r.ok for r in records)
    assert seen["requests"] == 140 and seen["max_in_flight"] == 7
    assert seen["connections"] == 7  # keep-alive: one connection per slot, reused
    # Each slot sends its next request as soon as its last is answered, so
    # halfway through nearly every request the other six are in flight too.
    assert seen["midway"].get("7", 0) >= 0.8 * 140, seen["midway"]
    assert all(r.scheduled_s == r.sent_s for r in records)  # closed loop: due when sent


def test_records_carry_the_answer_fields(endpoint, engine):
    records = run(endpoint, LoadStep(concurrency=2, requests=10), bodies("fine"))
    record = records[0]
    assert (record.status, record.error, record.container, record.queue_ms, record.server_ms,
            record.inference_ms, record.attempts) == (200, "", "c0", 0.5, 2.0, 1.0, 1)
    assert record.scheduled_s <= record.sent_s < record.done_s


def test_open_loop_sends_at_the_offered_rate_whatever_the_answers_take(endpoint):
    counts(endpoint)
    # 100 req/s for 2 s with answers taking 300 ms: about 30 are in flight at
    # once; a closed loop would never pass its slot count.
    records = run(endpoint, LoadStep(concurrency=200, rate=100.0, duration_s=2.0), bodies("sleep:300"))
    seen = counts(endpoint)
    assert len(records) == 200 and all(r.ok for r in records)
    assert seen["requests"] == 200
    assert [r.scheduled_s - records[0].scheduled_s for r in records] == pytest.approx(
        [i / 100.0 for i in range(200)], abs=1e-6)
    assert seen["max_in_flight"] >= 20
    assert seen["connections"] >= 20


def test_open_loop_never_exceeds_its_concurrency_and_counts_the_wait(endpoint):
    counts(endpoint)
    records = run(endpoint, LoadStep(concurrency=3, rate=100.0, requests=30), bodies("sleep:100"))
    seen = counts(endpoint)
    assert seen["max_in_flight"] == 3 and seen["requests"] == 30
    late = [r for r in records if r.sent_s - r.scheduled_s > 0.05]
    assert late, "requests beyond the concurrency should wait in the client"
    assert all(r.latency_ms >= (r.done_s - r.sent_s) * 1000 for r in records)


def test_poisson_arrivals_follow_the_rate_on_average(endpoint):
    records = run(endpoint, LoadStep(concurrency=50, rate=200.0, arrivals="poisson", requests=300, seed=3),
                  bodies("fine"))
    gaps = [b.scheduled_s - a.scheduled_s for a, b in zip(records, records[1:])]
    assert statistics.mean(gaps) == pytest.approx(1 / 200.0, rel=0.2)
    assert statistics.pstdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.3)  # exponential: sd = mean


def test_errors_timeouts_and_resets_are_recorded_not_raised(endpoint, engine):
    texts = bodies("fine", "reset", "hang", "status:503", "garbage", "close", "status:400")
    records = run(endpoint, LoadStep(concurrency=7, requests=7), texts, timeout_s=1.0)
    kinds = {r.index: (r.status, r.error) for r in records}
    assert kinds == {0: (200, ""), 1: (None, "connection"), 2: (None, "timeout"), 3: (503, "http_503"),
                     4: (200, "bad_answer"), 5: (200, ""), 6: (400, "http_400")}
    hung = records[2]
    assert 1.0 <= hung.done_s - hung.sent_s < 3.0


def test_a_slot_goes_on_after_its_connection_failed(endpoint, engine):
    counts(endpoint)
    records = run(endpoint, LoadStep(concurrency=2, requests=40), bodies("reset", "fine", "close", "fine"))
    assert [r.error for r in records] == ["connection", "", "", ""] * 10
    assert counts(endpoint)["requests"] == 40


def test_nothing_listening_is_a_connection_error_per_request(engine):
    with socket.socket() as s:  # a port that refuses
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        records = run(url, LoadStep(concurrency=3, requests=12), bodies("fine"))
    assert [r.error for r in records] == ["connection"] * 12


def test_stop_sends_nothing_new_and_waits_for_what_is_in_flight(endpoint, engine):
    target, recorder = Target(endpoint), Recorder()
    try:
        counts(endpoint)
        load = start_run(target, bodies("sleep:200"), LoadStep(concurrency=5, duration_s=60), recorder, now_ns())
        wait_for(lambda: arrived(endpoint) >= 5, "the first 5 requests in flight", timeout=10, interval=0.01)
        load.stop()
        assert load.join(5)
        assert len(recorder) == load.sent and all(r.ok for r in recorder.records())
        assert 5 <= load.sent <= 30
    finally:
        target.close()


def test_warm_up_and_measurement_share_kept_alive_connections(endpoint, engine):
    counts(endpoint)
    target = Target(endpoint, pool_size=6)
    try:
        result = run_bench(BenchConfig(concurrency=6, requests=60, warmup=30), target, bodies("sleep:5"))
    finally:
        target.close()
    seen = counts(endpoint)
    assert result.summary.ok == 60 and result.model == "endpoint"
    assert seen["requests"] == 90 and seen["connections"] == 6


def test_answers_in_pieces_in_chunks_large_or_after_an_interim_one_are_read_whole(endpoint, engine):
    records = run(endpoint, LoadStep(concurrency=3, requests=40), bodies("chunked", "split", "interim", "big"))
    assert [(r.status, r.error, r.container) for r in records] == [(200, "", "c0")] * 40


def test_answers_that_cannot_be_read_are_connection_errors_and_the_slot_goes_on(endpoint, engine):
    records = run(endpoint, LoadStep(concurrency=2, requests=12), bodies("nonhttp", "fine", "badchunk"))
    assert [(r.status, r.error) for r in records] == [(None, "connection"), (200, ""), (None, "connection")] * 4


def test_an_answer_ended_by_its_close_is_read_whole_by_the_compiled_engine(endpoint, engine):
    counts(endpoint)
    records = run(endpoint, LoadStep(concurrency=2, requests=20), bodies("eof", "fine"))
    # httptools cannot be told where the stream ended, so the Python loop counts
    # an answer with no length (HTTP/1.0) a connection error; the orchestrator never sends one.
    expected = (200, "", "c0") if engine == "c" else (None, "connection", "")
    assert [(r.status, r.error, r.container) for r in records] == [expected, (200, "", "c0")] * 10
    # Each such answer costs its slot a new connection, but for the last if its slot sends no more.
    assert 2 + 9 <= counts(endpoint)["connections"] <= 2 + 10


def test_closing_the_target_ends_a_run_that_hangs(endpoint, engine):
    target, recorder = Target(endpoint), Recorder()
    counts(endpoint)
    load = start_run(target, bodies("hang"), LoadStep(concurrency=4, duration_s=60), recorder, now_ns())
    wait_for(lambda: arrived(endpoint) >= 4, "4 requests hanging at the endpoint", timeout=10, interval=0.01)
    started = time.monotonic()
    target.close()
    assert load.join(5) and time.monotonic() - started < 3
    if engine == "c":
        assert target.compiled.open == 0 and not target.compiled.running


def test_the_compiled_engine_is_built_where_a_compiler_is():
    if not shutil.which("cc") and not shutil.which("gcc"):
        pytest.skip("no C compiler here: the bench uses its Python loop")
    assert compiled.available(), "pip install should have built mlcluster/bench/_engine.c"


def test_the_engine_choice_is_checked(monkeypatch):
    monkeypatch.setenv(compiled.ENV, "fast")
    with pytest.raises(MlclusterError, match="not one of auto, c, python"):
        compiled.engine_for(Target("http://127.0.0.1:9"))
    monkeypatch.setenv(compiled.ENV, "c")
    with pytest.raises(MlclusterError, match="plain HTTP only|not built"):
        compiled.engine_for(Target("https://127.0.0.1:9"))
