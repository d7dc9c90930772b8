"""The ONNX Runtime classifier: a directory made by `export.prepare_model`.

Imports only onnxruntime, tokenizers and numpy (never torch or transformers),
so it runs in the torch-free worker image. Same contract as `model.Classifier`:
`name`, `backend`, `threads`, `max_length`, `classify(texts) -> list[dict]`.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np

from .export import MANIFEST, read_manifest
from .make_model import WARNING as RANDOM_WARNING, is_random_stand_in
from .results import format_results

log = logging.getLogger("mlcluster.worker")
OPTIMIZATION_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC"}


class OnnxClassifier:
    def __init__(self, model_dir: str, threads: int, backend: str):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        root = Path(model_dir).expanduser()
        manifest = read_manifest(root)
        if manifest is None:
            raise FileNotFoundError(f"{root} holds no {MANIFEST}: prepare it with "
                                    f"`python -m mlcluster_worker.export {root} {backend} CACHE_DIR`")
        if "labels" not in manifest:
            raise ValueError(f"{root} was prepared by an older mlcluster: prepare it again")
        if manifest["backend"] != backend:
            raise ValueError(f"{root} was prepared for {manifest['backend']}, not {backend}")
        config = json.loads((root / "config.json").read_text())
        tok_config_path = root / "tokenizer_config.json"
        tok_config = json.loads(tok_config_path.read_text()) if tok_config_path.is_file() else {}
        self.max_length = min(int(tok_config.get("model_max_length") or 512),
                              int(config.get("max_position_embeddings") or 512), 512)
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)
        pad_id = self.tokenizer.token_to_id(tok_config.get("pad_token") or "[PAD]") or 0
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=tok_config.get("pad_token") or "[PAD]")  # to the longest
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # An export may ask for less than ORT's full optimisation: the per-token int8 graph
        # (per_token.py) must not meet the MatMulIntegerToFloat fusion, which takes one scale per tensor.
        level = OPTIMIZATION_LEVELS[manifest.get("ort_optimization") or "all"]
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        self.session = ort.InferenceSession(str(root / manifest["onnx"]), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.labels = dict(enumerate(manifest["labels"]))
        self.backend = backend
        self.threads = max(1, threads)
        self.torch_threads = None
        self.name = Path(manifest.get("source") or root).name
        self.random_weights = is_random_stand_in(root)
        if self.random_weights:
            log.warning("model %s: %s", root, RANDOM_WARNING)
            self.name += " (random weights, outputs meaningless)"
        self._lock = threading.Lock()  # one forward pass at a time: threads are set per process

    def classify(self, texts: list[str]) -> list[dict]:
        encodings = self.tokenizer.encode_batch(texts)
        feeds = {}
        for name, field in (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids")):
            if name in self.inputs:
                feeds[name] = np.array([getattr(e, field) for e in encodings], dtype=np.int64)
        with self._lock:
            (logits,) = self.session.run(["logits"], feeds)
        logits = logits.astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return format_results(exp / exp.sum(axis=1, keepdims=True), self.labels)
