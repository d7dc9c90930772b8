"""How library code tells a person what it is doing, without printing itself.

The CLI passes a `RichUI` (progress and messages on stderr); tests and scripts
pass `QuietUI`. Data for scripts never goes through here: it goes to stdout.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn


class QuietUI:
    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...

    @contextlib.contextmanager
    def step(self, description: str, total: Optional[int] = None) -> Iterator["Step"]:
        yield Step(None, None)


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
    def __init__(self, console: Optional[Console] = None):
        self.console = console or Console(stderr=True)

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
