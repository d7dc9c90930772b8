"""The CLI's UI on a stream that is not a terminal (a pipe, a log, CI), on a
fake clock: the heartbeat writes a line when the clock says one is due."""
from __future__ import annotations

import io

from rich.console import Console

from mlcluster.ui import RichUI
from support.clock import FakeClock
from support.waiting import wait_for


def piped_ui(monkeypatch, interval: str, clock: FakeClock) -> tuple[RichUI, io.StringIO]:
    monkeypatch.setenv("MLCLUSTER_PROGRESS_S", interval)
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=False, width=80)
    return RichUI(console=console, out=Console(file=io.StringIO()), clock=clock), stream


def lines_with(stream: io.StringIO, text: str) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if text in line]


def test_a_long_step_prints_a_line_every_interval_without_a_terminal(monkeypatch):
    clock = FakeClock(0.0)
    ui, stream = piped_ui(monkeypatch, "0.2", clock)
    with ui.step("waiting for the slow thing", total=3) as step:
        assert len(lines_with(stream, "waiting for the slow thing")) == 1  # the start
        for beats in range(1, 6):
            clock.advance(0.2)  # one interval: one line
            wait_for(lambda: len(lines_with(stream, "waiting for the slow thing")) == 1 + beats,
                     f"heartbeat {beats}", timeout=10, interval=0.01)
        step.advance(1)
    lines = lines_with(stream, "waiting for the slow thing")
    assert len(lines) == 6, stream.getvalue()  # the start, then one per 0.2 s of the clock
    assert lines[-1] == "waiting for the slow thing 0/3 (1 s)", lines


def test_host_steps_print_each_rename_and_stop_beating_when_done(monkeypatch):
    clock = FakeClock(0.0)
    ui, stream = piped_ui(monkeypatch, "0.1", clock)
    with ui.host_steps(["alpha", "beta", "gamma"], "connecting") as steps:
        steps["alpha"].update("alpha: still waiting: timed out")
        steps["alpha"].advance()
        steps["beta"].advance()
        for beats in range(1, 4):  # gamma, unfinished, beats; alpha and beta, done, do not
            clock.advance(0.1)
            wait_for(lambda: len(lines_with(stream, "gamma: connecting")) == 1 + beats, f"heartbeat {beats}",
                     timeout=10, interval=0.01)
        steps["gamma"].advance()
    text = stream.getvalue()
    assert "alpha: connecting" in text and "beta: connecting" in text
    assert text.count("alpha: still waiting: timed out") == 1  # finished: no heartbeat for it
    assert text.count("beta: connecting") == 1


def test_messages_keep_square_brackets(monkeypatch):
    ui, stream = piped_ui(monkeypatch, "10", FakeClock())
    ui.warn("set `allowed_cidr` in the [aws] table")
    ui.info("[ssh] key is missing")
    assert "in the [aws] table" in stream.getvalue() and "[ssh] key" in stream.getvalue()
