"""The container images: their build contexts, and building them with the docker SDK.

Two kinds, `worker` and `orchestrator`, each built from its folder
(`worker_image/`, `orchestrator_image/`: a Dockerfile and the service's package).

Interface (also used by the SSH runtime, which uploads contexts and builds on hosts):
- `prepare_context(kind, dest_dir, *, wheelhouse=None, ca_bundle=None, model_dir=None) -> Path`
  writes a complete build context into `dest_dir` (emptied first) and returns it:
  the image folder, plus `mlcluster_contract/` (the package both sides import),
  `wheels/*.whl` (a local wheelhouse pip looks in first: all wheels of `wheelhouse`,
  plus single files given as `wheels=`), `ca-certificates.crt` (the CA bundle pip trusts
  inside the build, never kept in the image) and, for the worker, `model/` (a
  model directory baked in at /model). The Dockerfiles find these by themselves:
  no build argument is needed, except `BASE_IMAGE` where python:3.11-slim
  cannot be pulled (e.g. `mlcluster-base:bookworm`, made by .ci/setup-docker.sh).
- `context_hash(path) -> str`: a sha256 over the context's files (relative
  paths, executable bits, contents), the same for the same sources wherever
  they were assembled. Image tags carry it, so a changed source rebuilds.
- `ensure_image(client, kind, ui, options) -> str` builds `kind` on a local
  engine unless an image built from the same context and base exists, and
  returns its tag `mlcluster-<kind>:<hash16>` (also tagged `:latest`).
- `BuildOptions.from_env(kind)`: what to feed a build on this machine
  (MLCLUSTER_BASE_IMAGE, MLCLUSTER_WHEELHOUSE, MLCLUSTER_CA_BUNDLE; else pip's
  own find-links and cert settings: the torch CPU wheel, the proxy's CA).
"""
from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import mlcluster_contract

from .errors import MlclusterError
from .state import home
from .ui import QuietUI

# worker-onnx is the worker's build context with STACK=onnx: ONNX Runtime,
# tokenizers and numpy, no torch, for the onnx and onnx-int8 backends.
KINDS = ("worker", "worker-onnx", "orchestrator")
IMAGE_REPOS = {"worker": "mlcluster-worker", "worker-onnx": "mlcluster-worker-onnx",
               "orchestrator": "mlcluster-orchestrator"}
PACKAGES = {"worker": "mlcluster_worker", "worker-onnx": "mlcluster_worker", "orchestrator": "mlcluster_orchestrator"}
BUILD_ARGS = {"worker-onnx": {"STACK": "onnx"}}
DEFAULT_BASE = "python:3.11-slim"
FALLBACK_BASE = "mlcluster-base:bookworm"
LABEL_BUILD = "mlcluster.build-hash"
LABEL_CONTEXT = "mlcluster.context-hash"
# The CPU wheel the worker's Dockerfile asks for (TORCH_SPEC); from an
# automatically found wheelhouse only these are taken, not every wheel there.
TORCH_WHEEL_GLOB = "torch-2.13.0+cpu-*.whl"
IGNORED_DIRS = {"__pycache__", ".pytest_cache", ".git", ".mypy_cache"}
IGNORED_SUFFIXES = (".pyc", ".pyo", ".egg-info")


def worker_kind(backend: str) -> str:
    """The worker image that serves `backend`."""
    return "worker" if backend == "torch" else "worker-onnx"


