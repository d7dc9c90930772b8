"""Prepare a model directory for a backend, once: the ONNX export and its int8 form.

    prepare_model(model_dir, backend, cache_dir) -> Path

- `torch`: the model directory itself (nothing to prepare).
- `onnx`: `<cache_dir>/<content hash>-onnx/` holding `model.onnx` (torch's
  TorchScript-based exporter, `dynamo=False`: batch and sequence axes dynamic),
  the tokenizer files and config.json, and `mlcluster_export.json` (backend,
  source hash, file names) written last, so a half-made directory is never taken
  for a finished one.
- `onnx-int8`: the same, with `model.onnx` replaced by ONNX Runtime's dynamic
  quantization of it (int8 weights per channel; activations quantized per call,
  with one scale per token: `per_token.py`), and `ort_optimization: "basic"`
  in the manifest, the level the worker's session must use for that graph.

The cache key is a sha256 over the model directory's files (relative paths and
contents), so a second call with the same model returns the existing directory
without importing torch, and a changed model gets a new export. This runs where
the CLI runs (it needs torch and onnx); the worker only loads the result with
onnxruntime + tokenizers + numpy.

    python -m mlcluster_worker.export MODEL_DIR BACKEND CACHE_DIR
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from mlcluster_contract import BACKENDS

MANIFEST = "mlcluster_export.json"
ONNX_FILE = "model.onnx"
# What the ONNX worker needs besides the graph (whichever of these exist).
SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
              "MLCLUSTER_RANDOM_WEIGHTS.json")
OPSET = 17
QUANTIZATION = "dynamic int8, QInt8 weights per channel, per-token activation scales"
RECIPE = 3  # raise when the export or quantization changes: older exports are then redone


def model_hash(model_dir: str | Path) -> str:
    """sha256 (hex) over the directory's files: relative paths and contents."""
    root = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\n")
    return digest.hexdigest()


def read_manifest(directory: str | Path) -> dict | None:
    """The export manifest of a prepared directory, or None for a plain model directory."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def prepare_model(model_dir: str | Path, backend: str, cache_dir: str | Path) -> Path:
    """The directory a worker of `backend` loads for the model in `model_dir`
    (see the module docstring). Raises ValueError for an unknown backend and
    FileNotFoundError for a directory without config.json."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    source = Path(model_dir).expanduser().resolve()
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} holds no config.json, so it is not a model directory")
    if backend == "torch":
        return source
    digest = model_hash(source)
    target = Path(cache_dir).expanduser() / f"{digest[:16]}-{backend}"
    manifest = read_manifest(target)
    if (manifest and manifest.get("source_hash") == digest and manifest.get("recipe") == RECIPE
            and (target / ONNX_FILE).is_file()):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        labels = _export_onnx(source, work / "fp32.onnx")
        if backend == "onnx-int8":
            _quantize(work / "fp32.onnx", work / ONNX_FILE)
            (work / "fp32.onnx").unlink()
        else:
            (work / "fp32.onnx").rename(work / ONNX_FILE)
        for name in SIDE_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, work / name)
        (work / MANIFEST).write_text(json.dumps(
            {"backend": backend, "source_hash": digest, "source": str(source), "onnx": ONNX_FILE,
             "opset": OPSET, "recipe": RECIPE, "labels": labels,
             "quantization": QUANTIZATION if backend == "onnx-int8" else None,
             # per_token.py: ORT's extended fusions would apply one scale per tensor to its graph
             "ort_optimization": "basic" if backend == "onnx-int8" else "all"}, indent=2))
        for path in [work, *work.iterdir()]:  # readable by a container's non-root user when mounted
            path.chmod(0o755 if path.is_dir() else 0o644)
        if target.exists():  # a stale or half-made one: replace it
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _export_onnx(source: Path, out: Path) -> list[str]:
    """Export the classifier to `out`; return its labels by index (config.json
    may omit the default LABEL_<i> names, which transformers supplies)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    sample = tokenizer(["an example sentence to trace", "a second one"], padding=True, return_tensors="pt")
    # The inputs the model takes, in its forward's order; BERT also takes token_type_ids.
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    with torch.inference_mode(), warnings.catch_warnings():
        if os.environ.get("MLCLUSTER_VERBOSE") != "1":  # `mlcluster up -v` shows the tracer's warnings
            warnings.simplefilter("ignore")  # TracerWarnings and a UserWarning about advanced indexing
        torch.onnx.export(model, tuple(sample[n] for n in names), str(out), input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def _quantize(fp32: Path, out: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .per_token import per_token

    # Per-channel weight scales and per-token activation scales: on the agreement
    # guard (all-MiniLM-L6-v2, tests/test_agreement.py) 97.3 % of labels, against
    # 95.5 % per tensor (RECIPE 2), for ~6 % of DistilBERT-base's int8 speed (1.70x
    # vs 1.81x onnx fp32; on MiniLM 1.13x vs 1.47x). The guard's 99.5 % was not
    # reached by any int8 recipe measured: benchmarks/int8_recipes.py prints them
    # all (U8U8, reduce_range, MatMul only, ORT pre-processing, SmoothQuant, the
    # most sensitive MatMuls left fp32), and the README has its table. Earlier,
    # also measured and not taken (DistilBERT-base, speed relative to onnx fp32):
    #   MatMulNBits 8-bit, block 16, int8 compute (accuracy_level 4): 99.6 % (99.3 % with head seed 1), 0.76x
    #   MatMulNBits 8-bit, block 32, fp32 compute (accuracy_level 0): 99.5 %, ~0.15x
    #   fp16 weights (onnxruntime.transformers.float16, fp32 in/out): 100 %, 0.74-1.24x
    #   static QDQ S8S8: 85.3 %; ORT transformers optimizer (fused Attention) first: 94.4 %
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic's "please consider pre-processing" line
    try:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
    per_token(out, out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    print(prepare_model(*args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
