"""Waiting for something that happens in another thread or process."""
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
