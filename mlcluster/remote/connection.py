"""The SSH connection layer (paramiko): commands that return a result, file
upload, waiting for a host, host-key checks, and work on many hosts at once.

    store = HostKeyStore(state.resources.host_keys, on_change=state.save)
    with Connection("10.0.0.11", "ubuntu", key_path="~/.ssh/id_ed25519", known_hosts=store) as c:
        c.wait_reachable(time.monotonic() + 120)
        result = c.run("nproc", timeout=30)          # raises UnexpectedExit on a non-zero exit
        c.put("ctx.tar.gz", "/home/ubuntu/ctx.tar.gz")

Two time-outs, never confused: `connect_timeout` (TCP + SSH handshake +
authentication) and each command's `timeout`.

Host keys: a host seen for the first time has its key recorded in the store
(trust on first use: the store lives in the cluster state); afterwards that key
is required (paramiko's RejectPolicy) and a different one is refused with an
MlclusterError (`HostKeyChanged`). paramiko's exceptions never leave this module.
"""
from __future__ import annotations

import base64
import errno
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import paramiko

from ..errors import MlclusterError
from .group import HostOutcome, HostsFailed, run_on_hosts
from .results import (
    CommandFailed,
    CommandTimedOut,
    HostKeyChanged,
    Result,
    UnexpectedExit,
    Unreachable,
    fingerprint,
    quote,
    short,
)

__all__ = ["Connection", "Result", "HostKeyStore", "UnexpectedExit", "CommandTimedOut", "CommandFailed",
           "HostKeyChanged", "Unreachable", "load_private_key", "fingerprint", "classify_connect_error",
           "run_on_hosts", "HostOutcome", "HostsFailed", "quote"]


# -- host keys -----------------------------------------------------------------
class HostKeyStore:
    """Known host keys, kept in a plain dict (the cluster state's
    `resources.host_keys`): `"host:port" -> "keytype base64"`.
    `on_change` (e.g. `state.save`) runs whenever a key is first recorded."""

    def __init__(self, keys: Optional[dict[str, str]] = None, on_change: Optional[Callable[[], None]] = None,
                 lock: Optional[threading.RLock] = None):
        self.keys = keys if keys is not None else {}
        self.on_change = on_change
        self._lock = lock or threading.RLock()  # share the state's lock when `on_change` saves it

    def get(self, host: str, port: int) -> Optional[str]:
        with self._lock:
            return self.keys.get(f"{host}:{port}")

    def record(self, host: str, port: int, key: paramiko.PKey) -> None:
        with self._lock:
            self.keys[f"{host}:{port}"] = f"{key.get_name()} {key.get_base64()}"
            if self.on_change:
                self.on_change()


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Used only when the store has no key for the host: record it."""

    def __init__(self, store: HostKeyStore, host: str, port: int):
        self.store, self.host, self.port = store, host, port

    def missing_host_key(self, client, hostname, key) -> None:
        self.store.record(self.host, self.port, key)


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def load_private_key(path: str | Path) -> paramiko.PKey:
    """An ed25519, RSA or ECDSA private key, or an MlclusterError saying why not."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MlclusterError(f"SSH key {path} does not exist", "set `key` in the [ssh] config to a private key file")
    errors = []
    for kind in (paramiko.Ed25519Key, paramiko.RSAKey, paramiko.ECDSAKey):
        try:
            return kind.from_private_key_file(str(path))
        except paramiko.PasswordRequiredException:
            raise MlclusterError(f"SSH key {path} is protected by a passphrase",
                                 "use a key without a passphrase (or one loaded in your agent is not supported yet)")
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(str(exc))
    raise MlclusterError(f"SSH key {path} is not an ed25519, RSA or ECDSA private key", "; ".join(errors)[:200])


_HINTS = {"auth": "check `user` and `key` for this host in the [ssh] config",
          "refused": "nothing accepts SSH there: is sshd running, and is the host's `port` right?"}


