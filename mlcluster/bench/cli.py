"""`mlcluster bench` and `mlcluster bench compare`: parse, call the library,
hand the result to the report. Results go to stdout, progress to stderr."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import MlclusterError, UsageError
from ..ui import run_ui
from . import outcome as outcome_tables, report, search
from .capacity import SearchPolicy
from .cost import hourly_cost
from .load import random_bodies, text_bodies
from .measure import Measurer
from .remote import default_from, load_hosts
from .runner import BenchConfig
from .setup import access_of, describe_setup, fetch_status, resolve_url
from .slo import outcome, parse_slos
from .sweep import StepPolicy, parse_steps

SLO_MISSED = 3  # exit code: an objective was missed (--find-capacity: no rate met them all)

bench_app = typer.Typer(invoke_without_command=True, no_args_is_help=False, add_completion=False,
                        pretty_exceptions_enable=False,
                        help="Load-test a cluster through its orchestrator; `compare` saved runs.")


@bench_app.callback()
def bench(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Option("--name", "-n",
                                                help="The cluster's name (default: 'default').")] = None,
    url: Annotated[Optional[str], typer.Option(help="The orchestrator's URL, instead of a cluster name.")] = None,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency",
                                                       help="Closed loop: requests in flight (default 15).")] = None,
    requests: Annotated[Optional[int], typer.Option("--requests", help="Requests to measure (per sweep step).")] = None,
    duration: Annotated[Optional[float], typer.Option("--duration",
                                                      help="Seconds to measure (per sweep step); default 10.")] = None,
    rate: Annotated[Optional[float], typer.Option(help="Open loop: requests per second, sent on schedule "
                                                       "(--find-capacity: the first rate tried).")] = None,
    arrivals: Annotated[str, typer.Option(help="Open-loop arrivals: constant or poisson.")] = "constant",
    sweep: Annotated[Optional[str], typer.Option(help="Concurrency steps, like 1,2,4,8.")] = None,
    rate_sweep: Annotated[Optional[str], typer.Option(help="Open-loop rate steps, like 10,20,40.")] = None,
    step_time: Annotated[float, typer.Option(help="A sweep step's time limit "
                                                  "(s) when it does not settle sooner.")] = 10.0,
    knee_factor: Annotated[float, typer.Option(help="The knee: "
                                                    "last step with p99 within this factor of the first's.")] = 1.5,
    warmup: Annotated[Optional[int], typer.Option(help="Uncounted requests before each step (default: "
                                                       "one per slot).")] = None,
    texts: Annotated[Optional[Path], typer.Option(help="A file with one text a line to send (default: "
                                                       "random text).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for one answer.")] = 60.0,
    slo: Annotated[Optional[list[str]], typer.Option("--slo", help="An objective, like 'p99<=200ms' or 'errors<=0.1%' "
                                                                   "(repeatable); exit 3 when one is missed.")] = None,
    find_capacity: Annotated[bool, typer.Option("--find-capacity",
                                                help="Search open-loop rates for the highest that meets every --slo; "
                                                     "its $ per million requests.")] = False,
    precision: Annotated[float, typer.Option(help="--find-capacity: "
                                                  "stop when the bounds are within this fraction.")] = 0.05,
    load_from: Annotated[Optional[str], typer.Option("--from", help="Where the load runs: orchestrator, here, "
                                                                    "or host names (h1,h2). Default: orchestrator for "
                                                                    "ssh and aws clusters, here otherwise.")] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Write the result and its setup "
                                                                     "as JSON ('-': stdout).")] = None,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Write one row per request as CSV.")] = None,
    plot_file: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG with four panels.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for random text and Poisson arrivals.", hidden=True)] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="MLCLUSTER_API_KEY", show_envvar=True,
                                                   help="An API key of the cluster (when it requires keys).")] = None,
) -> None:
    """Closed loop (--concurrency), open loop (--rate) or a sweep of either,
    through the orchestrator's /new_request; verdicts against --slo; --find-capacity."""
    if ctx.invoked_subcommand is not None:
        return
    if concurrency is not None and (rate is not None or rate_sweep is not None):
        raise UsageError("--concurrency is for a closed loop; --rate and --rate-sweep send on a schedule",
                         "give one of them")
    slos = _objectives(slo or [], find_capacity, precision,
                       fixed_load=bool(concurrency or sweep or rate_sweep or requests or duration))
    try:
        config = BenchConfig(
            concurrency=concurrency or 15, rate=None if find_capacity else rate, arrivals=arrivals, requests=requests,
            duration_s=duration, sweep=_steps(sweep, int, "--sweep"),
            rate_sweep=_steps(rate_sweep, float, "--rate-sweep"), warmup=warmup, knee_factor=knee_factor,
            policy=StepPolicy(time_limit_s=step_time), seed=seed).validate()
        if rate is not None and rate <= 0:
            raise MlclusterError("--rate must be a positive number")
    except MlclusterError as exc:  # every check of the options is a usage error
        raise UsageError(exc.message, exc.hint) from None
    if step_time <= 0 or knee_factor < 1 or timeout <= 0:
        raise UsageError("--step-time and --timeout must be positive and --knee-factor at least 1")
    if plot_file is not None and importlib.util.find_spec("matplotlib") is None:
        # one sentence: exit 2
        raise UsageError("--plot needs matplotlib, which is not installed here", "pip install 'mlcluster[plot]'")
    bodies = text_bodies(texts) if texts else random_bodies(seed=seed)
    for path in (None if str(json_file) == "-" else json_file, csv_file, plot_file):
        if path is not None and not path.parent.is_dir():
            raise MlclusterError(f"cannot write {path}: the folder {path.parent} does not exist")
    target_url, state = resolve_url(name, url)
    hosts = load_hosts(load_from or default_from(state), state, target_url)
    status = fetch_status(target_url, state)
    ui = run_ui()
    if not status["containers"]:
        ui.warn("the orchestrator has no containers registered: every request will fail")
    measure = Measurer(target_url, hosts, bodies, timeout, ui, access_of(state, api_key or ""))
    capacity = None
    if find_capacity:
        hourly, note = hourly_cost(state)
        policy = SearchPolicy(start_rps=rate or SearchPolicy.start_rps, precision=precision)
        capacity = search.find_capacity(slos, lambda r: measure(search.step_config(config, r)), policy,
                                        hourly, note, ui)
        result = measure.last  # the last step: the report's setup and CSV (each step's verdicts are in `capacity`)
    else:
        result = measure(config)
    texts_note = f"{texts} ({len(bodies)} texts)" if texts else "random lowercase text, 50 characters"
    setup = {**describe_setup(target_url, state, status, result, texts_note), "load_from": measure.origins()}
    _report(result, setup, capacity, slos, ui, json_file, csv_file, plot_file)


