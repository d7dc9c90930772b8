"""`up` and `down`'s part of an ssh cluster's controller (elastic/pool.py).

The controller's SSH credential is its own: a per-cluster ed25519 key pair
made by the first `up`, the private key kept only in the cluster's state
directory here (0600) and in its directory on the orchestrator's host (0600);
its public key is added to each pool host's authorized_keys, restricted to
the orchestrator's address (`from=`) and to commands (no forwarding, no pty),
tagged `mlcluster-controller:<cluster>` so `down` removes exactly that line.
The user's own key never leaves this machine.

The controller is a process on the orchestrator's host whatever its runtime:
on a Docker host, `up` prepares that host's Python as the process runtime does
(never a controller container with the Docker socket: that is root on the
host). The pool is every worker host and spare, each with its own runtime
(elastic/poolruntime.py).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import time
from pathlib import Path
from shlex import quote
from typing import Iterator, Optional

from ..deploy import watchdog
from ..deploy.docker import has_docker
from ..deploy.host import RemoteHost, ServiceSpec
from ..deploy.options import RemoteOptions
from ..deploy.process import ProcessRuntime
from ..deploy.session import Session
from ..errors import MlclusterError
from ..remote.connection import run_on_hosts
from ..state import ClusterSpec, ClusterState, write_private
from ..ui import QuietUI
from . import events
from .events import EVENTS_FILE, Event
from .pool_here import CONTROLLER, KEY_FILE, ensure_here, start
from .poolconfig import (
    CONFIG_FILE,
    STATE_FILE,
    AWSFleet,
    PoolConfig,
    PoolMember,
    WorkerSpec,
    healed_pids,
    started_by,
)
from .poolruntime import docker_command, python_of
from .published import PUBLISHED_FILE, parse_published
from .settings import autoscale_config


def tag(cluster: str) -> str:
    return f"mlcluster-controller:{cluster}"


def controller_key(directory: Path) -> tuple[str, str]:
    """(the private key in OpenSSH format, the public key "ssh-ed25519 AAAA..."),
    made once per cluster and kept (0600) in its state directory."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    private, public = directory / KEY_FILE, directory / f"{KEY_FILE}.pub"
    if private.exists() and public.exists():
        return private.read_text(), public.read_text().strip()
    key = Ed25519PrivateKey.generate()
    text = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode()
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    write_private(private, text)
    write_private(public, line + "\n")
    return text, line


def forget_key(directory: Path) -> None:
    for name in (KEY_FILE, f"{KEY_FILE}.pub"):
        (directory / name).unlink(missing_ok=True)


def authorized_line(public: str, cluster: str, from_address: str) -> str:
    """The authorized_keys line: only from the orchestrator's address (when it is
    an IP address), no forwarding, no pty; tagged with the cluster."""
    options = "no-agent-forwarding,no-port-forwarding,no-X11-forwarding,no-pty"
    try:
        options = f'from="{ipaddress.ip_address(from_address)}",' + options
    except ValueError:
        pass  # a host name: sshd would need a reverse lookup to match it, so no restriction by address
    return f"{options} {public} {tag(cluster)}"


def _file(path: str) -> str:
    """The authorized_keys path as a shell word (a leading ~/ is the login's home)."""
    return f'"$HOME"/{quote(path[2:])}' if path.startswith("~/") else quote(path)


def _locked(script: str, *args: str) -> str:
    """`script` run by sh with `args` ($1, $2...; the file "$f" among them), holding an flock on "$f"
    where flock exists: hosts that share one home directory (NFS; the test hosts share this machine's
    files) change the file one at a time, so no line is written twice and none is lost."""
    run = f"sh -c {quote(script)} sh {' '.join(args)}"
    return f'if command -v flock >/dev/null 2>&1; then flock "$f" {run}; else {run}; fi'


def authorize(host: RemoteHost, line: str, path: str) -> None:
    """Add the controller's line to the host's authorized_keys unless it is there."""
    key = line.split()[-2]
    add = 'grep -qF -- "$1" "$2" || printf "%s\\n" "$3" >>"$2"'
    host.run(f"f={_file(path)}; mkdir -p \"$(dirname \"$f\")\" && touch \"$f\" && "
             + _locked(add, quote(key), '"$f"', quote(line)), timeout=30)


