"""LocalHost: this machine behind the same Host contract as a remote one (run -> Result, put, stream),
so one ProcessRuntime and one DockerRuntime serve every provider."""
from __future__ import annotations

import stat

import pytest

from mlcluster.deploy.host import LocalHost, ServiceSpec
from mlcluster.remote.results import CommandTimedOut, UnexpectedExit


def test_run_returns_a_result_and_raises_from_one_place(tmp_path):
    host = LocalHost(tmp_path / "work")
    result = host.run("echo out; echo err >&2")
    assert (result.ok, result.stdout, result.stderr) == (True, "out\n", "err\n")
    failed = host.run("echo last words; exit 3", warn=True)
    assert failed.exit_code == 3 and failed.tail(1) == "last words"
    with pytest.raises(UnexpectedExit, match="exited with 3"):
        host.run("exit 3")
    with pytest.raises(CommandTimedOut, match="within 0.2 s"):
        host.run("sleep 5", timeout=0.2)


def test_env_files_are_private_and_stream_yields_lines(tmp_path):
    host = LocalHost(tmp_path / "work")
    path = host.write_env(ServiceSpec("w1", "worker", 5000, {"TOKEN": "s3cret value"}), shell=True)
    assert stat.S_IMODE((tmp_path / "work" / "w1.env").stat().st_mode) == 0o600
    assert host.run(f". {path} && echo \"$TOKEN\"").stdout == "s3cret value\n"
    assert list(host.stream("printf 'a\\nb\\n'; echo c >&2")) == ["a", "b", "c"]
    host.put(path, host.path("copy.env"), mode=0o640)
    assert stat.S_IMODE((tmp_path / "work" / "copy.env").stat().st_mode) == 0o640
