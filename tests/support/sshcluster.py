"""An ssh-provider cluster on the SSH test hosts: its config file, `up` and
`down` (`up_cluster`, or a test module's `cluster` fixture from
`cluster_fixture`), what its orchestrator and controller show (`containers`,
`autoscale`, `events`, `controller_events`, `controller_shown`), what runs
in a host's namespace (`our_processes`, `marked`, `worker_ids`, `docker_on`,
`docker_containers`), and a benchmark script's test network (`bench_network`)."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest
import requests

from .console import cli
from .sshhosts import SSHTestNetwork, TestHost, missing_facilities

CLUSTER = "sshe2e"


BASE_IMAGE = "mlcluster-base:bookworm"  # .ci/setup-docker.sh builds it with debootstrap


def docker_over_ssh_missing() -> Optional[str]:
    """What SSH test hosts with a Docker engine lack here (None: nothing)."""
    reason = missing_facilities(docker=True)
    if reason:
        return reason
    probe = subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no Docker engine with the base image {BASE_IMAGE} here (run .ci/setup-docker.sh)"
    return None


def ssh_marks(missing=missing_facilities, label: str = "SSH test hosts") -> list:
    """A test module's `pytestmark`: marked ssh, skipped when `missing()`
    (by default: what the SSH test hosts lack) names something, saying what."""
    reason = missing()
    return [pytest.mark.ssh, pytest.mark.skipif(bool(reason), reason=f"{label}: {reason}")]


def host_network(*names: str, docker: tuple[str, ...] = (), scope: str = "module"):
    """A `net` fixture (module-scoped unless `scope` says otherwise): SSH test
    hosts with these names, those in `docker` running a Docker engine too.
    Closing the network also ends every service started on the hosts."""
    @pytest.fixture(scope=scope)
    def net():
        with SSHTestNetwork() as network:
            network.add_hosts(list(names), docker=docker)
            yield network
    return net


def cluster_config(home: Path, net: SSHTestNetwork, model: str, workers: list[str], name: str = CLUSTER,
                   **options) -> Path:
    """`home` made (if it is not yet), with a config file for cluster `name`
    on these hosts in it (`options`: `toml_config`'s)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "cluster.toml"
    config.write_text(toml_config(net, model, workers, name=name, **options))
    return config


def toml_value(value) -> str:
    """A TOML value: a bool, a number, a string, or an inline table of them."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # true/false, numbers and quoted strings are TOML as JSON writes them


def toml_config(net: SSHTestNetwork, model: str, workers: list[str], orchestrator: str = "orch",
                docker: tuple[str, ...] = (), name: str = CLUSTER, spares: tuple[str, ...] = (),
                autoscale: Optional[dict] = None, top: Optional[dict] = None, **ssh) -> str:
    """A config file's text for cluster `name` on these test hosts: the
    orchestrator's, the workers' and the `spares`' (pool hosts `up` starts
    nothing on), each on the Docker runtime when in `docker`, else on the
    process runtime; `autoscale`: the [autoscale] table; `top`: more
    top-level settings ({"service_ms": 20}); `ssh`: more [ssh] settings."""
    def host(name: str) -> str:
        h = net.hosts[name]
        runtime = "docker" if name in docker else "process"
        return (f'{{ address = "{h.address}", name = "{name}", workdir = "{h.workdir}", '
                f'runtime = "{runtime}" }}')
    lines = [f'name = "{name}"', 'provider = "ssh"', "containers_per_worker = 2", f'model = "{model}"',
             *(f"{k} = {toml_value(v)}" for k, v in (top or {}).items()),
             "[ssh]", f'key = "{net.client_key}"', 'user = "root"', f'python = "{sys.executable}"',
             "reach_timeout = 20", "connect_timeout = 3",
             # the hosts' sshd reads this file (the controller's key goes there), never ~/.ssh of this machine
             f'authorized_keys = "{net.authorized_keys}"',
             # in-flight requests on a host that vanished are retried elsewhere after this
             'orchestrator_env = { ORCH_FORWARD_TIMEOUT_S = "4" }',
             *(f"{k} = {toml_value(v)}" for k, v in ssh.items()),
             f"orchestrator = {host(orchestrator)}",
             "workers = [ " + ", ".join(host(w) for w in workers) + " ]"]
    if spares:
        lines.append("spares = [ " + ", ".join(host(s) for s in spares) + " ]")
    if autoscale:
        lines += ["[autoscale]", *(f"{k} = {toml_value(v)}" for k, v in autoscale.items())]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class UpCluster:
    """An ssh cluster that `up` started on the test hosts."""
    name: str
    home: Path    # its MLCLUSTER_HOME
    config: Path  # the config file `up` read
    state: dict   # its state.json as `up` left it
    up_s: float   # how long `up` took
    result: subprocess.CompletedProcess  # what `up` printed

    @property
    def url(self) -> str:
        return self.state["orchestrator_url"]


@contextmanager
def up_cluster(home: Path, net: SSHTestNetwork, model: str, workers: list[str], name: str = CLUSTER,
               up_args: tuple[str, ...] = (), up_timeout: float = 600.0, **options) -> Iterator[UpCluster]:
    """`mlcluster up --provider ssh` of cluster `name` on these hosts, which
    must succeed (`options`: `toml_config`'s; `up_args`: more of `up`'s own);
    `mlcluster down` afterwards."""
    config = cluster_config(home, net, model, workers, name=name, **options)
    started = time.monotonic()
    result = cli("up", "--provider", "ssh", "--config", str(config), *up_args, timeout=up_timeout, home=home,
                 check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    up_s = time.monotonic() - started
    print(f"\n`mlcluster up` of {name} ({len(workers)} worker hosts): {up_s:.1f} s")
    state = json.loads((home / name / "state.json").read_text())
    try:
        yield UpCluster(name, home, config, state, up_s, result)
    finally:
        cli("down", "--name", name, "--yes", home=home, check=False)


def cluster_fixture(workers: list[str], name: str = CLUSTER, model: str = "", scope: str = "module", **options):
    """A `cluster` fixture (module-scoped unless `scope` says otherwise): the
    `UpCluster` of `model` (by default the `tiny_model`) on the module's `net`,
    in a home of its own; `options`: `up_cluster`'s. `down` after the last test."""
    @pytest.fixture(scope=scope)
    def cluster(net, request, tmp_path_factory):
        chosen = model or request.getfixturevalue("tiny_model")
        with up_cluster(tmp_path_factory.mktemp("home"), net, chosen, workers, name=name, **options) as up:
            yield up
    return cluster


