"""Where the CLI runs the worker's own code: writing a stand-in model and
exporting a model for an ONNX backend, so the CLI's files and the workers'
are the same code. The one module of the CLI that imports `mlcluster_worker`,
and only inside these functions (it pulls in torch and transformers: seconds),
so no other command pays for it. Everything else the CLI shares with the images
(backend names, the default model, environment variables) is `mlcluster_contract`.
"""
from __future__ import annotations

from pathlib import Path


def make_model(out_dir: str | Path, size: str = "base") -> Path:
    """A DistilBERT classifier with RANDOM weights in `out_dir` (mlcluster_worker.make_model)."""
    from mlcluster_worker.make_model import make_model as write
    return write(out_dir, size)


def random_weights_warning() -> str:
    """What is said wherever a random-weight stand-in serves."""
    from mlcluster_worker.make_model import WARNING
    return WARNING


def prepare_model(model_dir: str | Path, backend: str, cache_dir: str | Path) -> Path:
    """The directory a worker of `backend` loads (mlcluster_worker.export.prepare_model)."""
    from mlcluster_worker.export import prepare_model as prepare
    return prepare(model_dir, backend, cache_dir)
