"""The `mlcluster` console script, run as a person would: a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

# The console script pip installed next to this interpreter.
MLCLUSTER = str(Path(sys.executable).parent / "mlcluster")


def mlcluster(*args: str, home: Optional[Path] = None, env: Optional[dict] = None, check: bool = False,
              timeout: float = 300.0) -> subprocess.CompletedProcess:
    """Run `mlcluster *args` with its output captured and no stdin (so nothing
    can wait on a prompt). `env` replaces the environment (default: this one);
    `home` sets MLCLUSTER_HOME. Wide columns keep Rich from wrapping what tests
    read. With `check`, a non-zero exit fails the test, showing both outputs."""
    env = dict(os.environ if env is None else env, COLUMNS="200", HF_HUB_OFFLINE="1")
    if home is not None:
        env["MLCLUSTER_HOME"] = str(home)
    result = subprocess.run([MLCLUSTER, *args], capture_output=True, text=True, timeout=timeout, env=env,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"mlcluster {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def mlcluster_in(home: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    """`mlcluster(*args, home=home)`, for tests that keep a state directory per cluster."""
    return mlcluster(*args, home=home, **kw)
