"""Which model the workers load: a hub id, a local directory, or the offline stand-in.

The lab's model is distilbert-base-uncased. Where the hub cannot be reached and
the model is not cached, the default model is replaced by a local directory
with the same architecture and random weights (same compute cost, meaningless
answers), and we say so plainly.
"""
from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mlcluster_contract import DEFAULT_MODEL, OVERHEAD_TEST

from . import worker_code
from .errors import MlclusterError, see_docs
from .state import ClusterSpec, home
from .ui import QuietUI

HUB_HOST = "huggingface.co"
VERBOSE_ENV = "MLCLUSTER_VERBOSE"


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


MODEL_STACK = ("torch", "transformers", "onnx", "onnxruntime")
LOCAL_EXTRA_HINT = ("pip install torch==2.13.0 && pip install 'mlcluster[local]' (the model stack); "
                    + see_docs("model-stack"))


def require_model_stack(what: str) -> None:
    """One sentence instead of an ImportError deep inside, where the base install (no [local]) lacks the stack."""
    import importlib.util
    missing = [m for m in MODEL_STACK if importlib.util.find_spec(m) is None]
    if missing:
        raise MlclusterError(f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                             "not installed here", LOCAL_EXTRA_HINT)


def hub_cached(model: str) -> bool:
    """Whether the Hugging Face cache holds `model` (a hub id)."""
    import importlib.util
    if importlib.util.find_spec("huggingface_hub") is None:  # the base install: nothing is cached by it
        return False
    from huggingface_hub import try_to_load_from_cache  # a dependency of transformers; slow to import
    return isinstance(try_to_load_from_cache(model, "config.json"), str)


def stand_in_dir() -> Path:
    return home() / "models" / f"{DEFAULT_MODEL}-random-weights"


def quiet_libraries(verbose: bool = False) -> None:
    """Our progress lines are the only ones: no library warnings (torch.onnx's
    TracerWarnings, UserWarnings) and no hub or transformers tqdm bars, which
    would scribble over them (the variables are read when those libraries are
    imported). `verbose` (`up -v`) lets them all through, for this process and
    the exporter (MLCLUSTER_VERBOSE=1)."""
    if verbose or os.environ.get(VERBOSE_ENV) == "1":
        os.environ.update({VERBOSE_ENV: "1", "HF_HUB_DISABLE_PROGRESS_BARS": "0", "TRANSFORMERS_VERBOSITY": "warning"})
        os.environ.pop("TRANSFORMERS_NO_ADVISORY_WARNINGS", None)
        warnings.resetwarnings()
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.simplefilter("ignore")


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
    if hub_cached(model):
        return ResolvedModel(model, local=False)
    if hub_reachable():
        require_model_stack(f"downloading {model}")
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
    require_model_stack("writing the offline stand-in model")
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
        except ModuleNotFoundError as exc:  # the base install, without [local], and no export cached
            raise MlclusterError(f"preparing {source.name} for the {spec.backend} backend needs {exc.name}, "
                                 "which is not installed here", LOCAL_EXTRA_HINT) from None
        except Exception as exc:  # the exporter's and ONNX Runtime's errors are many; each gets one sentence
            raise MlclusterError(f"exporting {source} for the {spec.backend} backend failed: "
                                 f"{type(exc).__name__}: {exc}",
                                 "`--backend torch` serves the model as it is") from None