# -- the connection --------------------------------------------------------------
class Connection:
    """One SSH connection to one host, opened lazily on first use; a context manager.

    `host` is what we connect to; `label` (default `host`) is how messages
    name it. `known_hosts` checks host keys (trust on first use, then strict)."""

    def __init__(self, host: str, user: str = "root", port: int = 22, key_path: str | Path | None = None,
                 connect_timeout: float = 10.0, known_hosts: Optional[HostKeyStore] = None,
                 label: str = ""):
        self.host, self.user, self.port = host, user, port
        self.key_path = Path(key_path).expanduser() if key_path else None
        self.connect_timeout = connect_timeout
        self.known_hosts = known_hosts if known_hosts is not None else HostKeyStore()
        self.label = label or (host if port == 22 else f"{host}:{port}")
        self._client: Optional[paramiko.SSHClient] = None
        self._lock = threading.Lock()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- opening -----------------------------------------------------------
    def open(self) -> paramiko.SSHClient:
        """Connect and log in (once); raises Unreachable or HostKeyChanged."""
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is None or not transport.is_active():
                self._client = self._connect()
            return self._client

    def _connect(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        known = self.known_hosts.get(self.host, self.port)
        if known:
            kind, b64 = known.split(" ", 1)
            client.get_host_keys().add(_known_hosts_name(self.host, self.port), kind,
                                       paramiko.PKey.from_type_string(kind, base64.b64decode(b64)))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            client.set_missing_host_key_policy(_TrustOnFirstUse(self.known_hosts, self.host, self.port))
        pkey = load_private_key(self.key_path) if self.key_path else None
        try:
            client.connect(self.host, port=self.port, username=self.user, pkey=pkey,
                           timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout, channel_timeout=self.connect_timeout,
                           allow_agent=pkey is None, look_for_keys=pkey is None)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyChanged(self.label, known or "?", f"{exc.key.get_name()} {exc.key.get_base64()}") from None
        except Exception as exc:  # every way a connect can fail becomes one sentence
            client.close()
            where = self.label if self.label == self.host else f"{self.label} ({self.host}:{self.port})"
            kind, reason = classify_connect_error(exc, self.user)
            raise Unreachable(where, reason, _HINTS.get(kind, ""), kind) from None
        client.get_transport().set_keepalive(15)
        return client

    def wait_reachable(self, deadline: float, on_wait: Optional[Callable[[str], None]] = None,
                       interval: float = 1.0, auth_grace_s: float = 0.0, retry_refused: bool = True,
                       sleep: Callable[[float], None] = time.sleep) -> None:
        """Try to connect until `deadline` (time.monotonic()); `on_wait(reason)`
        hears why it still waits. An unknown host name or a changed host key
        stops at once; so does a refused login unless `auth_grace_s` > 0 (a new
        machine installs its key after sshd starts), and a refused connection
        unless `retry_refused` (a machine booting; from a host that is up it is
        an answer). Decided by `Unreachable.kind`; the last failure is raised."""
        configured = self.connect_timeout
        auth_deadline = 0.0
        while True:
            # The last attempt gets only what is left before the deadline.
            self.connect_timeout = max(1.0, min(configured, deadline - time.monotonic()))
            try:
                self.open()
                return
            except Unreachable as exc:
                if exc.kind == "auth" and auth_grace_s > 0:
                    auth_deadline = auth_deadline or time.monotonic() + auth_grace_s
                    if time.monotonic() > auth_deadline:
                        raise
                elif exc.kind in Unreachable.FINAL or (exc.kind == "refused" and not retry_refused):
                    raise
                if time.monotonic() + interval >= deadline:
                    raise
                if on_wait:
                    on_wait(exc.reason)
            finally:
                self.connect_timeout = configured
            sleep(interval)

    # -- commands ----------------------------------------------------------
    def run(self, command: str, timeout: float = 60.0, warn: bool = False, stdin: bytes = b"") -> Result:
        """Run `command` (a shell line) and wait for it, at most `timeout` s.
        Raises UnexpectedExit on a non-zero exit (unless `warn`), CommandTimedOut
        past the time-out (the channel is closed then)."""
        channel = self._session()
        stdout, stderr = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        try:
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            # Output can still be in flight when the exit status arrives: read
            # until the server's EOF, then take the status.
            while not (channel.eof_received and not channel.recv_ready() and not channel.recv_stderr_ready()
                       and channel.exit_status_ready()):
                if time.monotonic() > deadline:
                    raise CommandTimedOut(self._result(command, stdout, stderr, -1), timeout)
                _drain(channel, stdout, stderr, wait=min(0.2, max(0.0, deadline - time.monotonic())))
            result = self._result(command, stdout, stderr, channel.recv_exit_status())
        except (paramiko.SSHException, socket.error) as exc:
            raise Unreachable(self.label, f"the connection broke while running `{short(command, 60)}`: {exc}",
                              kind="broken") from None
        finally:
            channel.close()
        if not result.ok and not warn:
            raise UnexpectedExit(result)
        return result

    def stream(self, command: str) -> Iterator[str]:
        """Lines of a command's output (stdout and stderr) as they come, until it
        ends or the caller stops iterating (the channel is closed then)."""
        channel = self._session()
        channel.settimeout(None)
        channel.set_combine_stderr(True)
        try:
            channel.exec_command(command)
            buffer = b""
            for chunk in iter(lambda: channel.recv(65536), b""):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
            if buffer:
                yield buffer.decode(errors="replace")
        except (paramiko.SSHException, socket.error) as exc:
            raise Unreachable(self.label, f"the connection broke while streaming: {exc}", kind="broken") from None
        finally:
            channel.close()

    def put(self, local: str | Path, remote: str, mode: Optional[int] = None) -> None:
        """Upload a file over SFTP (`remote` absolute or relative to the login directory)."""
        try:
            with self.open().open_sftp() as sftp:
                sftp.put(str(local), remote)
                if mode is not None:
                    sftp.chmod(remote, mode)
        except (OSError, paramiko.SSHException) as exc:
            raise MlclusterError(f"uploading {local} to {self.label}:{remote} failed: {exc}") from None

    def put_text(self, text: str, remote: str, mode: int = 0o600) -> None:
        """Write `text` to a remote file, created with `mode` before any byte is
        written (for secrets: the token never appears on a command line)."""
        try:
            with self.open().open_sftp() as sftp:
                with sftp.open(remote + ".tmp", "w") as f:
                    f.chmod(mode)
                    f.write(text.encode())
                sftp.posix_rename(remote + ".tmp", remote)
        except (OSError, paramiko.SSHException) as exc:
            raise MlclusterError(f"writing {self.label}:{remote} failed: {exc}") from None

    def _session(self) -> paramiko.Channel:
        try:
            return self.open().get_transport().open_session(timeout=self.connect_timeout)
        except (paramiko.SSHException, socket.error) as exc:
            self.close()
            raise Unreachable(self.label, f"could not open a session: {exc}", kind="broken") from None

    def _result(self, command: str, stdout: bytearray, stderr: bytearray, code: int) -> Result:
        return Result(self.label, command, stdout.decode(errors="replace"), stderr.decode(errors="replace"), code)


def _drain(channel: paramiko.Channel, stdout: bytearray, stderr: bytearray, wait: float) -> None:
    import select
    if wait and not (channel.recv_ready() or channel.recv_stderr_ready()):
        select.select([channel], [], [], wait)
    while channel.recv_ready():
        stdout += channel.recv(65536)
    while channel.recv_stderr_ready():
        stderr += channel.recv_stderr(65536)


def classify_connect_error(exc: BaseException, user: str = "") -> tuple[str, str]:
    """(kind, reason) for a failed connect: the Unreachable kind, and one
    short reason for a person (refused, timed out, no route...)."""
    if isinstance(exc, paramiko.AuthenticationException):
        return "auth", f"authentication failed for user {user!r}" if user else "authentication failed"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        codes = {getattr(e, "errno", None) for e in exc.errors.values()}
        if codes & {errno.EHOSTUNREACH, errno.ENETUNREACH}:
            return "no-route", "no route to host"
        return "refused", "connection refused"
    if isinstance(exc, EOFError):
        return "refused", "the server closed the connection during the SSH handshake"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout", "timed out"
    if isinstance(exc, OSError):
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "no-route", "no route to host"
        if exc.errno == errno.ECONNREFUSED:
            return "refused", "connection refused"
        if isinstance(exc, socket.gaierror):
            return "unknown-host", f"unknown host name ({exc.strerror})"
        return "other", exc.strerror or str(exc)
    if isinstance(exc, paramiko.SSHException):
        text = str(exc)
        if "banner" in text.lower() or "timed out" in text.lower():
            return "timeout", "timed out during the SSH handshake"
        return "other", f"SSH error: {text}"
    return "other", f"{type(exc).__name__}: {exc}"