def _objectives(texts: list[str], find_capacity: bool, precision: float, fixed_load: bool) -> list:
    """The --slo objectives, checked with --find-capacity's options (UsageError on any misfit)."""
    try:
        slos = parse_slos(texts)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if find_capacity and not slos:
        raise UsageError("--find-capacity needs at least one --slo to search against", "add --slo 'p99<=200ms'")
    if find_capacity and fixed_load:
        raise UsageError("--find-capacity chooses its own rates and holds each until stable",
                         "leave out --concurrency, --sweep, --rate-sweep, --requests and --duration")
    if not 0 < precision < 1:
        raise UsageError("--precision is a fraction between 0 and 1, like 0.05")
    return slos


def _report(result, setup: dict, capacity, slos: list, ui, json_file, csv_file, plot_file) -> None:
    """Print and write the run; exit 130 when interrupted, 3 when an objective was missed."""
    to_stdout = str(json_file) == "-"
    run = report.report_of(result, setup)
    run.capacity = capacity
    if slos and capacity is None:
        run.slo = outcome(slos, result.records, result.summary.duration_s, result.unanswered)
    report.print_result(run, ui.console if to_stdout else ui.out)  # `--json -`: stdout holds only the JSON
    if to_stdout:
        print(json.dumps(run.to_json(), indent=2))
    _write_outputs(result, run, None if to_stdout else json_file, csv_file, plot_file, ui)
    if capacity is None:
        _warn_client_behind(result, run, ui)
    if result.interrupted:
        ui.warn("interrupted: the figures above cover what was measured until then")
        raise typer.Exit(130)
    if (capacity is not None and capacity.capacity_rps is None) or (capacity is None and run.slo and not run.slo.held):
        raise typer.Exit(SLO_MISSED)


def _warn_client_behind(result, run: report.Report, ui) -> None:
    for summary in [step.summary for step in run.steps] or [run.summary]:
        offered, sent = summary.offered_rps, summary.sent_rps
        if offered and sent and sent < 0.95 * offered and not result.interrupted:
            ui.warn(f"the client sent {sent:,.0f} req/s of the {offered:,.0f} offered: it could not keep up, "
                    "so the figures at that rate are not the cluster's alone")


def _steps(text: Optional[str], kind: type, option: str) -> Optional[list]:
    if text is None:
        return None
    try:
        return parse_steps(text, kind, option)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _write_outputs(result, run: report.Report, json_file, csv_file, plot_file, ui) -> None:
    if json_file:
        report.write_json(run.to_json(), json_file)
        ui.info(f"wrote {json_file}")
    if csv_file:
        report.write_csv(result, csv_file)
        ui.info(f"wrote {csv_file} ({len(result.records)} rows)")
    if plot_file:
        from .plot import save_plot  # matplotlib is slow to import; only when asked
        save_plot(result, run, plot_file)
        ui.info(f"wrote {plot_file}")


@bench_app.command()
def compare(
    files: Annotated[list[Path], typer.Argument(help="Results from `bench --json`: two runs, "
                                                     "or any number of --find-capacity runs.")],
) -> None:
    """Saved runs side by side: two runs with the ratio B / A of each figure, or
    the capacities and $ per million requests of --find-capacity runs."""
    if len(files) < 2:
        raise UsageError("compare needs at least two saved results")
    loaded = [(path, outcome_tables.load_json(path)) for path in files]
    if all(data.get("capacity") for _, data in loaded):
        rows = [(str(path), data, outcome_tables.capacity_of(data, path)) for path, data in loaded]
        run_ui().out.print(outcome_tables.compare_capacities(rows))
        return
    if len(files) != 2:
        raise UsageError("compare takes two runs, or any number of --find-capacity runs")
    a, b = files
    table = report.compare_table(report.load_result(a), report.load_result(b), str(a), str(b))
    run_ui().out.print(table)