def status(url: str) -> dict:
    return requests.get(f"{url}/status", timeout=5).json()


def containers(url: str) -> dict[str, str]:
    """Container id -> status ("free", "busy", "draining", "down"...) as the orchestrator at `url` shows them."""
    return {c["id"]: c["status"] for c in status(url)["containers"]}


def autoscale(name: str, home: Optional[Path] = None) -> dict:
    """The controller's published state: `status --json`'s "autoscale" ({} until it has published)."""
    return json.loads(cli("status", "--name", name, "--json", home=home).stdout).get("autoscale") or {}


def events(name: str, home: Optional[Path] = None) -> list[dict]:
    """The controller's decisions, as `mlcluster events --json` lists them."""
    return json.loads(cli("events", "--name", name, "--json", home=home).stdout)["events"]


def controller_events(host: TestHost) -> list[dict]:
    """The events the controller on `host` wrote (its events.jsonl; [] before the first)."""
    path = host.workdir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@contextmanager
def controller_shown(host: TestHost) -> Iterator[None]:
    """A failed assertion inside prints what the controller on `host` did
    first (the tail of its log, its events), then fails as it would."""
    try:
        yield
    except AssertionError:
        log = host.workdir / "controller.log"
        print(log.read_text()[-5000:] if log.exists() else "(no controller.log)", controller_events(host))
        raise


class LineReader:
    """The lines a process writes to stdout, read on a thread as they come,
    so a test can wait for one without blocking on a read."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))


def our_processes(net: SSHTestNetwork, name: str) -> list[str]:
    """Processes in a host's namespace other than its sshd and dockerd."""
    host = net.hosts[name]
    pids = subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True, text=True).stdout.split()

    def comm(pid: str) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text(errors="replace")
        except OSError:
            return "containerd (gone)"
    return [p for p in pids if int(p) not in (host.sshd_pid, host.dockerd_pid) and "containerd" not in comm(p)]


def environ(pid: str) -> list[bytes]:
    """A process's environment, as "KEY=value" entries ([] once it is gone)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def marked(net: SSHTestNetwork, name: str, cluster: str) -> list[str]:
    """The processes of `cluster` on host `name`: its marker in their environment (not sshd's sessions)."""
    needle = f"MLCLUSTER_MARKER=ssh:{cluster}:{name}".encode()
    return [p for p in our_processes(net, name) if needle in environ(p)]


def worker_ids(net: SSHTestNetwork, name: str, cluster: str) -> set[bytes]:
    """The worker containers of `cluster` running on host `name` (a worker is more than one process)."""
    return {v for p in marked(net, name, cluster) for v in environ(p) if v.startswith(b"WORKER_ID=")}


def docker_on(host: TestHost, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The docker client against a test host's own engine (not over SSH)."""
    return subprocess.run(["docker", "-H", host.docker_host, *args], capture_output=True, text=True, timeout=timeout)


def docker_containers(host: TestHost, cluster: str, state: str = "") -> list[str]:
    """The names of `cluster`'s containers on a test host's engine, sorted: all, or those in `state` ("running")."""
    filters = ["--filter", f"label=mlcluster.cluster={cluster}"] + (["--filter", f"status={state}"] if state else [])
    return sorted(docker_on(host, "ps", "-a", *filters, "--format", "{{.Names}}", timeout=60).stdout.split())


@contextmanager
def bench_network(*names: str, prefix: str) -> Iterator[tuple[SSHTestNetwork, Path]]:
    """For a benchmark script: SSH test hosts with these names and a temporary
    directory, both gone afterwards; the script exits with a sentence where
    the hosts cannot be made here."""
    reason = missing_facilities()
    if reason:
        raise SystemExit(f"the SSH test network cannot be made here: {reason}")
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, SSHTestNetwork() as net:
        net.add_hosts(list(names))
        yield net, Path(tmp)
