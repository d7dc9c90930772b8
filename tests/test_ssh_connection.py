"""The SSH connection layer against real OpenSSH servers in network namespaces."""
from __future__ import annotations

import stat
import subprocess
import time

import pytest

from mlcluster.errors import MlclusterError
from mlcluster.remote.connection import (
    CommandTimedOut,
    Connection,
    HostKeyChanged,
    HostKeyStore,
    HostsFailed,
    UnexpectedExit,
    Unreachable,
    run_on_hosts,
)
from support.sshcluster import host_network, ssh_marks

pytestmark = ssh_marks()


net = host_network("alpha", "beta")


def connect(net, name, store=None, key=None, **kw) -> Connection:
    host = net.hosts[name]
    return Connection(host.address, "root", key_path=key or net.client_key,
                      known_hosts=store if store is not None else HostKeyStore(), label=name, **kw)


@pytest.mark.parametrize("key", ["client_key", "client_rsa_key"])
def test_run_returns_output_and_exit_code(net, key):
    with connect(net, "alpha", key=getattr(net, key)) as c:
        result = c.run("hostname; echo oops >&2; exit 3", warn=True)
    assert result.stdout.strip() == "alpha"
    assert result.stderr.strip() == "oops"
    assert result.exit_code == 3 and not result.ok
    assert result.tail(1) == "oops"


def test_failure_names_host_command_code_and_last_lines(net):
    with connect(net, "beta") as c:
        with pytest.raises(UnexpectedExit) as info:
            c.run("for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line$i; done; exit 7")
    message = str(info.value)
    assert "beta" in message and "exited with 7" in message and "for i in" in message
    assert "line12" in message and "line1\n" not in message  # only the tail
    assert info.value.result.exit_code == 7


def test_command_timeout_is_its_own_error(net):
    with connect(net, "alpha") as c:
        started = time.monotonic()
        with pytest.raises(CommandTimedOut) as info:
            c.run("echo started; sleep 30", timeout=1)
        assert time.monotonic() - started < 15
        assert "within 1 s" in str(info.value) and "started" in str(info.value)
        assert c.run("echo still usable").stdout == "still usable\n"


def test_stdin_large_output_and_stream(net):
    with connect(net, "alpha") as c:
        assert c.run("wc -c", stdin=b"x" * 100_000).stdout.strip() == "100000"
        big = c.run("head -c 3000000 /dev/zero | tr '\\0' a")
        assert len(big.stdout) == 3_000_000
        lines = list(c.stream("for i in 1 2 3; do echo n$i; echo e$i >&2; done"))
    assert [line for line in lines if line.startswith("n")] == ["n1", "n2", "n3"]
    assert sorted(line for line in lines if line.startswith("e")) == ["e1", "e2", "e3"]


def test_background_process_does_not_hold_the_channel(net):
    work = net.hosts["alpha"].workdir
    with connect(net, "alpha") as c:
        started = time.monotonic()
        c.run(f"( cd {work} && exec setsid sleep 60 >bg.log 2>&1 </dev/null & echo $! >{work}/bg.pid )", timeout=10)
        assert time.monotonic() - started < 8
        pid = int((work / "bg.pid").read_text())
        assert c.run(f"kill -0 {pid} && echo alive").stdout.strip() == "alive"
        c.run(f"kill {pid}")


def test_put_and_put_text(net, tmp_path):
    work = net.hosts["beta"].workdir
    local = tmp_path / "payload.bin"
    local.write_bytes(bytes(range(256)) * 100)
    with connect(net, "beta") as c:
        c.put(local, str(work / "payload.bin"), mode=0o640)
        c.put_text("TOKEN=secret\n", str(work / "env"))
        assert c.run(f"sha256sum < {work}/payload.bin").stdout.split()[0] == \
            subprocess.run(["sha256sum", str(local)], capture_output=True, text=True).stdout.split()[0]
    assert stat.S_IMODE((work / "env").stat().st_mode) == 0o600
    assert stat.S_IMODE((work / "payload.bin").stat().st_mode) == 0o640
    assert (work / "env").read_text() == "TOKEN=secret\n"


def test_host_key_recorded_on_first_use_then_required(net):
    saved = []
    store = HostKeyStore({}, on_change=lambda: saved.append(1))
    host = net.hosts["beta"]
    with connect(net, "beta", store) as c:
        c.run("true")
    recorded = store.get(host.address, 22)
    assert recorded == " ".join(host.host_public_key().split()[:2]) and saved
    with connect(net, "beta", store) as c:  # the same key: accepted
        c.run("true")
    net.replace_host_key(host)
    with pytest.raises(HostKeyChanged) as info:
        connect(net, "beta", store).run("true")
    assert "beta" in str(info.value) and "changed" in str(info.value)
    assert store.get(host.address, 22) == recorded  # the recorded key is kept
    # A store that never saw the host trusts the new key on first use.
    with connect(net, "beta") as c:
        c.run("true")


def test_wait_reachable_reports_refused_then_succeeds(net):
    host = net.hosts["alpha"]
    net.stop_sshd(host)
    reasons = []
    try:
        with pytest.raises(Unreachable) as info:
            connect(net, "alpha").wait_reachable(time.monotonic() + 2, on_wait=reasons.append, interval=0.3)
        assert "alpha" in str(info.value) and "refused" in info.value.reason
        assert reasons and all("refused" in r for r in reasons)
    finally:
        net.start_sshd(host)
    connect(net, "alpha").wait_reachable(time.monotonic() + 10)


def test_wait_reachable_on_a_cut_link_times_out_within_deadline(net):
    host = net.hosts["alpha"]
    net.cut(host)
    try:
        started = time.monotonic()
        with pytest.raises(Unreachable) as info:
            connect(net, "alpha", connect_timeout=1).wait_reachable(time.monotonic() + 3, interval=0.2)
        assert time.monotonic() - started < 8
        assert info.value.reason in ("timed out", "no route to host", "timed out during the SSH handshake")
    finally:
        net.restore(host)


def test_authentication_failure_stops_at_once(net, tmp_path):
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    started = time.monotonic()
    with pytest.raises(Unreachable) as info:
        connect(net, "alpha", key=stranger).wait_reachable(time.monotonic() + 30)
    assert time.monotonic() - started < 10
    assert "authentication failed" in info.value.reason and "root" in info.value.reason


def test_missing_key_file_is_a_clear_error(net, tmp_path):
    with pytest.raises(MlclusterError, match="does not exist"):
        connect(net, "alpha", key=tmp_path / "nope").run("true")


def test_run_on_hosts_reports_every_failure_after_all_finish(net):
    store = HostKeyStore()
    conns = {name: connect(net, name, store) for name in ("alpha", "beta")}
    finished = []

    def work(name, step):
        step.update(f"{name}: working")
        result = conns[name].run(f"sleep 0.5; hostname; test {name} = beta")
        finished.append(name)
        return result.stdout.strip()

    with pytest.raises(HostsFailed) as info:
        run_on_hosts(["alpha", "beta"], work, what="checking")
    assert info.value.failed == ["alpha"] and finished == ["beta"]
    assert "alpha" in str(info.value) and "exited with 1" in str(info.value)
    assert run_on_hosts(["beta"], work) == {"beta": "beta"}
    for c in conns.values():
        c.close()
