"""The base install (`pip install .`, no extras) is the CLI for every provider, without the model stack.

A fresh venv gets this checkout installed as a user would (a real pip install, dependencies from the
package index, pip's cache making it quick); then the commands a laptop driving SSH hosts or EC2 runs
must work without torch, transformers, onnx or matplotlib, and what needs them must say which extra
to install in one sentence, never with a traceback.
"""
from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "matplotlib", "flask", "gunicorn")


@pytest.fixture(scope="module")
def light(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding `pip install <this checkout>` and nothing else."""
    where = tmp_path_factory.mktemp("light-venv")
    venv.create(where, with_pip=True)
    pip = subprocess.run([str(where / "bin/python"), "-m", "pip", "install", "-q", str(ROOT)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return where / "bin"


def run(bin_dir: Path, *args: str, home: Path) -> subprocess.CompletedProcess:
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "MLCLUSTER_HOME": str(home / ".mlcluster"),
           "HF_HUB_OFFLINE": "1", "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(home / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(home / "none"), "COLUMNS": "200"}
    return subprocess.run([str(bin_dir / "mlcluster"), *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=home)


def test_the_base_install_has_no_model_stack(light):
    probe = "import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) is not None for m in %r}))"
    found = json.loads(subprocess.run([str(light / "python"), "-c", probe % (HEAVY,)], capture_output=True,
                                      text=True, check=True).stdout)
    assert not any(found.values()), f"the base install pulled {[m for m, f in found.items() if f]}"
    assert str(light) != str(Path(sys.executable).parent)


def test_the_cli_runs_without_the_model_stack(light, tmp_path):
    assert run(light, "--help", home=tmp_path).returncode == 0
    helped = run(light, "up", "--provider", "ssh", "--help", home=tmp_path)
    assert helped.returncode == 0 and "--verbose" in helped.stdout, helped.stderr
    checked = run(light, "check", "--json", home=tmp_path)
    assert checked.returncode == 0, checked.stderr
    report = {p["provider"]: p for p in json.loads(checked.stdout)["providers"]}
    assert set(report) == {"local", "ssh", "aws"}
    stack = next(c for c in report["local"]["checks"] if c["what"] == "model stack")
    assert stack["ok"] is False and "mlcluster[local]" in stack["next_step"]
    assert report["local"]["ready"] is False
    asked = run(light, "check", "--provider", "local", home=tmp_path)
    assert asked.returncode == 1 and "not ready" in asked.stdout


@pytest.mark.parametrize("args, code, extra", [
    (["up", "--workers", "1"], 1, "mlcluster[local]"),
    (["make-model", "model-dir"], 1, "mlcluster[local]"),
    (["bench", "--url", "http://127.0.0.1:9", "--plot", "a.png"], 2, "mlcluster[plot]"),
])
def test_what_needs_an_extra_says_which_in_one_sentence(light, tmp_path, args, code, extra):
    result = run(light, *args, home=tmp_path)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert extra in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / ".mlcluster" / "default").exists()  # nothing was started
    assert not (tmp_path / "model-dir").exists()