def image_dir(kind: str) -> Path:
    """The folder `kind`'s image is built from (the one holding its Dockerfile)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    package = __import__(PACKAGES[kind])
    folder = Path(package.__file__).resolve().parent.parent
    if not (folder / "Dockerfile").is_file():
        raise MlclusterError(f"the {kind} image's Dockerfile is not next to {PACKAGES[kind]} ({folder})",
                             "install mlcluster from a checkout (`pip install -e .`) to build images")
    return folder


def _ignored(name: str) -> bool:
    return name in IGNORED_DIRS or name.endswith(IGNORED_SUFFIXES)


def _walk(root: Path, prefix: str = "") -> dict[str, Path]:
    """Every file under `root` (following no links out), as {relative path: file}."""
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        for name in filenames:
            if not _ignored(name):
                path = Path(dirpath) / name
                files[prefix + path.relative_to(root).as_posix()] = path
    return files


def context_manifest(kind: str, *, wheelhouse: Optional[Path] = None, ca_bundle: Optional[Path] = None,
                     model_dir: Optional[Path] = None, wheels: Sequence[Path] = ()) -> dict[str, Path]:
    """What `prepare_context` would write, as {path in the context: source file}."""
    manifest = _walk(image_dir(kind))
    # The contract both sides import (backend names, variables and defaults), beside the service's package.
    manifest.update(_walk(Path(mlcluster_contract.__file__).resolve().parent, "mlcluster_contract/"))
    if wheelhouse is not None:
        folder = Path(wheelhouse).expanduser()
        if not folder.is_dir():
            raise MlclusterError(f"the wheelhouse {folder} is not a directory")
        wheels = [*wheels, *sorted(folder.glob("*.whl"))]
    manifest.update({f"wheels/{Path(w).name}": Path(w) for w in wheels})
    if ca_bundle is not None:
        bundle = Path(ca_bundle).expanduser()
        if not bundle.is_file():
            raise MlclusterError(f"the CA bundle {bundle} is not a file")
        manifest["ca-certificates.crt"] = bundle
    if model_dir is not None:
        if not kind.startswith("worker"):
            raise MlclusterError("only a worker image can hold a model")
        model = Path(model_dir).expanduser()
        if not (model / "config.json").is_file():
            raise MlclusterError(f"{model} holds no config.json, so it is not a model directory")
        manifest.update(_walk(model, "model/"))
    return manifest


def prepare_context(kind: str, dest_dir: Path, *, wheelhouse: Optional[Path] = None,
                    ca_bundle: Optional[Path] = None, model_dir: Optional[Path] = None,
                    wheels: Sequence[Path] = ()) -> Path:
    """Write `kind`'s complete build context into `dest_dir` (emptied first).
    `wheels` adds single wheel files to those of `wheelhouse`."""
    manifest = context_manifest(kind, wheelhouse=wheelhouse, ca_bundle=ca_bundle, model_dir=model_dir,
                                wheels=wheels)
    dest = Path(dest_dir)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for rel, source in manifest.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)  # wheels and weights are large: share them where we can
        except OSError:
            shutil.copy2(source, target)
    return dest


def context_hash(path: Path) -> str:
    """A sha256 (hex) over a context directory's files; see the module docstring."""
    return _manifest_hash(_walk(Path(path)))


def _manifest_hash(manifest: dict[str, Path]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(manifest):
        source = manifest[rel]
        executable = "x" if os.access(source, os.X_OK) else "-"
        digest.update(f"{rel}\0{executable}\0{_file_hash(source)}\n".encode())
    return digest.hexdigest()


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- what to feed a build on this machine ---------------------------------------
def _pip_setting(name: str) -> Optional[str]:
    """pip's own setting `name` (e.g. "cert", "find-links"): its environment
    variable, else the [global] section of the usual config files."""
    value = os.environ.get("PIP_" + name.upper().replace("-", "_"))
    if value:
        return value
    files = ["/etc/pip.conf", "/etc/xdg/pip/pip.conf", Path.home() / ".config/pip/pip.conf",
             Path.home() / ".pip/pip.conf", os.environ.get("PIP_CONFIG_FILE") or ""]
    parser = configparser.ConfigParser()
    for path in files:
        try:
            parser.read(path)
        except (configparser.Error, OSError):
            continue
    return parser.get("global", name, fallback=None)


@dataclass
class BuildOptions:
    """What a build is fed. `base_image` None means: python:3.11-slim if the
    engine has it, else mlcluster-base:bookworm if it has that, else
    python:3.11-slim (pulled by the build)."""
    base_image: Optional[str] = None
    wheelhouse: Optional[Path] = None
    ca_bundle: Optional[Path] = None
    model_dir: Optional[Path] = None
    wheels: tuple[Path, ...] = ()

    def context_options(self) -> dict:
        """The keyword arguments of `prepare_context` / `context_manifest`."""
        return {"wheelhouse": self.wheelhouse, "ca_bundle": self.ca_bundle, "model_dir": self.model_dir,
                "wheels": self.wheels}

    @classmethod
    def from_env(cls, kind: str) -> "BuildOptions":
        """MLCLUSTER_* variables first; else pip's settings on this machine (a
        find-links folder holding torch's CPU wheel, for the worker; pip's cert)."""
        wheelhouse = os.environ.get("MLCLUSTER_WHEELHOUSE") or None
        ca = os.environ.get("MLCLUSTER_CA_BUNDLE") or _pip_setting("cert")
        options = cls(base_image=os.environ.get("MLCLUSTER_BASE_IMAGE") or None,
                      wheelhouse=Path(wheelhouse) if wheelhouse else None,
                      ca_bundle=Path(ca) if ca and Path(ca).is_file() else None)
        if options.wheelhouse is None and kind == "worker":
            options.wheels = _torch_wheels((_pip_setting("find-links") or "").split())
        return options


def _torch_wheels(places: Iterable[str]) -> tuple[Path, ...]:
    """The torch CPU wheels (TORCH_WHEEL_GLOB) in the local folders among `places`."""
    return tuple(w for place in places if Path(place).is_dir() for w in sorted(Path(place).glob(TORCH_WHEEL_GLOB)))


# -- building ----------------------------------------------------------------------
def choose_base_image(client, requested: Optional[str] = None) -> str:
    if requested:
        return requested
    for candidate in (DEFAULT_BASE, FALLBACK_BASE):
        if _local_image_id(client, candidate):
            return candidate
    return DEFAULT_BASE


def _local_image_id(client, ref: str) -> Optional[str]:
    import docker
    try:
        return client.images.get(ref).id
    except docker.errors.ImageNotFound:
        return None


def ensure_image(client, kind: str, ui: QuietUI, options: Optional[BuildOptions] = None,
                 force: bool = False) -> str:
    """Build `kind` unless the engine has an image from the same context and
    base; return its tag. `client` is a docker SDK `DockerClient`."""
    options = options or BuildOptions.from_env(kind)
    base = choose_base_image(client, options.base_image)
    manifest = context_manifest(kind, **options.context_options())
    context_digest = _manifest_hash(manifest)
    base_id = _local_image_id(client, base) or ""
    buildargs = {"BASE_IMAGE": base, **BUILD_ARGS.get(kind, {})}
    build_digest = hashlib.sha256(f"{context_digest}\0{sorted(buildargs.items())}\0{base_id}".encode()).hexdigest()
    tag = f"{IMAGE_REPOS[kind]}:{build_digest[:16]}"
    if not force and _local_image_id(client, tag):
        return tag
    with tempfile.TemporaryDirectory(prefix=f"mlcluster-{kind}-context-") as tmp:
        context = prepare_context(kind, Path(tmp) / "context", **options.context_options())
        labels = {LABEL_BUILD: build_digest, LABEL_CONTEXT: context_digest, "mlcluster.kind": kind}
        _build(client, kind, context, tag, buildargs, labels, ui)
    client.images.get(tag).tag(IMAGE_REPOS[kind], "latest")
    return tag


STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)")


