"""SSH test hosts: real OpenSSH servers, each in its own network namespace.

    with SSHTestNetwork() as net:
        orch, w1 = net.add_hosts(["orch", "w1"], docker=["w1"])
        # orch.address is reachable from this machine (through the bridge) and
        # from every other test host; log in as root with net.client_key.
        net.cut(w1)        # `ip link set <veth> down`: w1 drops off the network
        net.restore(w1)

Each host is a network namespace with one veth into a private bridge on this
machine, an address in the bridge's /24 (drawn from TEST_RANGE), its own
hostname (`unshare --uts`), and its own sshd (own host key, own config,
key-only root login with the network's client keys, ed25519 and RSA). A host
made with `docker=True` also runs its own dockerd inside the namespace (own
data root, socket and cgroup parent); sshd hands its socket to every session
as DOCKER_HOST, so `docker ...` over SSH talks to that host's engine.

The network stays closed: the namespaces have no default route, and on this
machine the rest of TEST_RANGE is `unreachable`, so no test traffic leaves.
`close()` kills every process in the namespaces by pid (sshd, dockerd and all
that was started over SSH), deletes namespaces, veths and the bridge; it runs
also when a test fails (use the context manager or a fixture finalizer).

The hosts share this machine's filesystem: give each host its own working
directory (`host.workdir`) for anything written over SSH.
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from .netns import (
    SSHD,
    comm,
    dockerd_path,
    ip,
    keygen,
    kill,
    links,
    masked_rc_files,
    missing_facilities,
    unmount_under,
)

__all__ = ["SSHTestNetwork", "TestHost", "missing_facilities", "LOGIN_ONLY_VAR", "LOGIN_ONLY_VALUE"]

TEST_RANGE = ipaddress.ip_network("10.213.0.0/16")
LOGIN_ONLY_VAR, LOGIN_ONLY_VALUE = "MLCT_LOGIN_ONLY", "set-by-sshd"  # in every login's env, never a service's


@dataclass
class TestHost:
    """One test host. `address` is its IP on the bridge; sshd listens on
    `address:port`; `veth` is the link on this machine's side (cut it to take
    the host off the network)."""
    name: str
    address: str
    namespace: str
    veth: str
    dir: Path
    port: int = 22
    sshd_pid: int = 0
    dockerd_pid: int = 0
    docker_host: str = ""
    extra_pids: list[int] = field(default_factory=list)

    __test__ = False  # not a pytest class

    @property
    def workdir(self) -> Path:
        """A directory of this host's own on the shared filesystem."""
        return self.dir / "work"

    @property
    def host_key_path(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    def host_public_key(self) -> str:
        return self.host_key_path.with_suffix(".pub").read_text().strip()

    def exec(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command inside this host's namespace (not over SSH)."""
        return subprocess.run(["ip", "netns", "exec", self.namespace, *cmd],
                              capture_output=True, text=True, timeout=timeout)


class SSHTestNetwork:
    """A private bridge and the test hosts on it. See the module docstring."""

    __test__ = False

    def __init__(self, root: Optional[Path] = None):
        # Short paths: dockerd's unix sockets must fit in 108 bytes.
        self.root = Path(root or tempfile.mkdtemp(prefix="mlct-", dir="/tmp"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
        self.bridge = f"mlctbr{self.tag}"
        self.hosts: dict[str, TestHost] = {}
        self._iptables_rules: list[list[str]] = []
        self._procs: dict[int, subprocess.Popen] = {}
        self._closed = False
        self.client_key = self.root / "id_ed25519"
        self.client_rsa_key = self.root / "id_rsa"
        keygen(self.client_key, "ed25519")
        keygen(self.client_rsa_key, "rsa")
        self.authorized_keys = self.root / "authorized_keys"
        self.authorized_keys.write_text(self.client_key.with_suffix(".pub").read_text()
                                        + self.client_rsa_key.with_suffix(".pub").read_text())
        os.chmod(self.authorized_keys, 0o644)
        self.subnet = self._free_subnet()
        self.gateway = str(next(self.subnet.hosts()))
        try:
            self._make_bridge()
        except BaseException:
            self.close()
            raise

    # -- network ----------------------------------------------------------
    def _free_subnet(self) -> ipaddress.IPv4Network:
        routes = json.loads(ip("-j", "route", "show", "table", "all").stdout or "[]")
        used = set()
        for r in routes:
            dst = r.get("dst", "")
            if dst and dst[0].isdigit():
                try:
                    used.add(ipaddress.ip_network(dst, strict=False))
                except ValueError:
                    pass
        candidates = list(TEST_RANGE.subnets(new_prefix=24))[1:]
        random.shuffle(candidates)
        for net in candidates:
            if not any(net.overlaps(u) and u.prefixlen >= 24 for u in used):
                return net
        raise RuntimeError(f"no free /24 left in {TEST_RANGE}")

    def _make_bridge(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        # Anything in the test range beyond our /24 goes nowhere.
        ip("route", "replace", "unreachable", str(TEST_RANGE))
        self._allow_bridged_traffic()

    def _allow_bridged_traffic(self) -> None:
        """With br_netfilter loaded (Docker loads it) bridged frames go through
        iptables' FORWARD chain, whose policy Docker sets to DROP."""
        sysctl = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
        iptables = shutil.which("iptables")
        if not iptables or not sysctl.exists() or sysctl.read_text().strip() != "1":
            return
        rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        if subprocess.run([iptables, "-I", *rule], capture_output=True).returncode == 0:
            self._iptables_rules.append(rule)

    def add_hosts(self, names: Iterable[str], docker: Iterable[str] = ()) -> list[TestHost]:
        """Create hosts (in parallel where it pays: sshd and dockerd start
        while the next host is being wired). Returns them in `names` order."""
        docker = set(docker)
        made = [self._add_host(name) for name in names]  # a failure leaves them for close()
        for host in made:
            self._start_sshd(host, with_docker=host.name in docker)
            if host.name in docker:
                self._start_dockerd(host)
        for host in made:
            self._wait_port(host, host.port)
            if host.dockerd_pid:
                self._wait_dockerd(host)
        return made

    def _add_host(self, name: str) -> TestHost:
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists")
        index = len(self.hosts) + 1
        address = str(self.subnet.network_address + 1 + index)
        host = TestHost(name=name, address=address, namespace=f"mlct-{self.tag}-{name}",
                        veth=f"mlct{self.tag}h{index}", dir=self.root / name)
        self.hosts[name] = host
        host.workdir.mkdir(parents=True, exist_ok=True)
        inner = f"mlct{self.tag}n{index}"
        ip("netns", "add", host.namespace)
        ip("link", "add", host.veth, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", host.namespace)
        ip("link", "set", host.veth, "master", self.bridge)
        ip("link", "set", host.veth, "up")
        ns = ["-n", host.namespace]
        ip(*ns, "link", "set", "lo", "up")
        ip(*ns, "link", "set", inner, "name", "eth0")
        ip(*ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        ip(*ns, "link", "set", "eth0", "up")
        return host

    # -- daemons ----------------------------------------------------------
    def _sshd_config(self, host: TestHost, with_docker: bool) -> Path:
        if not host.host_key_path.exists():
            keygen(host.host_key_path, "ed25519")
        lines = [
            f"ListenAddress {host.address}", f"Port {host.port}",
            f"HostKey {host.host_key_path}", f"PidFile {host.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no",
            "Subsystem sftp internal-sftp", "MaxSessions 64", "MaxStartups 64:30:128",
        ]
        # /var/run/docker.sock would reach this machine's engine (a shared filesystem): each host's own.
        host.docker_host = f"unix://{host.dir / 'docker.sock'}"
        lines.append(f"SetEnv DOCKER_HOST={host.docker_host} {LOGIN_ONLY_VAR}={LOGIN_ONLY_VALUE}")
        path = host.dir / "sshd_config"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _spawn(self, host: TestHost, shell: str, log: str, own_mounts: bool = False) -> int:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        with open(host.dir / log, "ab") as out:
            proc = subprocess.Popen(
                # nsenter, not `ip netns exec`: that remounts /sys, which hides the
                # cgroup mounts dockerd needs.
                ["nsenter", f"--net=/run/netns/{host.namespace}", "unshare", "--uts",
                 *(["--mount"] if own_mounts else []), "sh", "-c", shell],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs[proc.pid] = proc
        return proc.pid  # every step execs, so this is the daemon's pid

    def _stop(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """Signal a daemon we started and reap it."""
        kill(pid, sig)
        proc = self._procs.pop(pid, None)
        if proc is not None:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                kill(pid)
                proc.wait(timeout=5)

    def _start_sshd(self, host: TestHost, with_docker: bool = False) -> None:
        config = self._sshd_config(host, with_docker)
        mask = masked_rc_files(self.root / "empty-rc")  # this machine's shell set-up is not the host's (netns.py)
        host.sshd_pid = self._spawn(host, f"{mask}hostname {host.name} && exec {SSHD} -D -e -f {config}", "sshd.log",
                                    own_mounts=True)

    def _start_dockerd(self, host: TestHost) -> None:
        dockerd = dockerd_path()
        if not dockerd:
            raise RuntimeError("dockerd is not installed (run .ci/setup-docker.sh)")
        d = host.dir
        host.dockerd_pid = self._spawn(host, (
            f"hostname {host.name} && exec {dockerd} --data-root {d}/docker-data --exec-root {d}/de "
            f"--pidfile {d}/docker.pid -H {host.docker_host} --cgroup-parent mlct-{self.tag}-{host.name} "
            f"--userland-proxy=false"), "dockerd.log")

    def _wait_port(self, host: TestHost, port: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host.address, port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd on {host.name} did not start:\n{self.log(host, 'sshd.log')}")

    def _wait_dockerd(self, host: TestHost, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = subprocess.run(["docker", "-H", host.docker_host, "version", "--format", "{{.Server.Version}}"],
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                return
            time.sleep(0.3)
        raise RuntimeError(f"dockerd on {host.name} did not start:\n{self.log(host, 'dockerd.log')}")

    def log(self, host: TestHost, name: str) -> str:
        path = host.dir / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def replace_host_key(self, host: TestHost) -> None:
        """Give the host a new host key and restart its sshd (a "rebuilt" host)."""
        self._stop(host.sshd_pid)
        host.host_key_path.unlink()
        host.host_key_path.with_suffix(".pub").unlink()
        self._start_sshd(host, with_docker=bool(host.dockerd_pid))
        self._wait_port(host, host.port)

    def stop_sshd(self, host: TestHost) -> None:
        self._stop(host.sshd_pid)
        host.sshd_pid = 0

    def start_sshd(self, host: TestHost) -> None:
        self._start_sshd(host, with_docker=bool(host.dockerd_pid))
        self._wait_port(host, host.port)

    def kill_services(self, host: TestHost) -> None:
        """Kill every process in the host's namespace but its sshd and dockerd
        (what a test started over SSH and could not stop otherwise)."""
        keep = {host.sshd_pid, host.dockerd_pid}
        for pid in ip("netns", "pids", host.namespace, check=False).stdout.split():
            if int(pid) not in keep and "containerd" not in comm(int(pid)):
                kill(int(pid))

    # -- links ------------------------------------------------------------
    def cut(self, host: TestHost) -> None:
        """Take the host off the network: its veth goes down on this side."""
        ip("link", "set", host.veth, "down")

    def restore(self, host: TestHost) -> None:
        ip("link", "set", host.veth, "up")

    # -- teardown ---------------------------------------------------------
    def close(self) -> None:
        """Stop every process in our namespaces (by pid), remove namespaces,
        links, bridge and files. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for host in self.hosts.values():
            pids = ip("netns", "pids", host.namespace, check=False).stdout.split()
            for pid in [host.sshd_pid, host.dockerd_pid, *host.extra_pids, *map(int, pids)]:
                kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3  # then SIGKILL: nothing here needs a graceful end
        for host in self.hosts.values():
            while time.monotonic() < deadline and ip("netns", "pids", host.namespace, check=False).stdout.split():
                time.sleep(0.1)
            for pid in ip("netns", "pids", host.namespace, check=False).stdout.split():
                kill(int(pid))
        for pid in list(self._procs):
            self._stop(pid)
        for host in self.hosts.values():
            unmount_under(host.dir)
            ip("link", "del", host.veth, check=False)
            ip("netns", "del", host.namespace, check=False)
        ip("link", "del", self.bridge, check=False)
        for rule in self._iptables_rules:
            subprocess.run(["iptables", "-D", *rule], capture_output=True)
        if not any(name.startswith("mlctbr") for name in links()):
            ip("route", "del", "unreachable", str(TEST_RANGE), check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "SSHTestNetwork":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
