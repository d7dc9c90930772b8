"""The CLI's UI on a stream that is not a terminal (a pipe, a log, CI)."""
from __future__ import annotations

import io
import time

from rich.console import Console

from mlcluster.ui import RichUI


def piped_ui(monkeypatch, interval: str) -> tuple[RichUI, io.StringIO]:
    monkeypatch.setenv("MLCLUSTER_PROGRESS_S", interval)
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=False, width=80)
    return RichUI(console=console, out=Console(file=io.StringIO())), stream


def test_a_long_step_prints_a_line_every_interval_without_a_terminal(monkeypatch):
    ui, stream = piped_ui(monkeypatch, "0.2")
    with ui.step("waiting for the slow thing", total=3) as step:
        time.sleep(1.1)
        step.advance(1)
    lines = [line for line in stream.getvalue().splitlines() if "waiting for the slow thing" in line]
    assert len(lines) >= 4, stream.getvalue()  # the start, then one per 0.2 s
    assert "0/3" in stream.getvalue() and "(1 s)" in stream.getvalue()


def test_host_steps_print_each_rename_and_stop_beating_when_done(monkeypatch):
    ui, stream = piped_ui(monkeypatch, "0.1")
    with ui.host_steps(["alpha", "beta"], "connecting") as steps:
        steps["alpha"].update("alpha: still waiting: timed out")
        steps["alpha"].advance()
        steps["beta"].advance()
        time.sleep(0.35)
    text = stream.getvalue()
    assert "alpha: connecting" in text and "beta: connecting" in text
    assert text.count("alpha: still waiting: timed out") == 1  # finished: no heartbeat for it


def test_messages_keep_square_brackets(monkeypatch):
    ui, stream = piped_ui(monkeypatch, "10")
    ui.warn("set `allowed_cidr` in the [aws] table")
    ui.info("[ssh] key is missing")
    assert "in the [aws] table" in stream.getvalue() and "[ssh] key" in stream.getvalue()