def _build(client, kind: str, context: Path, tag: str, buildargs: dict, labels: dict, ui: QuietUI) -> None:
    """Run the build, showing its steps; on failure raise with the log's end."""
    import docker
    log_path = home() / "build-logs" / f"{tag.replace(':', '-')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    error = None
    # a step may be silent for long
    timeout, client.api.timeout = client.api.timeout, max(client.api.timeout or 0, 3600)
    with ui.step(f"building the {kind} image ({tag}, from {buildargs['BASE_IMAGE']})") as step, \
            open(log_path, "w") as log:
        try:
            for chunk in client.api.build(path=str(context), tag=tag, buildargs=buildargs, labels=labels,
                                          rm=True, forcerm=True, pull=False, decode=True):
                text = chunk.get("stream") or chunk.get("status") or ""
                if text:
                    log.write(text if text.endswith("\n") else text + "\n")
                match = STEP_RE.match(text)
                if match:
                    step.update(f"building the {kind} image: step {match[1]}/{match[2]} {match[3][:60]}")
                if "error" in chunk:
                    error = chunk["error"].strip()
                    log.write(f"ERROR: {error}\n")
        except docker.errors.DockerException as exc:
            error = str(exc)
        finally:
            client.api.timeout = timeout
    if error:
        raise MlclusterError(f"building the {kind} image failed: {error}\n{_log_tail(log_path)}",
                             _build_hint(kind, error, log_path))


def _log_tail(path: Path, lines: int = 15) -> str:
    kept = [line for line in path.read_text(errors="replace").splitlines(keepends=True) if line.strip()]
    return "".join(kept[-lines:])


def _build_hint(kind: str, error: str, log_path: Path) -> str:
    hint = f"the whole build log is in {log_path}"
    if "pull access denied" in error or "no such host" in error or "not found" in error.lower():
        hint += ("; where Docker Hub is unreachable, make a local base image with .ci/setup-docker.sh "
                 f"(as root) and set MLCLUSTER_BASE_IMAGE={FALLBACK_BASE}")
    elif kind == "worker":
        hint += ("; if pip found no torch==2.13.0+cpu, set MLCLUSTER_WHEELHOUSE to a folder holding its wheel "
                 "(`pip download torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu`); behind a "
                 "TLS-intercepting proxy, set MLCLUSTER_CA_BUNDLE to its CA bundle")
    return hint
