"""The pool's hosts as the controller of an ssh cluster (elastic/pool.py) reaches
them: over SSH with its own key, host keys pinned (never trusted on first use),
a trivial command as the probe of whether a host answers, and a free port there.
A local Docker cluster's hosts (`HostConfig.local`) are this machine: LocalHosts,
no key and no SSH; a free port there is one free on 127.0.0.1."""
from __future__ import annotations

import logging
from pathlib import Path
from shlex import quote
from typing import Optional

from ..deploy import localhost
from ..deploy.host import Host, LocalHost, RemoteHost
from ..errors import MlclusterError
from ..remote.connection import HostKeyStore
from .poolconfig import PoolMember

log = logging.getLogger("mlcluster.elastic.pool")
PROBE_TIMEOUT_S = 2.0
PORTS_TRIED = 50  # from worker_port up, for a stand-in


def marker(cluster: str, host: str) -> str:
    """deploy/remote.py's marker: `down` finds every process of ours by it."""
    return f"ssh:{cluster}:{host}"


class PinnedKeys(HostKeyStore):
    """The host keys `up` recorded; a host without one is refused, never trusted on
    first use, but for an instance the controller itself just launched (`first_use`):
    its key is recorded at the first login, as `up` does for a new instance, then pinned."""

    def __init__(self, keys: dict[str, str]):
        super().__init__(keys)
        self.new: set[str] = set()

    def first_use(self, host: str, port: int, key: str = "") -> None:
        """`key` pinned for host:port, or none yet: the next one seen is recorded (the address may be a
        reused one: the old instance's key goes)."""
        self.keys.pop(f"{host}:{port}", None)
        if key:
            self.keys[f"{host}:{port}"] = key
        else:
            self.new.add(f"{host}:{port}")

    def record(self, host, port, key) -> None:
        if f"{host}:{port}" not in self.new:
            raise MlclusterError(f"{host}:{port} has no pinned host key: the controller does not trust it")
        self.new.discard(f"{host}:{port}")
        super().record(host, port, key)


class Member:
    """A pool host, its connection and what the controller knows of its reachability."""

    def __init__(self, config: PoolMember, store: HostKeyStore, now: float):
        self.config, self.store = config, store
        self.name = config.host.name
        self.host: Optional[Host] = None
        self.reachable, self.since = True, now

    def probe(self) -> bool:
        try:
            if self.host is None:
                config = self.config.host
                host = LocalHost(Path(config.workdir), config) if config.local else \
                    RemoteHost.connect(config, self.store, PROBE_TIMEOUT_S)
                host.prepare_workdir()
                host.facts["python"] = self.config.python
                self.host = host
            self.host.run("true", timeout=PROBE_TIMEOUT_S)
            return True
        except MlclusterError as exc:
            log.info("%s does not answer: %s", self.name, exc)
            if self.host is not None:
                self.host.close()
            self.host = None
            return False

    def observe(self, answered: bool, now: float) -> None:
        if answered != self.reachable:
            self.reachable, self.since = answered, now

    def free_port(self, first: int, taken: set[int]) -> int:
        """The first port from `first` up not in `taken` that nothing listens on
        here (what the user runs on the host is left alone); on this machine one free on 127.0.0.1
        (a container's port is published there the moment it runs)."""
        if self.config.host.local:
            return localhost.free_port()
        bind = self.config.host.bind
        for port in range(first, first + PORTS_TRIED):
            probe = ("import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                     f"s.bind(({bind!r}, {port}))")
            if port not in taken and self.host.run(f"{quote(self.config.python)} -c {quote(probe)}",
                                                   timeout=15, warn=True).ok:
                return port
        raise MlclusterError(f"{self.name}: no free port in {first}..{first + PORTS_TRIED - 1} for a stand-in")
