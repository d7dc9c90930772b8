"""Work on many hosts at once: a thread per host, a progress line per host, a
result per host, and one error naming every failure after all have finished."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar

from rich.markup import escape

from ..errors import MlclusterError
from ..ui import QuietUI, Step

T = TypeVar("T")


@dataclass
class HostOutcome:
    """What `run_on_hosts` did on one host: `value` or `error`."""
    host: str
    value: Any = None
    error: Optional[BaseException] = None

    @property
    def ok(self) -> bool:
        return self.error is None


class HostsFailed(MlclusterError):
    """Some hosts failed; `outcomes` holds every host's outcome."""

    def __init__(self, what: str, outcomes: list[HostOutcome]):
        failed = [o for o in outcomes if not o.ok]
        lines = "\n".join(f"  {o.host}: {o.error}" for o in failed)
        super().__init__(f"{what} failed on {len(failed)} of {len(outcomes)} host(s):\n{lines}")
        self.outcomes = outcomes
        self.failed = [o.host for o in failed]


def run_on_hosts(hosts: Sequence[str], fn: Callable[[str, Step], T], ui: QuietUI = QuietUI(),
                 what: str = "work", max_parallel: int = 16) -> dict[str, T]:
    """Call `fn(host, step)` for every host in parallel threads, one progress
    line per host (`step.update(text)` rewrites it). Returns each host's value;
    after every host has finished, raises HostsFailed naming each failure."""
    outcomes: dict[str, HostOutcome] = {h: HostOutcome(h) for h in hosts}
    if not hosts:
        return {}
    with ui.host_steps(hosts, what) as steps:
        def one(host: str) -> None:
            step = steps[host]
            try:
                outcomes[host].value = fn(host, step)
                step.update(f"[green]✓[/] {host}: {what} done")
            except Exception as exc:  # collected and reported once all hosts are done
                outcomes[host].error = exc
                step.update(f"[red]✗[/] {host}: {escape(str(exc).splitlines()[0][:120])}")
            step.advance()
        with ThreadPoolExecutor(max_workers=min(max_parallel, len(hosts)), thread_name_prefix="ssh") as pool:
            list(pool.map(one, hosts))
    failed = [o for o in outcomes.values() if not o.ok]
    if failed:
        if len(failed) == 1 and isinstance(failed[0].error, MlclusterError) and len(hosts) == 1:
            raise failed[0].error
        raise HostsFailed(what, list(outcomes.values()))
    return {h: o.value for h, o in outcomes.items()}
