"""The `mlcluster` console script, run as a person would: a subprocess; and
what tests of a local cluster share (a private home, steady light load)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import pytest
import requests

from mlcluster.deploy.localhost import find_marked, marker

# The console script pip installed next to this interpreter.
MLCLUSTER = str(Path(sys.executable).parent / "mlcluster")


def cli(*args: str, home: Optional[Path] = None, env: Optional[dict] = None, check: bool = True,
        timeout: float = 300.0) -> subprocess.CompletedProcess:
    """Run `mlcluster *args` with its output captured and no stdin (so nothing
    can wait on a prompt). `home` sets MLCLUSTER_HOME (default: the caller's,
    such as a `home_fixture`'s); `env` replaces the environment (default: this
    one). Wide columns keep Rich from wrapping what tests read. A non-zero exit
    fails the test, showing both outputs, unless `check=False` (the test looks
    at the exit itself)."""
    env = dict(os.environ if env is None else env, COLUMNS="200", HF_HUB_OFFLINE="1")
    if home is not None:
        env["MLCLUSTER_HOME"] = str(home)
    result = subprocess.run([MLCLUSTER, *args], capture_output=True, text=True, timeout=timeout, env=env,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"mlcluster {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def home_fixture(*clusters: str, autouse: bool = False):
    """A `home` fixture: a private state directory (MLCLUSTER_HOME); whatever
    a test leaves running of the named clusters is killed afterwards."""
    @pytest.fixture(autouse=autouse)
    def home(tmp_path, monkeypatch) -> Path:
        monkeypatch.setenv("MLCLUSTER_HOME", str(tmp_path / "home"))
        yield tmp_path / "home"
        for name in clusters:
            kill_marked(name)
    return home


def kill_marked(cluster: str) -> None:
    """SIGKILL every process (or process group) carrying `cluster`'s marker."""
    for pid in find_marked(marker(cluster)):
        try:
            os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def plain_bind_fails(port: int) -> bool:
    """A bind without SO_REUSEADDR fails: some socket still holds the port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return False
        except OSError:
            return True


class Trickle:
    """A request to `url`'s /new_request every 0.5 s from a thread, until
    `stop()`, which returns whether each was answered ok."""

    def __init__(self, url: str, text: str):
        self.answered: list[bool] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, text), daemon=True)
        self._thread.start()

    def _run(self, url: str, text: str) -> None:
        with requests.Session() as http:
            while not self._stop.is_set():
                self.answered.append(http.post(f"{url}/new_request", json={"text": text}, timeout=30).ok)
                time.sleep(0.5)

    def stop(self) -> list[bool]:
        self._stop.set()
        self._thread.join()
        return self.answered
