"""A clock the test moves by hand, for code that takes `clock=` (a callable
returning seconds): exact, and never waits."""
from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
