"""A port on this machine's loopback forwarded through a checked SSH connection
to an address as the remote host sees it (ssh -L, over paramiko's direct-tcpip
channels), so admin traffic to a remote orchestrator travels only inside SSH.

    with Forward(conn, "127.0.0.1", 8001) as fwd:
        requests.post(f"{fwd.url}/workers", ...)   # reaches 127.0.0.1:8001 on the host

Written here rather than taken from `sshtunnel`: that library opens its own
transport (with its own host-key handling), while this one rides the
Connection whose host key was already checked against the cluster's state.
One thread accepts; each accepted connection gets a thread pumping bytes both
ways until either side closes. paramiko's exceptions stay in this module.
"""
from __future__ import annotations

import select
import socket
import threading

import paramiko

from ..errors import MlclusterError
from .connection import Connection

CHUNK = 65536


class Forward:
    """Listens on 127.0.0.1:<free port> while open; see the module docstring."""

    def __init__(self, conn: Connection, remote_host: str, remote_port: int):
        self.conn, self.remote = conn, (remote_host, int(remote_port))
        self._listener: socket.socket | None = None
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def local_port(self) -> int:
        return self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def __enter__(self) -> "Forward":
        self.conn.open()  # connect (and check the host key) now, so a failure is raised here
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="mlcluster-forward")
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return  # the listener was closed
            try:
                channel = self.conn.open().get_transport().open_channel(
                    "direct-tcpip", self.remote, peer, timeout=self.conn.connect_timeout)
            except (paramiko.SSHException, OSError, MlclusterError):
                client.close()  # the client sees a closed connection: a connection error, not a hang
                continue
            self._spawn(self._pump, client, channel)

    def _pump(self, client: socket.socket, channel: paramiko.Channel) -> None:
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select([client, channel], [], [], 0.2)
                if client in ready:
                    data = client.recv(CHUNK)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in ready:
                    data = channel.recv(CHUNK)
                    if not data:
                        break
                    client.sendall(data)
        except (OSError, paramiko.SSHException):
            pass  # either end went away: close both
        finally:
            channel.close()
            client.close()
