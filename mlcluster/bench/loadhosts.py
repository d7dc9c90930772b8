"""`bench --from H1,H2`: the load sent from one or more load hosts, each
running `agent` (a subprocess here, or over SSH: `remote`), merged into one
`BenchResult` on this machine's clock (`merge`).

Each measurement step is one job per host, started together: the hosts warm
up, measure their share (the concurrency or the rate split between them) and
send every record back; the next step starts when all have answered. A sweep
step with no fixed size ends, on each host, when its own share is stable.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional, Protocol, Sequence

import orjson

from ..errors import MlclusterError
from ..ui import QuietUI
from .agent import config_to_json, record_of
from .merge import ClockSync, HostRecords, merge, split_concurrency, split_rate, split_requests
from .runner import BenchConfig, BenchResult
from .stats import StepSummary, summarise
from .sweep import find_knee
from .wire import Access, now_ns

READY_S = 120.0  # an agent's start: connecting, uploading, importing (the first time on a host)


class AgentProcess(Protocol):
    """A running agent: its stdin and stdout, and what it said on stderr."""
    stdin: BinaryIO
    stdout: BinaryIO

    def error_text(self) -> str: ...

    def close(self) -> None: ...


@dataclass
class LoadHost:
    """Where load can come from: its name, the orchestrator's URL as seen from
    there, and how to start an agent there."""
    name: str
    url: str
    start: Callable[[], AgentProcess]
    engine: str = ""   # what its agent said it runs closed loops on (c | python), once started


class LocalAgent:
    """An agent as a subprocess of this one."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "mlcluster.bench.agent"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stdin, self.stdout = self.process.stdin, self.process.stdout

    def error_text(self) -> str:
        self.close()
        return self.process.stderr.read().decode(errors="replace")

    def close(self) -> None:
        for stream in (self.stdin, self.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def local_host(url: str, name: str = "here") -> LoadHost:
    return LoadHost(name, url, LocalAgent)


def host_configs(config: BenchConfig, hosts: int) -> list[list[BenchConfig]]:
    """For each step of `config`, one single-step config per host holding its share."""
    per_step = []
    for plan in config.plans():
        sized = plan.requests is not None or plan.duration_s is not None
        requests = split_requests(plan.requests, hosts)
        if plan.open_loop:
            shares = split_rate(plan.rate, hosts)
            loads = [dict(rate=r) if sized else dict(rate_sweep=[r]) for r in shares]  # slots follow the share
        else:
            shares = split_concurrency(plan.concurrency, hosts)
            loads = [dict(concurrency=c) if sized else dict(sweep=[c]) for c in shares]
        common = dict(rate=None, sweep=None, rate_sweep=None, concurrency=15, duration_s=plan.duration_s,
                      warmup=None if config.warmup is None else -(-config.warmup // hosts))
        per_step.append([dataclasses.replace(config, **{**common, **loads[i]}, requests=requests[i])
                         for i in range(hosts)])
    return per_step


class Conversation:
    """One host's agent for one step: start and send the job, `go`, the result."""

    def __init__(self, host: LoadHost, config: BenchConfig, bodies: Sequence[bytes], timeout_s: float,
                 access: Access):
        self.host, self.agent = host, None
        # the job goes over the SSH channel only (the API key with it), never to a file or a log
        self.job = {"url": host.url, "timeout_s": timeout_s, "config": config_to_json(config),
                    "bodies": [b.decode() for b in bodies], "access": dataclasses.asdict(access)}

    def _read(self) -> dict:
        line = self.agent.stdout.readline()
        if not line:
            tail = self.agent.error_text().strip().splitlines()[-3:]
            raise MlclusterError(f"the load agent on {self.host.name} stopped: " + (" / ".join(tail) or "no output"),
                                 "run with --from here to load from this machine instead")
        return orjson.loads(line)

    def ready(self) -> None:
        self.agent = self.host.start()
        self.agent.stdin.write(orjson.dumps(self.job) + b"\n")
        self.agent.stdin.flush()
        self.host.engine = self._read()["engine"]

    def go(self) -> ClockSync:
        sent = now_ns()
        self.agent.stdin.write(b"go\n")
        self.agent.stdin.flush()
        host_ns = self._read()["go_ns"]
        return ClockSync(sent, now_ns(), host_ns)

    def result(self, sync: ClockSync) -> HostRecords:
        data = self._read()["result"]
        self.agent.close()
        return HostRecords(self.host.name, data["origin_ns"], [record_of(r) for r in data["records"]],
                           data["window_s"][0], data["window_s"][1], data["unanswered"], sync, data["model"],
                           data["interrupted"], self.host.engine, data["stopped_by"])

    def stop(self) -> None:
        """Ask the agent to stop sending (it still reports what it measured)."""
        try:
            self.agent.stdin.write(b"stop\n")
            self.agent.stdin.flush()
        except (OSError, ValueError):
            pass  # it has ended already

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()


def run_from_hosts(config: BenchConfig, hosts: Sequence[LoadHost], bodies: Sequence[bytes], timeout_s: float,
                   ui=None, access: Access = Access()) -> BenchResult:
    """`config` with its load split over `hosts`; the result as `run_bench`'s."""
    ui = ui or QuietUI()
    origin, started_at = now_ns(), time.time()
    steps, records, unanswered, interrupted, model = [], [], 0, False, None
    window = [None, 0.0]
    for i, (plan, configs) in enumerate(zip(config.plans(), host_configs(config, len(hosts)))):
        talks = [Conversation(h, c, bodies, timeout_s, access) for h, c in zip(hosts, configs)]
        pool = ThreadPoolExecutor(max_workers=len(talks))
        try:
            with ui.step(f"starting the load on {', '.join(h.name for h in hosts)}"):
                list(pool.map(lambda t: t.ready(), talks, timeout=READY_S))
            syncs = [t.go() for t in talks]  # one after the other, at once: the hosts start together
            futures = [pool.submit(t.result, sync) for t, sync in zip(talks, syncs)]
            with ui.step(f"measuring step {i + 1} from {len(hosts)} load host(s)"):
                try:
                    parts = _results(futures, _bound(config, plan, timeout_s))
                except KeyboardInterrupt:  # stop every host; keep what they measured
                    for talk in talks:
                        talk.stop()
                    parts = _results(futures, config.grace_s + 10.0)
                    interrupted = True
        except FutureTimeout:
            raise MlclusterError(f"a load host did not answer in time ({', '.join(t.host.name for t in talks)})",
                                 "check the hosts with `mlcluster status`, or use --from here") from None
        finally:
            for talk in talks:  # closing unblocks any read still waiting
                talk.close()
            pool.shutdown(wait=False, cancel_futures=True)
        merged = merge(parts, origin)
        step_records = [dataclasses.replace(r, step=i) for r in merged.records]
        records += step_records
        unanswered += merged.unanswered
        model = model or merged.model
        window = [merged.start_s if window[0] is None else window[0], max(window[1], merged.end_s)]
        interrupted = interrupted or merged.interrupted
        why = "interrupted" if interrupted else _stopped_by(parts)
        steps.append(StepSummary(i, None if plan.open_loop else plan.concurrency, plan.rate, why,
                                 summarise(step_records, merged.start_s, merged.end_s, offered_rps=plan.rate)))
        if interrupted:
            break
    if len(steps) == 1 and not config.is_sweep:
        overall = steps[0].summary
    else:
        overall = summarise(records, window[0] or 0.0, window[1], offered_rps=None if config.is_sweep else config.rate)
    knee = find_knee(steps, config.knee_factor) if config.is_sweep else None
    return BenchResult(config=config, summary=overall, steps=steps, knee=knee, records=records,
                       interrupted=interrupted, started_at=started_at, model=model, unanswered=unanswered,
                       window_s=(window[0] or 0.0, window[1]), origin_ns=origin)


def _results(futures: list[Future], within_s: Optional[float]) -> list[HostRecords]:
    deadline = None if within_s is None else time.monotonic() + within_s
    return [f.result(None if deadline is None else max(0.0, deadline - time.monotonic())) for f in futures]


def _bound(config: BenchConfig, plan, timeout_s: float) -> Optional[float]:
    """How long a step's records may take to come back: its length, the last
    answer's time-out and a margin; None for a step of a number of requests."""
    if plan.duration_s is not None:
        return plan.duration_s + timeout_s + READY_S
    if plan.requests is None:  # held until stable, at most the step's time limit
        return config.policy.time_limit_s + timeout_s + READY_S
    return None


def _stopped_by(parts: Sequence[HostRecords]) -> str:
    """A step ended by the time limit on any host was not stable everywhere."""
    reasons = {p.stopped_by for p in parts}
    return next((r for r in ("time limit", "stable") if r in reasons), "done")

