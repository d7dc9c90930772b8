"""Inference per core: the worker's backends against raw torch fp32 at batch 1.

One run, on this machine, with random 50-character texts (what the lab sends):

  1. reference  raw in-process torch fp32, batch 1, `--threads` threads: seq/s.
  2. workers    for each backend (torch, onnx, onnx-int8), a real worker process
                (gunicorn, as in production) over HTTP: closed-loop clients at
                concurrency 1 and at the backend's batch capacity (BATCH_MAX).
  3. agreement  (unless --no-agreement) labels and probabilities of onnx and
                onnx-int8 against torch fp32 on genuine weights (all-MiniLM-L6-v2,
                a seeded 2-label head, 1,000 sentences of whole words).

Prints a table with each throughput as a ratio of the reference per core; the
target is onnx-int8 over HTTP >= 3.0 x. The model is the random-weight
DistilBERT-base stand-in (make_model --size base), exported once into a cache.

    flock /tmp/mlc-bench.lock python benchmarks/inference.py [--seconds 10] [--threads 1]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import string
import sys
import tempfile
import threading
import time
from pathlib import Path

from mlcluster import services
from mlcluster_contract import BACKENDS


def lab_text() -> str:
    return "".join(random.choices(string.ascii_lowercase, k=50))


def raw_torch_rate(model_dir: str, threads: int, seconds: float) -> float:
    from mlcluster_worker.model import Classifier
    classifier = Classifier(model_dir, threads)
    classifier.classify([lab_text()])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        classifier.classify([lab_text()])
        done += 1
    return done / (time.perf_counter() - start)


def http_rate(port: int, clients: int, seconds: float) -> tuple[float, float, list[int]]:
    """Closed loop: `clients` threads, one keep-alive connection each.
    Returns (requests/s, median latency ms, batch sizes seen)."""
    latencies: list[float] = []
    batches: list[int] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, sizes = [], []
        while time.perf_counter() < stop:
            body = json.dumps({"text": lab_text()})
            began = time.perf_counter()
            conn.request("POST", "/run_model", body, {"Content-Type": "application/json"})
            answer = conn.getresponse()
            data = answer.read()
            if answer.status != 200:
                raise RuntimeError(f"worker answered {answer.status}: {data[:200]!r}")
            mine.append(time.perf_counter() - began)
            sizes.append(json.loads(data)["batch_size"])
        conn.close()
        with lock:
            latencies.extend(mine)
            batches.extend(sizes)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    return len(latencies) / elapsed, latencies[len(latencies) // 2] * 1000 if latencies else float("nan"), batches


def run_worker(model_dir: str, backend: str, threads: int, log_dir: Path):
    """A worker process for `backend`; returns (process, port, capacity)."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               **services.worker_env(model=model_dir, port=port, token="", torch_threads=threads,
                                     worker_id=backend, backend=backend))
    log = open(log_dir / f"worker-{backend}.log", "ab")
    proc = subprocess.Popen(services.worker_command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the {backend} worker exited; see {log_dir}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                return proc, port, json.loads(r.read())["capacity"]
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the {backend} worker was not ready after 180 s")


def stop(proc) -> None:
    import signal
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, OSError):
        pass


def agreement_lines(cache: Path, threads: int) -> list[str]:
    import mlcluster_worker.agreement as ag
    from mlcluster_worker.export import prepare_model
    from mlcluster_worker.model import Classifier
    from mlcluster_worker.onnx_model import OnnxClassifier

    model = ag.make_minilm_classifier(cache / "minilm-2-labels", seed=0)
    texts = ag.vocab_sentences(ag.minilm_dir() / "vocab.txt", 1000, seed=0)
    reference = ag.classify_all(Classifier(str(model), threads), texts)
    lines = []
    for backend in ("onnx", "onnx-int8"):
        served = OnnxClassifier(str(prepare_model(model, backend, cache)), threads, backend)
        result = ag.compare(reference, ag.classify_all(served, texts))
        met = "met" if result.fraction >= 0.995 else "NOT met"
        target = "" if backend == "onnx" else f"  (target >= 99.5 %: {met})"
        lines.append(f"  {backend:<10} {result.fraction:7.1%} same label of {result.texts}; "
                     f"largest probability difference {result.max_prob_diff:.4f}" + target)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--threads", type=int, default=1, help="threads per forward pass (cores per container)")
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/mlcluster/bench-models"))
    parser.add_argument("--no-agreement", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mlcluster_worker.export import prepare_model
    from mlcluster_worker.make_model import make_model

    cache = Path(args.cache)
    base = str(make_model(cache / "distilbert-base-random", size="base"))
    dirs = {b: str(prepare_model(base, b, cache)) for b in BACKENDS}
    reference = raw_torch_rate(base, args.threads, args.seconds)
    per_core = reference / args.threads
    rows = [("raw torch fp32, in process", "batch 1", reference, float("nan"), "1")]
    with tempfile.TemporaryDirectory(prefix="mlc-bench-inference-") as tmp:
        for backend in BACKENDS:
            proc, port, capacity = run_worker(dirs[backend], backend, args.threads, Path(tmp))
            try:
                http_rate(port, 1, min(1.0, args.seconds))  # warm-up
                for clients in sorted({1, capacity}):
                    rate, p50, batches = http_rate(port, clients, args.seconds)
                    seen = f"{min(batches)}-{max(batches)}" if batches else "-"
                    rows.append((f"worker {backend} over HTTP", f"concurrency {clients}", rate, p50, seen))
            finally:
                stop(proc)
    print(f"\nInference per core, DistilBERT-base (random weights), random 50-character texts, "
          f"{args.threads} thread(s), {args.seconds:g} s per phase")
    print(f"{'what':<30} {'load':<15} {'seq/s':>8} {'p50 ms':>8} {'batches':>8} {'x ref/core':>11}")
    for what, load, rate, p50, seen in rows:
        print(f"{what:<30} {load:<15} {rate:8.1f} {p50:8.1f} {seen:>8} {rate / args.threads / per_core:11.2f}")
    int8 = max(r[2] for r in rows if "onnx-int8" in r[0])
    print(f"target: worker onnx-int8 over HTTP >= 3.0 x raw torch fp32 batch 1 per core: "
          f"{int8 / args.threads / per_core:.2f} x ({'met' if int8 / args.threads >= 3.0 * per_core else 'NOT met'})")
    if not args.no_agreement:
        print("agreement with torch fp32 on genuine weights (all-MiniLM-L6-v2, seeded 2-label head):")
        try:
            for line in agreement_lines(cache, args.threads):
                print(line)
        except ModuleNotFoundError as exc:  # the genuine weights are a separate install
            print(f"  not measured: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
