"""How library code tells a person what it is doing, without printing itself.

The CLI uses one `RichUI` per run (`run_ui()`: progress and messages on
stderr, tables and data on its `out`, stdout); tests and scripts pass
`QuietUI`. Data for scripts never mixes with progress.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Callable, Iterator, Optional, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn


class QuietUI:
    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...

    @contextlib.contextmanager
    def step(self, description: str, total: Optional[int] = None) -> Iterator["Step"]:
        yield Step(None, None)

    @contextlib.contextmanager
    def host_steps(self, hosts: Sequence[str], what: str) -> Iterator[dict[str, "Step"]]:
        """One step per host, for work done on many hosts at once."""
        yield {h: Step(None, None) for h in hosts}


class Step:
    """A running step: `advance()` moves its bar, `update(text)` renames it."""

    def __init__(self, progress: "Optional[Progress | LineProgress]", task: Optional[TaskID]):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=description)


class LineProgress:
    """Progress where no terminal shows a live bar (a pipe, a log, CI): a line
    when a task starts or is renamed, and every `interval` s a line per
    unfinished task, so a long wait is never silent. The subset of
    rich.progress.Progress that `Step` uses.

    Time is `clock()`'s (seconds; time.monotonic unless a test passes its own):
    the heartbeat thread looks at it every interval/10 (at most 0.5 s) and
    writes the lines that are due."""

    def __init__(self, console: Console, interval: float, clock: Callable[[], float] = time.monotonic):
        self.console, self.interval, self.clock = console, interval, clock
        self._tasks: dict[int, list] = {}   # id -> [description, completed, total, started]
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="progress")
        self._look_every = min(0.5, max(0.01, interval / 10))

    def __enter__(self) -> "LineProgress":
        self._due = self.clock() + self.interval
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for description, _, total, started in self._tasks.values():
            if total is None and exc_type is None:
                self._line(f"done: {description}", started)

    def add_task(self, description: str, total: Optional[int] = None) -> int:
        with self._lock:
            task = len(self._tasks)
            self._tasks[task] = [description, 0, total, self.clock()]
        self._line(description, None)
        return task

    def advance(self, task: int, n: int = 1) -> None:
        with self._lock:
            self._tasks[task][1] += n

    def update(self, task: int, description: str) -> None:
        with self._lock:
            entry = self._tasks[task]
            changed, entry[0] = entry[0] != description, description
        if changed:
            self._line(description, entry[3])

    def _beat(self) -> None:
        while not self._stop.wait(self._look_every):
            if self.clock() < self._due:
                continue
            self._due += self.interval
            with self._lock:
                pending = [list(t) for t in self._tasks.values() if t[2] is None or t[1] < t[2]]
            for description, completed, total, started in pending:
                self._line(description + (f" {completed}/{total}" if total is not None else ""), started)

    def _line(self, text: str, started: Optional[float]) -> None:
        elapsed = f" ({self.clock() - started:.0f} s)" if started is not None else ""
        self.console.print(f"{text}{elapsed}", highlight=False, soft_wrap=True)


def progress_interval() -> float:
    """Seconds between progress lines without a terminal: MLCLUSTER_PROGRESS_S, default 10."""
    try:
        return max(0.1, float(os.environ.get("MLCLUSTER_PROGRESS_S", "10")))
    except ValueError:
        return 10.0


class RichUI(QuietUI):
    """Messages and progress on `console` (stderr); `out` (stdout) is for the
    data a command prints, tables included. Messages are plain text (a
    `[ssh]` in one is a table's name, not markup)."""

    def __init__(self, console: Optional[Console] = None, out: Optional[Console] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.console = console or Console(stderr=True)
        self.out = out or Console()
        self.clock = clock  # the progress lines' time (a test's fake clock)

    def info(self, message: str) -> None:
        self.console.print(escape(message))

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {escape(message)}")

    def _progress(self, *columns) -> "Progress | LineProgress":
        if not self.console.is_terminal:
            return LineProgress(self.console, progress_interval(), self.clock)
        return Progress(SpinnerColumn(), TextColumn("{task.description}"), *columns, TimeElapsedColumn(),
                        console=self.console)

    @contextlib.contextmanager
    def step(self, description: str, total: Optional[int] = None) -> Iterator[Step]:
        columns = [BarColumn(), TextColumn("{task.completed}/{task.total}")] if total is not None else []
        with self._progress(*columns) as progress:
            task = progress.add_task(description, total=total)
            yield Step(progress, task)

    @contextlib.contextmanager
    def host_steps(self, hosts: Sequence[str], what: str) -> Iterator[dict[str, Step]]:
        """One progress line per host, each rewritten by its own `update(text)`."""
        with self._progress() as progress:
            yield {h: Step(progress, progress.add_task(f"{h}: {what}", total=1)) for h in hosts}


_RUN_UI: Optional[RichUI] = None


def run_ui() -> RichUI:
    """The one UI of this command run, made on first use and shared by every
    command (`mlcluster` and `mlcluster bench` alike)."""
    global _RUN_UI
    if _RUN_UI is None:
        _RUN_UI = RichUI()
    return _RUN_UI
