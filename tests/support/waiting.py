"""Waiting for something that happens in another thread or process
(`wait_for`), or making sure something does not happen for a while (`holds`):
never sleep and then assume."""
from __future__ import annotations

import time

import requests


def wait_for(predicate, what: str, timeout: float = 20.0, interval: float = 0.02):
    """Poll until `predicate()` returns something true and return it; a
    `requests` error counts as not yet. Fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except requests.RequestException:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def holds(predicate, what: str, seconds: float, interval: float = 0.05) -> None:
    """Check `predicate()` until `seconds` have passed (and once at the end):
    fails the test the first time it is false, saying when. For what must
    not happen in a time (a watchdog that must not fire under load)."""
    start = time.monotonic()
    while True:
        if not predicate():
            raise AssertionError(f"{what}: no longer true after {time.monotonic() - start:.1f} of {seconds:g} s")
        if time.monotonic() - start >= seconds:
            return
        time.sleep(min(interval, max(0.0, seconds - (time.monotonic() - start))))
