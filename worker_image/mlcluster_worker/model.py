"""The classifier a worker serves, and the overhead-test stand-in.

`load_classifier(model, backend, threads, service_ms)` returns an object with
`name`, `backend`, `threads`, `max_length` and `classify(texts) -> list[dict]`
(the torch one here, the ONNX Runtime one in `onnx_model`, imported only for
the ONNX backends so that their worker never imports torch). Loading happens
once, followed by one warm-up forward pass, before the worker reports ready.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from mlcluster_contract import OVERHEAD_TEST

from .make_model import WARNING as RANDOM_WARNING, is_random_stand_in
from .results import format_results

log = logging.getLogger("mlcluster.worker")


class Classifier:
    def __init__(self, model_ref: str, torch_threads: int):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._torch = torch
        torch.set_num_threads(max(1, torch_threads))
        self.torch_threads = self.threads = torch.get_num_threads()
        self.backend = "torch"
        local = Path(model_ref).expanduser().is_dir()
        if not local and model_ref.startswith(("/", "./", "../", "~")):
            raise FileNotFoundError(f"model directory {model_ref} does not exist")
        model_ref = str(Path(model_ref).expanduser()) if local else model_ref
        self.tokenizer = AutoTokenizer.from_pretrained(model_ref)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_ref).eval()
        self.max_length = min(int(getattr(self.tokenizer, "model_max_length", 512) or 512), 512)
        self.labels = {int(k): v for k, v in self.model.config.id2label.items()}
        self.name = Path(model_ref).name if local else model_ref
        self.random_weights = local and is_random_stand_in(model_ref)
        if self.random_weights:
            log.warning("model %s: %s", model_ref, RANDOM_WARNING)
            self.name += " (random weights, outputs meaningless)"
        self._lock = threading.Lock()  # one forward pass at a time: threads are set per process

    def classify(self, texts: list[str]) -> list[dict]:
        torch = self._torch
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with self._lock, torch.inference_mode():
            logits = self.model(**batch).logits
        return format_results(torch.softmax(logits.float(), dim=-1).tolist(), self.labels)


class OverheadTest:
    """No model: answers after a fixed service time. Only for measuring what
    the serving path (orchestrator, HTTP, scheduling) costs on its own."""

    def __init__(self, service_ms: float):
        self.service_s = service_ms / 1000.0
        self.name = f"{OVERHEAD_TEST} (no model, fixed {service_ms:g} ms)"
        self.random_weights = False
        self.torch_threads = self.threads = None
        self.backend = OVERHEAD_TEST
        self.max_length = 512

    def classify(self, texts: list[str]) -> list[dict]:
        if self.service_s:
            time.sleep(self.service_s)
        return [{"label": "NONE", "probabilities": {}} for _ in texts]


def load_classifier(model_ref: str, backend: str, threads: int, service_ms: float):
    """The classifier for `backend` ("torch", "onnx", "onnx-int8"), warmed up."""
    if model_ref == OVERHEAD_TEST:
        return OverheadTest(service_ms)
    if backend == "torch":
        classifier = Classifier(model_ref, threads)
    else:
        from .onnx_model import OnnxClassifier  # onnxruntime + tokenizers + numpy only
        classifier = OnnxClassifier(model_ref, threads, backend)
    classifier.classify(["warm-up pass before reporting ready"])
    return classifier
