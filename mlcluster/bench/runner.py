"""A benchmark run: warm-up, then one measurement per step (one step unless
it is a sweep), each summarised, and the knee of a sweep. Ctrl-C ends the run
cleanly: nothing new is sent, what is in flight is waited for briefly, and
everything measured so far is kept."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ..errors import MlclusterError
from .load import LoadRun, LoadStep, Target, start_run
from .stats import Recorder, RequestRecord, StepSummary, Summary, summarise
from .sweep import Settling, StepPolicy, find_knee
from .wire import now_ns

DEFAULT_DURATION_S = 10.0
POLL_S = 0.1       # the main thread's wake-ups during a run that it may have to stop (a sweep step)...
PROGRESS_S = 0.5   # ...and during one that ends by itself: only the progress bar to move
RENAME_S = 1.0     # how often the progress text is rewritten


@dataclass
class BenchConfig:
    """What to measure. Closed loop unless `rate` (or `rate_sweep`) is set."""
    concurrency: int = 15
    rate: Optional[float] = None
    arrivals: str = "constant"
    requests: Optional[int] = None
    duration_s: Optional[float] = None
    sweep: Optional[list[int]] = None          # concurrency per step
    rate_sweep: Optional[list[float]] = None   # rate per step
    warmup: Optional[int] = None               # requests before each step, not counted
    knee_factor: float = 1.5
    policy: StepPolicy = field(default_factory=StepPolicy)
    grace_s: float = 10.0                      # how long Ctrl-C waits for requests in flight
    seed: Optional[int] = None

    @property
    def mode(self) -> str:
        return "open" if (self.rate is not None or self.rate_sweep) else "closed"

    @property
    def is_sweep(self) -> bool:
        return bool(self.sweep or self.rate_sweep)

    def validate(self) -> "BenchConfig":
        if self.requests is not None and self.duration_s is not None:
            raise MlclusterError("give --requests or --duration, not both")
        if self.sweep and self.rate_sweep:
            raise MlclusterError("give --sweep (concurrency) or --rate-sweep, not both")
        if self.sweep and self.rate is not None:
            raise MlclusterError("--sweep varies the concurrency of a closed loop; use --rate-sweep for rates")
        if self.rate_sweep and self.rate is not None:
            raise MlclusterError("give --rate or --rate-sweep, not both")
        if self.arrivals not in ("constant", "poisson"):
            raise MlclusterError(f"unknown --arrivals {self.arrivals!r}", "choose constant or poisson")
        for option, value in (("--concurrency", self.concurrency), ("--requests", self.requests),
                              ("--duration", self.duration_s), ("--rate", self.rate)):
            if value is not None and value <= 0:
                raise MlclusterError(f"{option} must be a positive number")
        if self.warmup is not None and self.warmup < 0:
            raise MlclusterError("--warmup cannot be negative")
        if self.concurrency > 4096 or max(self.sweep or [0]) > 4096:
            raise MlclusterError("a concurrency above 4096 is more connections than this client should open")
        return self

    def plans(self) -> list[LoadStep]:
        """One plan per measurement step."""
        requests, duration = self.requests, self.duration_s
        if not self.is_sweep and requests is None and duration is None:
            duration = DEFAULT_DURATION_S
        common = dict(arrivals=self.arrivals, requests=requests, duration_s=duration, seed=self.seed)
        if self.sweep:
            return [LoadStep(concurrency=c, step=i, **common) for i, c in enumerate(self.sweep)]
        if self.rate_sweep:
            return [LoadStep(concurrency=self.open_loop_slots(r), rate=r, step=i, **common)
                    for i, r in enumerate(self.rate_sweep)]
        if self.rate is not None:
            return [LoadStep(concurrency=self.open_loop_slots(self.rate), rate=self.rate, **common)]
        return [LoadStep(concurrency=self.concurrency, **common)]

    def open_loop_slots(self, rate: float) -> int:
        """Requests an open loop may have in flight (one connection each): enough
        for 4 s of backlog at `rate`, so the client keeps sending on time while
        the cluster falls behind; the rest wait in the client and count it."""
        return int(min(2000, max(self.concurrency, 64, 4 * rate)))

    def warmup_for(self, plan: LoadStep) -> int:
        if self.warmup is not None:
            return self.warmup
        return max(5, int(plan.rate) if plan.open_loop else plan.concurrency)


@dataclass
class BenchResult:
    config: BenchConfig
    summary: Summary               # the whole run
    steps: list[StepSummary]       # one per step
    knee: Optional[int]            # index into steps (sweeps only)
    records: list[RequestRecord]
    interrupted: bool
    started_at: float              # wall clock (time.time())
    model: Optional[str]
    unanswered: int                # sent but not answered when the run stopped
    window_s: tuple[float, float] = (0.0, 0.0)  # the measurement's start and end (seconds from the origin)
    origin_ns: int = 0             # time zero of the records' times (`time.perf_counter_ns()` of this process)


def run_bench(config: BenchConfig, target: Target, bodies: Sequence[bytes], ui=None) -> BenchResult:
    """Run every step of `config` against `target`; see the module docstring."""
    if ui is None:
        from ..ui import QuietUI  # here, not above: a load agent runs this without rich (it passes its own)
        ui = QuietUI()
    recorder = Recorder()
    steps: list[StepSummary] = []
    origin, started_at = now_ns(), time.time()
    interrupted, unanswered = False, 0
    window = [None, 0.0]  # the first step's start, the last answer's time
    for plan in config.plans():
        if _warm_up(config, plan, target, bodies, origin, ui) == "interrupted":
            interrupted = True
            break
        run = start_run(target, bodies, plan, recorder, origin)
        why = _measure(config, plan, run, recorder, ui)
        _check(run)
        step_records = recorder.records(plan.step)
        unanswered += run.sent - len(step_records)
        window = [run.start_s if window[0] is None else window[0], max(window[1], run.end_s)]
        steps.append(StepSummary(plan.step, None if plan.open_loop else plan.concurrency, plan.rate, why,
                                 summarise(step_records, run.start_s, run.end_s, offered_rps=plan.rate)))
        if why == "interrupted":
            interrupted = True
            break
    offered = config.rate if not config.is_sweep else None
    if not config.is_sweep and len(steps) == 1:
        overall = steps[0].summary  # the same records, window and rate: not summarised twice
    else:
        overall = summarise(recorder.records(), window[0] or 0.0, window[1], offered_rps=offered)
    knee = find_knee(steps, config.knee_factor) if config.is_sweep else None
    return BenchResult(config=config, summary=overall, steps=steps, knee=knee, records=recorder.records(),
                       interrupted=interrupted, started_at=started_at, model=recorder.model, unanswered=unanswered,
                       window_s=(window[0] or 0.0, window[1]), origin_ns=origin)


def _warm_up(config: BenchConfig, plan: LoadStep, target: Target, bodies: Sequence[bytes], origin: int,
             ui) -> str:
    """The step's own load, for `warmup_for(plan)` requests, recorded nowhere."""
    warm = LoadStep(concurrency=plan.concurrency, rate=plan.rate, arrivals=plan.arrivals,
                requests=config.warmup_for(plan), step=-1, seed=plan.seed)
    if not warm.requests:
        return "done"
    run = start_run(target, bodies, warm, Recorder(), origin)
    with ui.step(f"warm-up {_label(plan)}", total=warm.requests) as bar:
        why = _drive(run, bar, None, config.grace_s, count=lambda: len(run.recorder))
    _check(run)
    return why


