"""Which model the workers load: a hub id, a local directory, or the offline stand-in.

The lab's model is distilbert-base-uncased. Where the hub cannot be reached and
the model is not cached, the default model is replaced by a local directory
with the same architecture and random weights (same compute cost, meaningless
answers), and we say so plainly.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mlcluster_contract import DEFAULT_MODEL, OVERHEAD_TEST

from . import worker_code
from .errors import MlclusterError
from .state import ClusterSpec, home
from .ui import QuietUI

HUB_HOST = "huggingface.co"


@dataclass
class ResolvedModel:
    ref: str            # what workers get as MODEL
    local: bool         # a directory on this machine
    stand_in: bool = False


def looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists()


def is_local_dir(model: str) -> bool:
    """A model given as a directory on this machine (not a hub id)."""
    return looks_like_path(model) and Path(model).expanduser().is_dir()


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _cached(model: str) -> bool:
    from huggingface_hub import try_to_load_from_cache  # a dependency of transformers; slow to import
    return isinstance(try_to_load_from_cache(model, "config.json"), str)


def stand_in_dir() -> Path:
    return home() / "models" / f"{DEFAULT_MODEL}-random-weights"


def quiet_libraries() -> None:
    """Our progress lines are the only ones: the hub's and transformers' tqdm
    bars would scribble over them (read when those libraries are imported)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def resolve_model(model: str, ui: QuietUI) -> ResolvedModel:
    quiet_libraries()
    if model == OVERHEAD_TEST:
        return ResolvedModel(model, local=False)
    if looks_like_path(model):
        path = Path(model).expanduser().resolve()
        if not path.is_dir():
            raise MlclusterError(f"model directory {model} does not exist",
                                 "pass a directory holding config.json and the weights, or a hub id")
        if not (path / "config.json").exists():
            raise MlclusterError(f"{model} holds no config.json, so it is not a Hugging Face model directory")
        return ResolvedModel(str(path), local=True)
    if _cached(model):
        return ResolvedModel(model, local=False)
    if hub_reachable():
        with ui.step(f"downloading {model} from the Hugging Face hub"):
            from huggingface_hub import snapshot_download
            snapshot_download(model)
        return ResolvedModel(model, local=False)
    if model != DEFAULT_MODEL:
        raise MlclusterError(f"model {model!r} is not cached here and the Hugging Face hub cannot be reached",
                             "pass a local model directory with --model")
    target = stand_in_dir()
    ui.warn(f"the Hugging Face hub cannot be reached: using an OFFLINE STAND-IN for {DEFAULT_MODEL} "
            f"(same architecture and compute cost, RANDOM WEIGHTS: its answers are meaningless) at {target}")
    with ui.step("writing the stand-in model (once)"):
        worker_code.make_model(target, size="base")
    return ResolvedModel(str(target), local=True, stand_in=True)


def hub_snapshot(model: str) -> Optional[Path]:
    """The local snapshot folder of a cached hub model, or None."""
    if model == OVERHEAD_TEST:
        return None
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # not cached (or no huggingface_hub): the containers must fetch it
        return None


def exported_dir() -> Path:
    return home() / "models" / "exported"


def served_model(spec: ClusterSpec, ui: QuietUI) -> str:
    """What the workers load for `spec.model` with `spec.backend`: for torch
    the model itself; for an ONNX backend a directory exported here, where the
    CLI runs, once per model content (cached under `exported_dir()`), so no
    worker ever exports and the ONNX workers need no torch."""
    if spec.model == OVERHEAD_TEST or spec.backend == "torch":
        return spec.model
    resolved = resolve_model(spec.model, ui)
    source = Path(resolved.ref) if resolved.local else hub_snapshot(resolved.ref)
    if source is None:
        raise MlclusterError(f"model {spec.model!r} is not on this machine, so it cannot be exported for "
                             f"the {spec.backend} backend", "pass a local model directory, or --backend torch")
    with ui.step(f"preparing {source.name} for the {spec.backend} backend (exported once, then reused)"):
        try:
            return str(worker_code.prepare_model(source, spec.backend, exported_dir()))
        except Exception as exc:  # the exporter's and ONNX Runtime's errors are many; each gets one sentence
            raise MlclusterError(f"exporting {source} for the {spec.backend} backend failed: "
                                 f"{type(exc).__name__}: {exc}",
                                 "`--backend torch` serves the model as it is") from None
