"""int8 recipes for the onnx-int8 backend: agreement with torch fp32 and speed, one run.

The guard of tests/test_agreement.py (all-MiniLM-L6-v2's trained encoder, a
2-label head from seed 0, 1,000 sentences of whole vocabulary words): for each
recipe, ONNX Runtime's dynamic quantization of the fp32 export with different
options, served through the worker's own OnnxClassifier. Prints label
agreement with torch fp32, the largest probability difference, and speed at
batch 1 on one thread (random 50-character texts, as the lab sends) on the
same MiniLM and, with --base, on the DistilBERT-base stand-in the lab cluster
serves; speeds are taken in interleaved rounds (median) with onnx fp32 in the
same run, and shown as ratios to it.

    flock /tmp/mlc-bench.lock python benchmarks/int8_recipes.py [--seconds 2] [--rounds 3] [--base]
        [--sweep]   also print the per-node sensitivity (one MatMul quantized at a time)

Why U8U8 is in the table (our CPUs: AVX2, no AVX-512/VNNI): ONNX Runtime's u8s8
kernel (QInt8 weights) uses VPMADDUBSW there, whose int16 sums can saturate; its
u8u8 kernel (QUInt8 weights) cannot (ORT's quantization docs). Measured: it does
not change the agreement, so saturation is not what flips the labels.
Per-token recipes run at ORT's basic level (see mlcluster_worker/per_token.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import string
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recipe:
    name: str
    options: dict  # keyword arguments of onnxruntime.quantization.quantize_dynamic (weight_type by name)
    optimize_first: bool = False  # ORT's basic+extended graph optimisation (fusions) before quantizing
    smooth_alpha: float = 0.0  # > 0: SmoothQuant (benchmarks/smoothquant.py) with this alpha first
    per_token: bool = False  # per-token activation scales (mlcluster_worker.per_token) after quantizing


def recipes(exclude: list[str]) -> list[Recipe]:
    s8, u8 = {"weight_type": "QInt8"}, {"weight_type": "QUInt8"}
    pc = {"per_channel": True}
    matmul = {"op_types_to_quantize": ["MatMul"]}
    found = [
        Recipe("s8 weights, per tensor (ORT default)", {**s8}),
        Recipe("s8 weights, per channel (RECIPE 2)", {**s8, **pc}),
        Recipe("s8, per channel, reduce_range", {**s8, **pc, "reduce_range": True}),
        Recipe("s8, per channel, MatMul only", {**s8, **pc, **matmul}),
        Recipe("s8, per channel, after ORT pre-processing", {**s8, **pc}, optimize_first=True),
        Recipe("u8 weights (U8U8), per tensor", {**u8}),
        Recipe("u8 weights (U8U8), per channel", {**u8, **pc}),
        Recipe("u8, per channel, MatMul only", {**u8, **pc, **matmul}),
        Recipe("u8, per channel, after ORT pre-processing", {**u8, **pc}, optimize_first=True),
        Recipe("u8, per channel, reduce_range", {**u8, **pc, "reduce_range": True}),
        Recipe("optimum avx2 dynamic (u8/u8, per channel, symmetric w)",
               {**u8, **pc, "op_types_to_quantize": ["MatMul", "Attention", "LSTM", "Gather", "Transpose",
                                                     "EmbedLayerNormalization"],
                "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": False}}),
    ]
    found += [Recipe("s8, per channel, SmoothQuant alpha 0.5", {**s8, **pc}, smooth_alpha=0.5)]
    found += [Recipe("s8, per channel, per-token activations (RECIPE 3)", {**s8, **pc}, per_token=True),
              Recipe("u8, per channel, per-token activations", {**u8, **pc}, per_token=True),
              Recipe("s8, per channel, per-token, SmoothQuant alpha 0.5", {**s8, **pc}, smooth_alpha=0.5,
                     per_token=True)]
    if exclude:
        found += [Recipe(f"s8, per channel, {len(exclude)} most sensitive MatMuls fp32", {**s8, **pc,
                         "nodes_to_exclude": exclude}),
                  Recipe(f"s8, per channel, per-token, {len(exclude)} most sensitive MatMuls fp32",
                         {**s8, **pc, "nodes_to_exclude": exclude}, per_token=True)]
    return found


def calibration_feeds(onnx_dir: Path, inputs: set[str], n: int = 128) -> list[dict]:
    """Batch-1 inputs from sentences (seed 1: not the guard's seed-0 sentences) and lab texts."""
    import numpy as np
    from tokenizers import Tokenizer

    import mlcluster_worker.agreement as ag

    tokenizer = Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
    texts = ag.vocab_sentences(ag.minilm_dir() / "vocab.txt", n - n // 4, seed=1) + lab_texts(n // 4, seed=2)
    feeds = []
    for text in texts:
        e = tokenizer.encode(text)
        feed = {"input_ids": np.array([e.ids], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask], dtype=np.int64)}
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = np.array([e.type_ids], dtype=np.int64)
        feeds.append(feed)
    return feeds


def quantize(fp32: Path, out: Path, recipe: Recipe) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = fp32
    if recipe.smooth_alpha:
        import onnx
        from smoothquant import smooth  # benchmarks/smoothquant.py
        inputs = {i.name for i in onnx.load(str(fp32), load_external_data=False).graph.input}
        source = out.with_suffix(".smooth.onnx")
        smooth(fp32, source, calibration_feeds(fp32.parent, inputs), recipe.smooth_alpha)
    if recipe.optimize_first:  # ORT's own pre-processing: symbolic shapes, then its graph optimisations
        from onnxruntime.quantization.shape_inference import quant_pre_process
        optimized = out.with_suffix(".opt.onnx")
        # Its symbolic shape inference fails on this export ("Incomplete symbolic shape inference").
        # It leaves temporary files in the working directory: keep them in ours.
        cwd = os.getcwd()
        os.chdir(out.parent)
        try:
            quant_pre_process(str(source), str(optimized), skip_optimization=False, skip_symbolic_shape=True)
        finally:
            os.chdir(cwd)
        if source != fp32:
            source.unlink()
        source = optimized
    options = dict(recipe.options)
    options["weight_type"] = getattr(QuantType, options["weight_type"])
    quantize_dynamic(str(source), str(out), **options)
    if source != fp32:
        source.unlink()
    if recipe.per_token:
        from mlcluster_worker.per_token import per_token
        per_token(out, out)


def as_int8_dir(onnx_dir: Path, model: Path, out_dir: Path, optimization: str = "all") -> Path:
    """A prepared onnx-int8 directory: onnx_dir's side files and manifest, `model` as its graph."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in onnx_dir.iterdir():
        if f.name != "model.onnx":
            shutil.copy2(f, out_dir / f.name)
    manifest = json.loads((out_dir / "mlcluster_export.json").read_text())
    manifest["backend"] = "onnx-int8"
    manifest["ort_optimization"] = optimization  # per-token graphs need "basic" (see export.py)
    (out_dir / "mlcluster_export.json").write_text(json.dumps(manifest))
    shutil.move(str(model), out_dir / "model.onnx")
    return out_dir


def lab_texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(string.ascii_lowercase, k=50)) for _ in range(n)]


def rate(classifier, seconds: float, texts: list[str]) -> float:
    classifier.classify([texts[0]])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        classifier.classify([texts[done % len(texts)]])
        done += 1
    return done / (time.perf_counter() - start)


def margins(results: list[dict]) -> list[float]:
    return [r["probabilities"]["LABEL_1"] - r["probabilities"]["LABEL_0"] for r in results]


def sensitivity(fp32: Path, onnx_dir: Path, texts: list[str], reference: list[dict], work: Path,
                weight_type: str) -> list[tuple[float, str]]:
    """Mean |probability margin error| with one MatMul quantized at a time, largest first."""
    import onnx

    import mlcluster_worker.agreement as ag
    from mlcluster_worker.onnx_model import OnnxClassifier

    graph = onnx.load(str(fp32)).graph
    weights = {i.name for i in graph.initializer}
    nodes = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    ref = margins(reference)
    scores = []
    for node in nodes:
        out = work / "one.onnx"
        quantize(fp32, out, Recipe(node, {"weight_type": weight_type, "per_channel": True,
                                          "nodes_to_quantize": [node]}))
        served = OnnxClassifier(str(as_int8_dir(onnx_dir, out, work / "one")), 1, "onnx-int8")
        got = margins(ag.classify_all(served, texts))
        scores.append((statistics.fmean(abs(a - b) for a, b in zip(ref, got)), node))
        shutil.rmtree(work / "one")
    return sorted(scores, reverse=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per speed sample")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved speed rounds (median)")
    parser.add_argument("--base", action="store_true", help="also time each recipe on DistilBERT-base")
    parser.add_argument("--sweep", action="store_true", help="per-node sensitivity sweep")
    parser.add_argument("--exclude", type=int, default=6, help="MatMuls left fp32 in the sweep's recipes")
    parser.add_argument("--exclude-nodes", default="", help="comma-separated MatMul names to leave fp32 "
                        "(instead of --sweep: what an earlier sweep printed)")
    parser.add_argument("--only", default="", help="comma-separated substrings: recipes to run")
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/mlcluster/bench-models"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's "consider pre-processing" on every call
    import mlcluster_worker.agreement as ag
    from mlcluster_worker.export import prepare_model
    from mlcluster_worker.model import Classifier
    from mlcluster_worker.onnx_model import OnnxClassifier

    cache = Path(args.cache)
    minilm = ag.make_minilm_classifier(cache / "minilm-2-labels", seed=0)
    texts = ag.vocab_sentences(ag.minilm_dir() / "vocab.txt", 1000, seed=0)
    reference = ag.classify_all(Classifier(str(minilm), 1), texts)
    models = {"minilm": Path(prepare_model(minilm, "onnx", cache))}
    if args.base:
        from mlcluster_worker.make_model import make_model
        models["base"] = Path(prepare_model(make_model(cache / "distilbert-base-random", size="base"), "onnx", cache))
    speed_texts = lab_texts(200)
    with tempfile.TemporaryDirectory(prefix="mlc-int8-recipes-") as tmp:
        work = Path(tmp)
        exclude = [n for n in args.exclude_nodes.split(",") if n]
        if args.sweep:
            scores = sensitivity(models["minilm"] / "model.onnx", models["minilm"], texts[:300], reference[:300],
                                 work, "QInt8")
            print("per-node sensitivity (s8 per channel, one MatMul quantized, mean |margin error| on 300 texts):")
            for score, node in scores:
                print(f"  {score:.6f}  {node}")
            exclude = [node for _, node in scores[:args.exclude]]
        chosen = [r for r in recipes(exclude) if not args.only or any(s in r.name for s in args.only.split(","))]
        served: dict[str, dict[str, OnnxClassifier]] = {"onnx fp32": {}}
        rows: dict[str, tuple[float, float]] = {}
        for model, onnx_dir in models.items():
            served["onnx fp32"][model] = OnnxClassifier(str(onnx_dir), 1, "onnx")
        result = ag.compare(reference, ag.classify_all(served["onnx fp32"]["minilm"], texts))
        rows["onnx fp32"] = (result.fraction, result.max_prob_diff)
        for i, recipe in enumerate(chosen):
            try:
                served[recipe.name] = {}
                for model, onnx_dir in models.items():
                    out = work / f"r{i}-{model}.onnx"
                    quantize(onnx_dir / "model.onnx", out, recipe)
                    level = "basic" if recipe.per_token else "all"
                    served[recipe.name][model] = OnnxClassifier(
                        str(as_int8_dir(onnx_dir, out, work / f"r{i}-{model}", level)), 1, "onnx-int8")
            except Exception as exc:  # one recipe's failure is a line of the report, not the end of the run
                print(f"  {recipe.name}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                del served[recipe.name]
                continue
            result = ag.compare(reference, ag.classify_all(served[recipe.name]["minilm"], texts))
            rows[recipe.name] = (result.fraction, result.max_prob_diff)
            print(f"  {recipe.name}: {result.fraction:.1%}", flush=True)
        torch_models = {"minilm": Classifier(str(minilm), 1)}
        if args.base:
            torch_models["base"] = Classifier(str(cache / "distilbert-base-random"), 1)
        speeds: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for model in models:
                fp32 = rate(torch_models[model], args.seconds, speed_texts)
                speeds.setdefault(("torch fp32", model), []).append(fp32)
                for name in served:
                    speeds.setdefault((name, model), []).append(rate(served[name][model], args.seconds, speed_texts))
    med = {k: statistics.median(v) for k, v in speeds.items()}
    excluding = {r.name for r in chosen if r.options.get("nodes_to_exclude")}
    print(f"\nint8 recipes: agreement with torch fp32 on all-MiniLM-L6-v2 + seeded head (1,000 sentences); "
          f"speed batch 1, 1 thread, median of {args.rounds} x {args.seconds:g} s, ratio to onnx fp32 same run")
    head = "| recipe | agreement | max prob diff | MiniLM seq/s | x onnx fp32 |"
    head += " DistilBERT-base seq/s | x onnx fp32 |" if args.base else ""
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name in ["torch fp32", *served]:
        agree, diff = rows.get(name, (1.0, 0.0))
        line = f"| {name} | {agree:.1%} | {diff:.4f} |"
        for model in models:
            if model != "minilm" and name in excluding:  # the names are MiniLM's: nothing is excluded there
                line += " – | – |"
                continue
            line += f" {med[(name, model)]:.1f} | {med[(name, model)] / med[('onnx fp32', model)]:.2f} |"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
