"""The `mlcluster` command: thin commands over the library.

Exit codes: 0 ok, 1 a known error (one sentence, and a hint), 2 a usage
error, 130 interrupted. A traceback only with MLCLUSTER_DEBUG=1.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.live import Live
from rich.markup import escape

from . import __version__, cluster, security, worker_code
from .bench.cli import bench_app
from .cli_options import Name, checked_fallback, checked_name
from .config import build_spec, load_config
from .errors import MlclusterError, UsageError
from .events_cli import events
from .keys_cli import keys_app
from .models import quiet_libraries, require_model_stack
from .output import cluster_list_table, cluster_table, plan_text, status_table
from .providers import get_provider
from .rollout.local import RollOptions
from .rollout.record import load as canary_in_place
from .state import ClusterSpec, ClusterState, home, known_clusters
from .ui import run_ui

app = typer.Typer(help="Stand up, watch, load-test and tear down a transformer inference cluster.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=True,
                  context_settings={"help_option_names": ["-h", "--help"]})
ui = run_ui()  # the one UI of this run
out, err = ui.out, ui.console


# Short flags mean one thing in every command: -n --name, -c --config, -y --yes,
# -w --workers, -m --containers-per-worker, -f --follow, -V --version, -h --help.
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Answer yes to the confirmation.")]
NameForUp = Annotated[Optional[str], typer.Option("--name", "-n", callback=checked_name,
                                                  help="The cluster's name (default: the config's, or 'default').")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", "-c", help="A TOML config file.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="One JSON object on stdout, for scripts.")]


def _version(value: bool) -> None:
    if value:
        print(f"mlcluster {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                                help="Print mlcluster's version and exit.")] = False) -> None:
    """Stand up, watch, load-test and tear down a transformer inference cluster."""


def _spec(config: Optional[Path], **flags) -> ClusterSpec:
    """The spec from the config file and the flags; what is wrong in them is a usage error (exit 2)."""
    try:
        return build_spec(load_config(config), **flags)
    except MlclusterError as exc:
        raise UsageError(exc.message, exc.hint) from None


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise MlclusterError(f"{question} needs a confirmation and nothing can answer it here", "pass --yes")
    if not typer.confirm(question):
        raise MlclusterError("nothing was done", exit_code=1)


@app.command()
def up(
    name: NameForUp = None,
    provider: Annotated[Optional[str], typer.Option(help="local, ssh or aws.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=1, max=64,
                                                   help="Worker machines (default 4).")] = None,
    containers_per_worker: Annotated[Optional[int], typer.Option("--containers-per-worker", "-m", min=1, max=16,
                                                                 help="Containers per worker (default 2).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Hub id, local model directory, or overhead-test.")] = None,
    backend: Annotated[Optional[str], typer.Option(help="torch, onnx or onnx-int8 (default onnx: "
                                                        "ONNX Runtime fp32).")] = None,
    batch_max: Annotated[Optional[int], typer.Option(help="Requests per forward pass (default: "
                                                          "the backend's).")] = None,
    batch_wait_ms: Annotated[Optional[float], typer.Option(help="How long a batch waits to fill (default: "
                                                                "the backend's).")] = None,
    runtime: Annotated[Optional[str], typer.Option(help="process or docker.")] = None,
    port: Annotated[Optional[int], typer.Option(min=1, max=65535, help="The orchestrator's port (local provider; "
                                                                       "default: a free one).")] = None,
    queue_limit: Annotated[Optional[int], typer.Option(min=0, help="Requests that may wait for a container "
                                                                   "(default 100).")] = None,
    service_ms: Annotated[Optional[float], typer.Option(min=0, help="With --model overhead-test: "
                                                                    "the fixed answer time.")] = None,
    region: Annotated[Optional[str], typer.Option(help="AWS region.")] = None,
    instance_type: Annotated[Optional[str], typer.Option(help="EC2 instance type (default m4.large).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="AWS profile from your AWS config.")] = None,
    spot: Annotated[Optional[bool], typer.Option("--spot/--no-spot", help="AWS: workers as spot instances (the "
                                                                          "orchestrator stays on-demand).")] = None,
    spot_fallback: Annotated[Optional[str], typer.Option(callback=checked_fallback,
                                                         help="AWS: when spot is refused, "
                                                              "on-demand (default) or never (stop).")] = None,
    min_containers: Annotated[Optional[int], typer.Option(min=1, help="Autoscaling: never fewer containers (default 1; "
                                                                      "needs --max-containers).")] = None,
    max_containers: Annotated[Optional[int], typer.Option(min=1, help="Autoscaling: never more containers "
                                                                      "(the hard cap; turns autoscaling on).")] = None,
    target_ongoing: Annotated[Optional[float], typer.Option(min=0, help="Autoscaling: requests in flight + queued "
                                                                        "per container aimed for "
                                                                        "(default: its capacity).")] = None,
    upscale_delay: Annotated[Optional[float], typer.Option(min=0, help="Autoscaling: seconds a need for more must last "
                                                                       "(default 30).")] = None,
    downscale_delay: Annotated[Optional[float], typer.Option(min=0, help="Autoscaling: seconds a need for fewer "
                                                                         "must last (default 600).")] = None,
    autostop: Annotated[Optional[str], typer.Option(help='Stop the cluster after serving nothing this long '
                                                         '("30m").')] = None,
    max_lifetime: Annotated[Optional[str], typer.Option(help='Stop the cluster this long after it started '
                                                             '("8h").')] = None,
    tls: Annotated[bool, typer.Option("--tls", help="Serve HTTPS with a self-signed certificate made for the cluster "
                                                    "(clients pin it).")] = False,
    tls_cert: Annotated[Optional[Path], typer.Option(help="Serve HTTPS with this PEM certificate "
                                                          "(with --tls-key).")] = None,
    tls_key: Annotated[Optional[Path], typer.Option(help="The PEM key of --tls-cert.")] = None,
    api_keys: Annotated[bool, typer.Option("--api-keys",
                                           help="Require API keys; makes the first one (shown once).")] = False,
    max_unavailable: Annotated[Optional[int], typer.Option(min=1, help="A roll replaces this many containers at a time "
                                                                       "(default: one worker's).")] = None,
    canary: Annotated[Optional[float], typer.Option(min=0, max=100, help="A roll stops with this % of requests "
                                                                         "on the new version.")] = None,
    promote: Annotated[bool, typer.Option("--promote", help="Finish the roll of the canary in place.")] = False,
    config: ConfigFile = None,
    as_json: JsonFlag = False,
    yes: Yes = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the libraries' warnings and progress bars "
                                          "(hidden by default).")] = False,
):
    """Create the machines, start the orchestrator and the worker containers, register them."""
    quiet_libraries(verbose)
    asked = security.SecurityRequest(tls=tls, tls_cert=tls_cert, tls_key=tls_key, api_keys=api_keys)
    spec = _spec(config, name=name, provider=provider, workers=workers, containers_per_worker=containers_per_worker,
                 model=model, backend=backend, batch_max=batch_max, batch_wait_ms=batch_wait_ms,
                 runtime=runtime, queue_limit=queue_limit, service_ms=service_ms, autostop=autostop,
                 max_lifetime=max_lifetime, min_containers=min_containers, max_containers=max_containers,
                 target_ongoing=target_ongoing, upscale_delay=upscale_delay, downscale_delay=downscale_delay,
                 local_port=port, aws_region=region, aws_instance_type=instance_type, aws_profile=profile,
                 aws_spot=spot, aws_spot_fallback=spot_fallback)
    if (spot is not None or spot_fallback) and spec.provider != "aws":
        raise UsageError(f"--spot and --spot-fallback are for the aws provider, not {spec.provider}",
                         "add --provider aws, or leave them out")
    if spec.provider == "local" and spec.runtime != "docker":  # the services run from this environment
        require_model_stack("serving on this machine")
    cost_plan = get_provider(spec.provider).plan(spec)
    if cost_plan is not None:
        err.print(escape(plan_text(cost_plan)))
        confirm(f"create these {spec.provider.upper()} resources for cluster {spec.name!r}?", yes)
    made = []
    if canary is not None and not 0 < canary < 100:
        raise UsageError("--canary is a percentage between 0 and 100 (exclusive)")
    state = cluster.up(spec, ui, prepare=lambda s: made.extend(filter(None, [security.prepare(s, asked, [])])),
                       roll=RollOptions(max_unavailable=max_unavailable, canary=canary, promote=promote))
    warning = security.exposure_warning(state.provider, state.orchestrator_url,
                                        str(spec.provider_options.get("aws", {}).get("allowed_cidr", "")),
                                        bool(state.tls_fingerprint), bool(state.api_keys))
    if warning:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    if as_json:
        print(json.dumps({"name": state.name, "provider": state.provider, "orchestrator_url": state.orchestrator_url,
                          "containers": [dataclasses.asdict(c) for c in state.containers],
                          "tls_fingerprint": state.tls_fingerprint or None,
                          **({"api_key": {"id": made[0].id, "key": made[0].key}} if made else {})}, indent=2))
        return
    out.print(cluster_table(state))
    if made:
        out.print(f"API key {made[0].id} (shown once; `mlcluster keys create` makes more): {made[0].key}",
                  soft_wrap=True)
    capacity = state.containers[0].capacity if state.containers else 1
    out.print(f"serving {state.spec.model} with the {state.spec.backend} backend "
              f"({capacity} request(s) per container at once)")
    out.print(f"orchestrator: {state.orchestrator_url}  (send requests to {state.orchestrator_url}/new_request)")
    trial = canary_in_place(state.name)
    if trial is not None:
        out.print(f"canary: {trial.percent:g} % of requests go to {trial.spec.model} (version {trial.version}); "
                  f"`up --promote` finishes the roll, `up` with the current model removes it")


@app.command()
def status(
    name: Name = "default",
    watch: Annotated[bool, typer.Option("--watch", help="Refresh live until Ctrl-C.")] = False,
    as_json: JsonFlag = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes with --watch.")] = 1.0,
):
    """Every container with its status, the queue and totals."""
    if as_json:
        print(json.dumps(cluster.status(name), indent=2))
        return
    if not watch:
        out.print(status_table(cluster.status(name)))
        return
    try:
        with Live(status_table(cluster.status(name)), console=out, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                try:
                    live.update(status_table(cluster.status(name)))
                except MlclusterError as exc:
                    live.update(f"[red]{exc}[/]")
    except KeyboardInterrupt:
        pass


@app.command()
def down(
    name: Name = "default",
    provider: Annotated[Optional[str], typer.Option(help="For a cluster whose state is lost: where to look.")] = None,
    region: Annotated[Optional[str], typer.Option(help="AWS region (aws, state lost).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="AWS profile (aws, state lost).")] = None,
    config: ConfigFile = None,
    purge: Annotated[bool, typer.Option("--purge", help="Forget the cluster even if some of it cannot be reached "
                                        "or removed (says what may be left, and where).")] = False,
    as_json: JsonFlag = False,
    yes: Yes = False,
):
    """Remove everything the cluster started, and its state; its logs are kept in the archive."""
    spec = (_spec(config, name=name, provider=provider, aws_region=region, aws_profile=profile)
            if provider or config else None)
    confirm(cluster.removal_question(name, spec), yes)
    report = cluster.down(name, ui, spec, purge=purge)
    if as_json:
        print(json.dumps({"name": name, "left": report.left, "forgotten": report.forgotten, "where": report.where,
                          "archive": str(report.archive) if report.archive else None}, indent=2))
    if report.archive:
        err.print(f"logs kept in {escape(str(report.archive))}")
    for line in report.left:
        err.print(f"[red]left:[/] {escape(line)}")
    if report.left and not purge:
        raise MlclusterError(f"{len(report.left)} thing(s) of cluster {name!r} could not be removed",
                             f"run `mlcluster down --name {name}` again once its hosts answer; "
                             f"`--purge` forgets it anyway")
    if report.left:
        ui.warn(f"cluster {name!r} is forgotten, but what is listed above may still run or exist: "
                f"{report.where}. Remove it by hand there.")
    else:
        err.print(f"cluster {name!r} is down; nothing of it is left")


@app.command()
def logs(
    container: Annotated[Optional[str], typer.Argument(help="A container id; "
                                                            "the orchestrator's log when left out.")] = None,
    name: Name = "default",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    tail: Annotated[int, typer.Option(min=0, help="Lines from the end (0: all).")] = 100,
):
    """The orchestrator's or one container's log."""
    try:
        for line in cluster.logs(name, container, follow, tail):
            sys.stdout.write(line if line.endswith("\n") else line + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@app.command("list")
def list_clusters(as_json: JsonFlag = False):
    """The clusters known in the state directory."""
    rows = []
    for cluster_name in known_clusters():
        try:
            state = ClusterState.load(cluster_name)
            rows.append({"name": cluster_name, "provider": state.provider, "containers": len(state.containers),
                         "orchestrator_url": state.orchestrator_url})
        except MlclusterError as exc:  # one unreadable state must not hide the others
            rows.append({"name": cluster_name, "provider": "?", "containers": 0, "orchestrator_url": "",
                         "error": exc.message})
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        err.print(f"no clusters are known in {home()}; `mlcluster up` creates one")
    else:
        out.print(cluster_list_table(rows))


@app.command("make-model")
def make_model(
    out_dir: Annotated[Path, typer.Argument(help="Where to write the model directory.")],
    size: Annotated[str, typer.Option(help="base (distilbert-base-uncased's shape) or tiny (tests).")] = "base",
):
    """Write a DistilBERT classifier with RANDOM weights, for machines without the hub."""
    require_model_stack("make-model")
    if size not in ("base", "tiny"):
        raise UsageError("--size must be base or tiny")
    with ui.step(f"writing a {size} DistilBERT classifier"):
        path = worker_code.make_model(out_dir, size)
    out.print(str(path))
    err.print(f"[bold red]{worker_code.random_weights_warning()}[/]")


@app.command()
def check(
    provider: Annotated[Optional[str], typer.Option(help="Check only this provider: local, ssh or aws.")] = None,
    name: NameForUp = None,
    config: ConfigFile = None,
    as_json: JsonFlag = False,
):
    """Which providers are ready for `up` (Docker, SSH hosts, AWS credentials and quota, the model), and what to do
    next. Exit 1 when the provider asked for with --provider is not ready."""
    from .check import PROVIDERS, check_providers, readiness_table
    if provider is not None and provider not in PROVIDERS:
        raise UsageError(f"unknown provider {provider!r}", "choose local, ssh or aws")
    report = check_providers(_spec(config, name=name), [provider] if provider else PROVIDERS)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        out.print(readiness_table(report))
    if provider is not None and not report.ready(provider):
        raise typer.Exit(1)


@app.command()
def version():
    """Print mlcluster's version."""
    out.print(__version__)


app.add_typer(bench_app, name="bench")
app.add_typer(keys_app, name="keys")
app.command()(events)


def main() -> None:
    quiet_libraries()
    try:
        app()
    except MlclusterError as exc:
        if os.environ.get("MLCLUSTER_DEBUG"):
            raise
        # Messages are plain text: `[aws]` in a hint is a table's name, not markup.
        err.print(f"[bold red]error:[/] {escape(exc.message)}")
        if exc.hint:
            err.print(f"hint: {escape(exc.hint)}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