def unauthorize(host: RemoteHost, cluster: str, path: str) -> None:
    """Remove the cluster's controller line(s) (the file keeps its inode and mode)."""
    drop = ('if grep -qE -- "$1" "$2"; then grep -vE -- "$1" "$2" >"$2.mlcluster.$$"; '
            'cat "$2.mlcluster.$$" >"$2"; rm -f "$2.mlcluster.$$"; fi')
    host.run(f"f={_file(path)}; [ -f \"$f\" ] || exit 0; " + _locked(drop, quote(" " + tag(cluster) + "$"), '"$f"'),
             timeout=30, warn=True)


def adopt_healed(session: Session, orchestrator: str) -> None:
    """A second `up`: the workers the controller restarted (healed) run under new
    pids, which it keeps in its state file on the orchestrator's host; the
    records take them, so `up` finds them running and starts nothing twice."""
    host = session.hosts.get(orchestrator)
    if host is None or CONTROLLER not in session.resources.services:
        return
    text = host.run(f"cat {quote(host.path(STATE_FILE))} 2>/dev/null", warn=True).stdout
    for sid, pid in healed_pids(text).items():
        record = session.resources.services.get(sid)
        if record is not None and record.runtime == "process" and record.pid != pid:
            session.record_service(sid, dataclasses.replace(record, pid=pid))


def started_remotely(state: ClusterState) -> set[str]:
    """The containers the controller on the orchestrator's host started (stand-ins, scaled up): not
    `up`'s to drain as stale (cluster.register); none without a controller."""
    if CONTROLLER not in state.resources.services:
        return set()
    return started_by(read_on_orchestrator(state, STATE_FILE))


def first_boot_line(line: str, user: str) -> str:
    """User data (root, first boot) that lets the controller log in to a replacement instance as `user`."""
    return (f"\nh=$(getent passwd {quote(user)} | cut -d: -f6) && install -d -m 700 -o {quote(user)} \"$h/.ssh\" && "
            f"printf '%s\\n' {quote(line)} >>\"$h/.ssh/authorized_keys\" && "
            f"chown {quote(user)} \"$h/.ssh/authorized_keys\" && chmod 600 \"$h/.ssh/authorized_keys\"\n")


def ensure(session: Session, spec: ClusterSpec, options: RemoteOptions, workers: dict[str, ServiceSpec],
           models: dict[str, str], ui: QuietUI, fleet: Optional[AWSFleet] = None) -> None:
    """`up`'s last step on an ssh or aws cluster: the controller's key on the pool
    hosts, its config and the controller itself on the orchestrator's host.
    `workers`: up's worker containers by id (where each runs: its record);
    `fleet` (aws): how it replaces a lost worker instance (its user data gets the key's line)."""
    orch = options.orchestrator
    pool = [*options.workers, *options.spares]  # either runtime (elastic/poolruntime.py)
    if not pool:
        return
    if orch.local:  # this machine's (a local Docker cluster): no key, no SSH
        return ensure_here(session, spec, options, workers, models, ui)
    host = session.hosts[orch.name]
    if "python" not in host.facts:  # a Docker orchestrator host: the controller runs as a process all the same
        with ui.step(f"{orch.name}: a Python environment for the controller") as step:
            ProcessRuntime().prepare(host, step)
    if fleet is not None:
        leave_worker_image(session, options, ui)
    private, public = controller_key(session.state.dir)
    line = authorized_line(public, spec.name, orch.private_address)
    run_on_hosts([h.name for h in pool],
                 lambda name, step: authorize(session.hosts[name], line, options.authorized_keys),
                 ui, what="adding the controller's key")
    members = [PoolMember(host=dataclasses.replace(h, address=h.private_address, key=host.path(KEY_FILE)),
                          host_key=session.store.get(h.address, h.port) or "",
                          python=python_of(session.hosts[h.name].facts, h.python), model=models.get(h.name, ""),
                          slots=spec.containers_per_worker, runtime=h.runtime,
                          images=dict(session.hosts[h.name].facts.get("images", {}))) for h in pool]
    records = session.resources.services
    idle_s, deadline = watchdog.settings(spec, session.state.resources) or (None, None)
    config = PoolConfig(
        cluster=spec.name, admin_url=f"http://127.0.0.1:{options.admin_port}", token=session.state.token,
        worker_port=options.worker_port, host_grace_s=options.host_grace, heal_grace_s=spec.heal_grace,
        host=orch.name, idle_s=idle_s or 0.0, deadline=deadline or 0.0,
        docker=docker_command(orch.runtime, host.facts),
        hosts=[m for m in members if m.host_key],
        workers=[WorkerSpec(id=sid, home=records[sid].host, port=s.port, env=s.env, model_dir=s.model_dir,
                            pid=records[sid].pid, log=records[sid].log)
                 for sid, s in sorted(workers.items())
                 if sid in records and records[sid].host in {h.name for h in pool}],
        aws=(dataclasses.replace(fleet, user_data=fleet.user_data + first_boot_line(line, fleet.user))
             if fleet else None),
        autoscale=autoscale_config(spec, 0))  # target 0: the containers' capacity (elastic/poolscaler.py)
    with ui.step(f"starting the controller on {orch.name}"):
        record = start(host, config, private, f"ssh:{spec.name}:{orch.name}", records.get(CONTROLLER))
        session.record_service(CONTROLLER, dataclasses.replace(record, host=orch.name))