def _check(run: LoadRun) -> None:
    if run.error is not None:
        raise MlclusterError(f"the load generator failed: {run.error!r}")


def _measure(config: BenchConfig, plan: LoadStep, run: LoadRun, recorder: Recorder, ui) -> str:
    label, before = _label(plan), len(recorder)
    with ui.step(f"measuring {label}", total=plan.requests) as bar:
        return _drive(run, bar, _step_limit(config, plan, run, recorder), config.grace_s,
                      count=lambda: len(recorder) - before,
                      describe=None if plan.requests else lambda n: f"measuring {label}: {n} answered")


def _label(plan: LoadStep) -> str:
    return f"at {plan.rate:g} req/s ({plan.arrivals})" if plan.open_loop else f"with concurrency {plan.concurrency}"


def _step_limit(config: BenchConfig, plan: LoadStep, run: LoadRun,
                recorder: Recorder) -> Optional[Callable[[], Optional[str]]]:
    """For a sweep step with no fixed size: stop when stable or at the time
    limit. None for a step that ends by itself."""
    if plan.requests is not None or plan.duration_s is not None:
        return None
    policy = config.policy
    settling, position = Settling(policy, run.start_s), 0

    def check() -> Optional[str]:
        nonlocal position
        now = run.now()
        if now - run.start_s >= policy.time_limit_s:
            return "time limit"
        # Only the answers new since the last poll: this runs 10 times a second
        # during the measurement, on CPU the cluster under test would otherwise have.
        times, position = recorder.done_times_since(plan.step, position)
        settling.add(times)
        if settling.settled(now):
            return "stable"
        return None
    return check


def _drive(run: LoadRun, bar, should_stop: Optional[Callable[[], Optional[str]]], grace_s: float,
           count: Optional[Callable[[], int]] = None, describe: Optional[Callable[[int], str]] = None) -> str:
    """Wait for `run`, moving the progress bar; returns why it ended:
    done | stable | time limit | interrupted.

    This thread shares the GIL and the machine with the load generator while
    the cluster is measured, so it does little: every POLL_S it advances the
    bar and asks `should_stop` (None: the run ends by itself, and the bar
    moves every PROGRESS_S); the description (a line printed, where no
    terminal shows a live bar) is renamed once a RENAME_S, and once more at
    the end so the last line holds the final count."""
    why, shown, named, renamed_at = "done", 0, 0, 0.0

    def show(final: bool) -> None:
        nonlocal shown, named, renamed_at
        done = count()
        bar.advance(done - shown)
        shown = done
        if describe is not None and done != named and (final or time.monotonic() - renamed_at >= RENAME_S):
            bar.update(describe(done))
            named, renamed_at = done, time.monotonic()

    try:
        while not run.join(POLL_S if should_stop else PROGRESS_S):  # wakes at once when the run ends
            if count is not None:
                show(final=False)
            reason = should_stop() if should_stop else None
            if reason and not run.stopped():
                why = reason
                run.stop()
        if count is not None:
            show(final=True)
    except KeyboardInterrupt:
        run.stop()
        why = "interrupted"
        try:
            run.join(grace_s)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting for what is in flight
    return why
