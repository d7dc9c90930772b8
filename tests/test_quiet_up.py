"""`mlcluster up` is quiet by default: no library warnings (torch.onnx's TracerWarnings, UserWarnings) or
progress bars, only its own lines; `-v` lets them through. A real local cluster of the tiny model with the
onnx backend, so the export runs (each run in a fresh home: no cached export)."""
from __future__ import annotations

import pytest

from support.console import cli, kill_marked


@pytest.mark.parametrize("verbose", [False, True])
def test_up_prints_no_library_warning_unless_verbose(tmp_path, tiny_model, verbose):
    name = "quiet-v" if verbose else "quiet"
    args = ["up", "-n", name, "-w", "1", "-m", "1", "--model", tiny_model, "--backend", "onnx"]
    try:
        result = cli(*args, *(["-v"] if verbose else []), home=tmp_path, check=False)
        assert result.returncode == 0, result.stderr
        assert "exported once" in result.stderr or "preparing" in result.stderr  # the export ran
        warned = [line for line in (result.stdout + result.stderr).splitlines() if "warning" in line.lower()]
        if verbose:
            assert any("TracerWarning" in line for line in warned), result.stderr
        else:
            assert warned == [], warned
    finally:
        cli("down", "-n", name, "-y", home=tmp_path, check=False)
        kill_marked(name)