def leave_worker_image(session: Session, options: RemoteOptions, ui: QuietUI) -> None:
    """aws, Docker workers, images "ship" or "build": the worker image made present in the orchestrator
    host's engine, as on a worker host, so that the controller ships it to an instance it launches
    (elastic/poolprepare.py; "pull": that instance pulls it itself)."""
    orch = options.orchestrator
    host = session.hosts[orch.name]
    if options.images == "pull" or not any(h.runtime == "docker" for h in [*options.workers, *options.spares]) \
            or not has_docker(host):
        return
    runtime = session.runtime("docker")
    with ui.step(f"{orch.name}: the worker image, for the instances the controller launches") as step:
        step.update(f"{orch.name}: getting the worker image ({options.images})")
        runtime.get_image(host, runtime.worker_kind)


def remove(session: Session, host: RemoteHost, options: Optional[RemoteOptions]) -> None:
    """`down` on one host: the controller's key line goes (from the configured file, else the default),
    and on its host its key and config (the config holds the admin token); its log and events stay."""
    unauthorize(host, session.state.name, options.authorized_keys if options else "~/.ssh/authorized_keys")
    host.run("rm -f " + " ".join(quote(host.path(name)) for name in (KEY_FILE, CONFIG_FILE, STATE_FILE)), warn=True)


# -- what `mlcluster events` reads of it -------------------------------------------
def read_on_orchestrator(state: ClusterState, name: str) -> str:
    """A file of the controller's directory on the orchestrator's host, over SSH ("" when there is none)."""
    session = Session(state, None)
    try:
        record = session.resources.services.get("orchestrator")
        if record is None or record.host not in session.resources.hosts:
            return ""
        host = session.connect(session.resources.hosts[record.host], 10.0)
        host.prepare_workdir()
        return host.run(f"cat {quote(host.path(name))} 2>/dev/null", warn=True).stdout
    finally:
        session.close()


def remote_events(state: ClusterState) -> list[Event]:
    """The controller's events ([] when it wrote none)."""
    return events.parse(read_on_orchestrator(state, EVENTS_FILE).splitlines())


def remote_status(state: ClusterState) -> Optional[dict]:
    """`status --json`'s `autoscale` object for an ssh cluster (None: no controller), with
    `running`: it published within the last 30 s (it does every 10 s)."""
    if CONTROLLER not in state.resources.services:
        return None
    try:
        found = parse_published(read_on_orchestrator(state, PUBLISHED_FILE))
    except MlclusterError:
        return None  # its host does not answer: `status` says what it can without it
    if found is None:
        return None
    return {**found.to_json(), "running": time.time() - found.updated_at < 30}


def follow_remote(state: ClusterState, last: Optional[int], poll_s: float = 2.0) -> Iterator[Event]:
    """The `last` events, then each new one as the controller writes it (read again every `poll_s`)."""
    seen = remote_events(state)
    yield from seen[-last:] if last else seen
    while True:
        time.sleep(poll_s)
        now = remote_events(state)
        yield from now[len(seen):]
        seen = now
