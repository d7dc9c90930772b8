"""How library code tells a person what it is doing, without printing itself.

The CLI uses one `RichUI` per run (`run_ui()`: progress and messages on
stderr, tables and data on its `out`, stdout); tests and scripts pass
`QuietUI`. Data for scripts never mixes with progress.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

from rich.console import Console
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

    def __init__(self, progress: Optional[Progress], task: Optional[TaskID]):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=description)


class RichUI(QuietUI):
    """Messages and progress on `console` (stderr); `out` (stdout) is for the
    data a command prints, tables included."""

    def __init__(self, console: Optional[Console] = None, out: Optional[Console] = None):
        self.console = console or Console(stderr=True)
        self.out = out or Console()

    def info(self, message: str) -> None:
        self.console.print(message)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {message}")

    @contextlib.contextmanager
    def step(self, description: str, total: Optional[int] = None) -> Iterator[Step]:
        columns = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), TextColumn("{task.completed}/{task.total}")]
        columns.append(TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(description, total=total)
            yield Step(progress, task)

    @contextlib.contextmanager
    def host_steps(self, hosts: Sequence[str], what: str) -> Iterator[dict[str, Step]]:
        """One progress line per host, each rewritten by its own `update(text)`."""
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=self.console) as progress:
            yield {h: Step(progress, progress.add_task(f"{h}: {what}", total=1)) for h in hosts}


_RUN_UI: Optional[RichUI] = None


def run_ui() -> RichUI:
    """The one UI of this command run, made on first use and shared by every
    command (`mlcluster` and `mlcluster bench` alike)."""
    global _RUN_UI
    if _RUN_UI is None:
        _RUN_UI = RichUI()
    return _RUN_UI
