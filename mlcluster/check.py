"""`mlcluster check`: which providers are ready to bring a cluster up, and the next step for those that are not.

    report = check_providers(spec, ["local", "ssh", "aws"])
    report.ready("ssh")  -> bool

Each provider gets a list of `Finding`s. A finding that is `required` and not
`ok` makes its provider not ready; an optional one (the Docker engine for a
process-runtime cluster, the model cache that `up` fills itself) only informs.
`ok` is None when something could not be checked (for example the vCPU quota,
where Service Quotas is not allowed): that never counts as ready or not ready.

Nothing here changes anything: no state is written, host keys met for the
first time are not recorded, no AWS resource is created.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .errors import MlclusterError, see_docs
from .models import (
    DEFAULT_MODEL,
    LOCAL_EXTRA_HINT,
    MODEL_STACK,
    OVERHEAD_TEST,
    exported_dir,
    hub_cached,
    is_local_dir,
    looks_like_path,
    stand_in_dir,
)
from .state import ClusterSpec, ClusterState, home

PROVIDERS = ("local", "ssh", "aws")
STANDARD_QUOTA_CODE = "L-1216C47A"  # Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances
STANDARD_FAMILIES = set("acdhimrtz")


@dataclass
class Finding:
    """One thing checked: what, whether it is fine, what was seen, and what to do next."""
    what: str
    ok: Optional[bool]          # None: could not be checked
    detail: str
    next_step: str = ""
    required: bool = True       # does it decide whether the provider is ready?


@dataclass
class ProviderReadiness:
    provider: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(f.ok is not False for f in self.findings if f.required)

    def to_json(self) -> dict:
        return {"provider": self.provider, "ready": self.ready,
                "checks": [dataclasses.asdict(f) for f in self.findings]}


@dataclass
class Report:
    providers: list[ProviderReadiness]

    def ready(self, provider: str) -> bool:
        return next(p.ready for p in self.providers if p.provider == provider)

    def to_json(self) -> dict:
        return {"providers": [p.to_json() for p in self.providers]}


def check_providers(spec: ClusterSpec, providers: tuple[str, ...] | list[str] = PROVIDERS) -> Report:
    checks: dict[str, Callable[[ClusterSpec], list[Finding]]] = {"local": check_local, "ssh": check_ssh,
                                                                 "aws": check_aws}
    return Report([ProviderReadiness(p, checks[p](spec)) for p in providers])


# -- local ------------------------------------------------------------------------
def check_local(spec: ClusterSpec) -> list[Finding]:
    return [model_stack(), docker_engine(required=spec.runtime == "docker"), model_cache(spec)]


def model_stack() -> Finding:
    missing = [m for m in MODEL_STACK if importlib.util.find_spec(m) is None]
    if missing:
        return Finding("model stack", False, f"not installed here: {', '.join(missing)}",
                       LOCAL_EXTRA_HINT)
    return Finding("model stack", True, "torch, transformers, onnx and onnxruntime are installed")


def docker_engine(required: bool) -> Finding:
    from .deploy.docker import connect
    try:
        client = connect(timeout=5)
    except MlclusterError as exc:
        return Finding("Docker engine", False, exc.message, exc.hint or "", required)
    try:
        version = client.version().get("Version", "?")
    finally:
        client.close()
    return Finding("Docker engine", True, f"Docker {version} answers", "", required)


def model_cache(spec: ClusterSpec) -> Finding:
    """Where `up` will find spec.model. Never blocking: `up` downloads it or writes the stand-in."""
    model = spec.model
    if model == OVERHEAD_TEST:
        return Finding("model cache", True, "overhead-test needs no model", required=False)
    if looks_like_path(model):
        if is_local_dir(model) and (Path(model).expanduser() / "config.json").is_file():
            return Finding("model cache", True, f"{model} is a model directory", required=False)
        return Finding("model cache", False, f"{model} is not a model directory (no config.json)",
                       "pass a directory holding config.json and the weights, or a hub id", required=True)
    exports = sorted(p.name for p in exported_dir().glob(f"*-{spec.backend}")) if exported_dir().is_dir() else []
    exported = f"; {len(exports)} {spec.backend} export(s) cached" if exports and spec.backend != "torch" else ""
    if hub_cached(model):
        return Finding("model cache", True, f"{model} is in the Hugging Face cache{exported}", required=False)
    if (stand_in_dir() / "config.json").is_file() and model == DEFAULT_MODEL:
        return Finding("model cache", True, f"the offline stand-in (RANDOM weights) is at {stand_in_dir()}"
                       f"{exported}", "pass --model DIR to serve a real model", required=False)
    return Finding("model cache", False, f"{model} is not cached here",
                   "`mlcluster up` downloads it (or, without the hub, writes a random-weight stand-in)",
                   required=False)


# -- ssh --------------------------------------------------------------------------
def check_ssh(spec: ClusterSpec, connect_timeout: float = 10.0) -> list[Finding]:
    if not spec.provider_options.get("ssh"):
        return [Finding("[ssh] table", False, "no [ssh] table was given",
                        "pass -c cluster.toml with an [ssh] table (orchestrator and workers)")]
    from .providers.ssh.options import parse_options
    try:
        options = parse_options(spec)
    except MlclusterError as exc:
        return [Finding("[ssh] table", False, exc.message, exc.hint or "fix the [ssh] table")]
    keys = pinned_host_keys(spec.name)
    timeout = min(options.connect_timeout, connect_timeout)
    with ThreadPoolExecutor(max_workers=min(16, len(options.hosts()))) as pool:
        return list(pool.map(lambda host: ssh_host(host, keys, timeout), options.hosts()))


def pinned_host_keys(name: str) -> dict[str, str]:
    """The host keys an existing cluster of that name pinned (a copy: check records nothing)."""
    if not (home() / name / "state.json").is_file():
        return {}
    try:
        return dict(ClusterState.load(name).resources.host_keys)
    except MlclusterError:
        return {}


def ssh_host(host, keys: dict[str, str], timeout: float) -> Finding:
    from .remote.connection import Connection, HostKeyChanged, HostKeyStore
    what = f"host {host.name} ({host.user}@{host.address}:{host.port})"
    pinned = f"{host.address}:{host.port}" in keys
    try:
        with Connection(host.address, host.user, host.port, key_path=host.key or None, connect_timeout=timeout,
                        known_hosts=HostKeyStore(dict(keys)), label=host.name) as conn:
            conn.run("true", timeout=timeout)
    except MlclusterError as exc:
        anchor = "ssh-host-key-changed" if isinstance(exc, HostKeyChanged) else "ssh-unreachable"
        return Finding(what, False, exc.message,
                       f"{exc.hint or 'check the address, user and key of this host in [ssh]'}; {see_docs(anchor)}")
    key = "its pinned host key" if pinned else "a host key seen for the first time (up will pin it)"
    return Finding(what, True, f"logged in with {host.key or 'the SSH agent'}; {key}")


# -- aws --------------------------------------------------------------------------
def check_aws(spec: ClusterSpec) -> list[Finding]:
    from .providers.aws.api import AWS
    from .providers.aws.options import PRICES, AWSOptions
    try:
        options = AWSOptions.from_spec(spec)
        aws = AWS(options.region, options.profile, options.endpoint_url)
    except MlclusterError as exc:
        return [Finding("region", False, exc.message, f"{exc.hint or 'fix the [aws] table'}; {see_docs('aws-region')}")]
    findings = [Finding("region", True, aws.region)]
    try:
        aws.require_credentials()
        identity = aws.call("sts", "get_caller_identity")
    except MlclusterError as exc:
        return findings + [Finding("credentials", False, exc.message,
                                   f"{exc.hint + '; ' if exc.hint else ''}{see_docs('aws-credentials')}")]
    findings.append(Finding("credentials", True, f"accepted for {identity.get('Arn', 'an identity')}"))
    findings.append(vcpu_quota(aws, options.instance_type, spec.workers + 1, PRICES))
    return findings


def vcpu_quota(aws, instance_type: str, instances: int, prices: dict) -> Finding:
    """The standard on-demand vCPU quota against what the cluster needs; "could not check" where
    Service Quotas does not answer (not allowed, not in the region) or the type is not a standard one."""
    if instance_type not in prices or instance_type[0] not in STANDARD_FAMILIES:
        return Finding("vCPU quota", None, f"could not check: the vCPUs of {instance_type} are not known here")
    needed = instances * prices[instance_type][1]
    try:
        answer = aws.call("service-quotas", "get_service_quota", ServiceCode="ec2", QuotaCode=STANDARD_QUOTA_CODE)
        limit = float(answer["Quota"]["Value"])
    except (MlclusterError, KeyError, TypeError, ValueError) as exc:
        reason = exc.message if isinstance(exc, MlclusterError) else "Service Quotas gave no value"
        return Finding("vCPU quota", None, f"could not check ({reason})",
                       f"make sure quota {STANDARD_QUOTA_CODE} allows {needed} vCPUs (Service Quotas console)")
    return quota_verdict(needed, limit, f"{instances} × {instance_type}")


def quota_verdict(needed: float, limit: float, what: str) -> Finding:
    """Pure: is a vCPU quota of `limit` enough for `needed` vCPUs (`what` names the instances)?"""
    detail = f"{needed:g} vCPUs needed ({what}), quota {limit:g} ({STANDARD_QUOTA_CODE})"
    if needed > limit:
        return Finding("vCPU quota", False, detail,
                       f"ask AWS for a higher quota {STANDARD_QUOTA_CODE} (Service Quotas), or use fewer workers; "
                       + see_docs("aws-vcpu-quota"))
    return Finding("vCPU quota", True, detail)


# -- for people ---------------------------------------------------------------------
def readiness_table(report: Report):
    """One Rich table: a row per finding, grouped by provider."""
    from rich.markup import escape
    from rich.table import Table
    table = Table(title="mlcluster check", show_lines=False)
    for column in ("provider", "check", "", "what was seen", "next step"):
        table.add_column(column)
    marks = {True: "[green]ok[/]", False: "[red]no[/]", None: "[yellow]?[/]"}
    for readiness in report.providers:
        verdict = "[green]ready[/]" if readiness.ready else "[red]not ready[/]"
        for i, f in enumerate(readiness.findings):
            mark = marks[f.ok] if f.required or f.ok is not False else "[yellow]-[/]"
            table.add_row(f"{readiness.provider} {verdict}" if i == 0 else "", escape(f.what), mark,
                          escape(f.detail), escape(f.next_step))
        table.add_section()
    return table
