"""The `mlcluster` command: thin commands over the library.

Exit codes: 0 ok, 1 a known error (one sentence, and a hint), 2 a usage
error, 130 interrupted. A traceback only with MLCLUSTER_DEBUG=1.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.live import Live

from . import __version__, cluster
from .bench.cli import bench_app
from .config import build_spec, load_config
from .errors import MlclusterError
from .output import cluster_table, plan_text, status_table
from .providers import get_provider
from .state import ClusterState, check_name, known_clusters
from .ui import run_ui

app = typer.Typer(help="Stand up, watch, load-test and tear down a transformer inference cluster.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
ui = run_ui()  # the one UI of this run
out, err = ui.out, ui.console

Name = Annotated[str, typer.Option("--name", "-n", help="The cluster's name.", callback=lambda v: check_name(v) if v else v)]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Answer yes to the confirmation.")]
NameForUp = Annotated[Optional[str], typer.Option("--name", "-n", help="The cluster's name (default: the config's, or 'default').")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", "-c", help="A TOML config file.")]


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
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", help="Worker machines (default 4).")] = None,
    containers_per_worker: Annotated[Optional[int], typer.Option("--containers-per-worker", "-m", help="Containers per worker (default 2).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Hub id, local model directory, or overhead-test.")] = None,
    runtime: Annotated[Optional[str], typer.Option(help="process or docker.")] = None,
    port: Annotated[Optional[int], typer.Option(help="The orchestrator's port (local provider; default: a free one).")] = None,
    queue_limit: Annotated[Optional[int], typer.Option(help="Requests that may wait for a container (default 100).")] = None,
    service_ms: Annotated[Optional[float], typer.Option(help="With --model overhead-test: the fixed answer time.")] = None,
    region: Annotated[Optional[str], typer.Option(help="AWS region.")] = None,
    instance_type: Annotated[Optional[str], typer.Option(help="EC2 instance type (default m4.large).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="AWS profile from your AWS config.")] = None,
    autostop: Annotated[Optional[str], typer.Option(help='Stop the cluster after serving nothing this long ("30m").')] = None,
    max_lifetime: Annotated[Optional[str], typer.Option(help='Stop the cluster this long after it started ("8h").')] = None,
    config: ConfigFile = None,
    yes: Yes = False,
):
    """Create the machines, start the orchestrator and the worker containers, register them."""
    file_config = load_config(config)
    spec = build_spec(file_config, name=name, provider=provider, workers=workers, containers_per_worker=containers_per_worker,
                      model=model, runtime=runtime, queue_limit=queue_limit, service_ms=service_ms,
                      autostop=autostop, max_lifetime=max_lifetime, local_port=port, aws_region=region, aws_instance_type=instance_type, aws_profile=profile)
    cost_plan = get_provider(spec.provider).plan(spec)
    if cost_plan is not None:
        err.print(plan_text(cost_plan))
        confirm(f"create these {spec.provider.upper()} resources for cluster {spec.name!r}?", yes)
    state = cluster.up(spec, ui)
    out.print(cluster_table(state))
    out.print(f"orchestrator: {state.orchestrator_url}  (send requests to {state.orchestrator_url}/new_request)")


@app.command()
def status(
    name: Name = "default",
    watch: Annotated[bool, typer.Option("--watch", help="Refresh live until Ctrl-C.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout, for scripts.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 1.0,
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
    yes: Yes = False,
):
    """Remove everything the cluster started, and its state."""
    confirm(f"remove cluster {name!r} and everything it started?", yes)
    spec = None
    if provider or config:
        spec = build_spec(load_config(config), name=name, provider=provider, aws_region=region, aws_profile=profile)
    left = cluster.down(name, ui, spec)
    if left:
        for line in left:
            err.print(f"[red]left:[/] {line}")
        raise MlclusterError(f"{len(left)} thing(s) of cluster {name!r} could not be removed",
                             f"run `mlcluster down --name {name}` again")
    err.print(f"cluster {name!r} is down; nothing of it is left")


@app.command()
def logs(
    container: Annotated[Optional[str], typer.Argument(help="A container id; the orchestrator's log when left out.")] = None,
    name: Name = "default",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    tail: Annotated[int, typer.Option(help="Lines from the end (0: all).")] = 100,
):
    """The orchestrator's or one container's log."""
    try:
        for line in cluster.logs(name, container, follow, tail):
            sys.stdout.write(line if line.endswith("\n") else line + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@app.command("list")
def list_clusters():
    """The clusters known in the state directory."""
    for cluster_name in known_clusters():
        state = ClusterState.load(cluster_name)
        out.print(f"{cluster_name}\t{state.provider}\t{state.orchestrator_url or '-'}")


@app.command("make-model")
def make_model(
    out_dir: Annotated[Path, typer.Argument(help="Where to write the model directory.")],
    size: Annotated[str, typer.Option(help="base (distilbert-base-uncased's shape) or tiny (tests).")] = "base",
):
    """Write a DistilBERT classifier with RANDOM weights, for machines without the hub."""
    from mlcluster_worker.make_model import WARNING, make_model as write
    if size not in ("base", "tiny"):
        raise MlclusterError("--size must be base or tiny")
    with ui.step(f"writing a {size} DistilBERT classifier"):
        path = write(out_dir, size)
    out.print(str(path))
    err.print(f"[bold red]{WARNING}[/]")


@app.command()
def version():
    """Print mlcluster's version."""
    out.print(__version__)


app.add_typer(bench_app, name="bench")


def main() -> None:
    try:
        app()
    except MlclusterError as exc:
        if os.environ.get("MLCLUSTER_DEBUG"):
            raise
        err.print(f"[bold red]error:[/] {exc.message}")
        if exc.hint:
            err.print(f"hint: {exc.hint}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
