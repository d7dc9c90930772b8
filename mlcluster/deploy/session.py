"""The deployment's working set for one command (deploy/remote.py, reading.py)."""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..resources import HostConfig, Service
from ..state import ClusterSpec, ClusterState
from .host import Host, LocalHost, RemoteHost
from .options import RemoteOptions
from .process import ProcessRuntime
from .runtime import Runtime

if TYPE_CHECKING:
    from ..remote.connection import HostKeyStore


class Session:
    """Everything one command needs: the cluster's state and its hosts and services, saved under
    one lock (many threads record what they start at once), the host-key store (made when a remote
    host is first reached: it loads paramiko, which a local cluster never does), the connections
    made, and one runtime object per kind."""

    def __init__(self, state: ClusterState, options: Optional[RemoteOptions], spec: Optional[ClusterSpec] = None):
        self.state, self.options = state, options
        self.spec = spec or state.spec  # what `up` deploys (the backend: which worker image)
        self.lock = threading.RLock()
        self._runtimes: dict[str, Runtime] = {}
        self._store: Optional[HostKeyStore] = None
        self.resources = state.resources
        self.hosts: dict[str, Host] = {}

    @property
    def store(self) -> "HostKeyStore":
        with self.lock:
            if self._store is None:
                from ..remote.connection import HostKeyStore
                self._store = HostKeyStore(self.resources.host_keys, on_change=self.save, lock=self.lock)
            return self._store

    @property
    def connect_timeout(self) -> float:
        return self.options.connect_timeout if self.options else 10.0

    def save(self) -> None:
        with self.lock:
            self.state.save()

    def record_host(self, config: HostConfig) -> None:
        with self.lock:
            self.resources.hosts[config.name] = config
            self.state.save()

    def record_service(self, service_id: str, record: Optional[Service]) -> None:
        with self.lock:
            if record is None:
                self.resources.services.pop(service_id, None)
            else:
                self.resources.services[service_id] = record
            self.state.save()

    def services_on(self, host: str) -> dict[str, Service]:
        with self.lock:
            return {k: dataclasses.replace(v) for k, v in self.resources.services.items() if v.host == host}

    def config_of(self, host: str) -> HostConfig:
        """The host's record: as recorded, else as the options have it (a file written before
        this machine's hosts were recorded)."""
        if host in self.resources.hosts or self.options is None:
            return self.resources.hosts[host]
        return self.options.host(host)

    def connect(self, config: HostConfig, timeout: float) -> Host:
        if config.local:
            host: Host = LocalHost(Path(config.workdir), config)
        else:
            host = RemoteHost.connect(config, self.store, timeout)
        self.hosts[config.name] = host
        return host

    def reach(self, config: HostConfig, deadline: float, on_wait=None) -> Host:
        """The host connected, answering (a remote one waited for until `deadline`;
        a refused port is an answer, not a boot in progress) and its working directory made."""
        host = self.connect(config, self.connect_timeout)
        if isinstance(host, RemoteHost):
            host.conn.wait_reachable(deadline, on_wait=on_wait, retry_refused=False)
        host.prepare_workdir()
        return host

    def runtime(self, kind: str) -> Runtime:
        """The runtime object for `kind` (one per command: the Docker one keeps
        what it prepared here once for all hosts)."""
        with self.lock:
            if kind not in self._runtimes:
                if kind == "process":
                    self._runtimes[kind] = ProcessRuntime()
                else:
                    from ..images import worker_kind
                    from .docker import DockerRuntime
                    self._runtimes[kind] = DockerRuntime(self.options, self.state.name, worker_kind(self.spec.backend),
                                                         local=self.state.provider == "local")
            return self._runtimes[kind]

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()
        for runtime in self._runtimes.values():
            runtime.close()
