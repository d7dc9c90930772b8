"""What a command on a host did, and the errors of the SSH layer: plain
records with no paramiko, so code that only reads results (or runs commands on
this machine) never loads it. `Connection` (connection.py) makes them."""
from __future__ import annotations

import base64
import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..errors import MlclusterError


@dataclass
class Result:
    """What a command did on a host."""
    host: str
    command: str
    stdout: str
    stderr: str
    exit_code: int

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, n: int = 10) -> str:
        """The last `n` lines of output (stderr after stdout)."""
        lines = (self.stdout.rstrip("\n") + "\n" + self.stderr.rstrip("\n")).strip("\n").splitlines()
        return "\n".join(lines[-n:])


class CommandFailed(MlclusterError):
    """A command went wrong on a host; `result` holds what it printed."""

    def __init__(self, message: str, result: Result):
        tail = result.tail(8)
        super().__init__(message + (f"; last lines:\n{tail}" if tail else ""))
        self.result = result


class UnexpectedExit(CommandFailed):
    def __init__(self, result: Result):
        super().__init__(f"on {result.host}: `{short(result.command)}` exited with {result.exit_code}", result)


class CommandTimedOut(CommandFailed):
    def __init__(self, result: Result, timeout: float):
        super().__init__(f"on {result.host}: `{short(result.command)}` did not finish within {timeout:g} s", result)
        self.timeout = timeout


class HostKeyChanged(MlclusterError):
    def __init__(self, host: str, expected: str, got: str):
        super().__init__(
            f"the SSH host key of {host} has changed since this cluster first connected "
            f"(recorded {fingerprint(expected)}, now {fingerprint(got)}): refusing to connect, "
            "it may not be the same machine",
            "if the host was reinstalled on purpose, delete its entry under resources.host_keys in the "
            "cluster's state.json and run the command again")


class Unreachable(MlclusterError):
    """The host could not be reached or logged into. `reason` says why, for a
    person; `kind` is what callers branch on: "refused", "timeout", "no-route",
    "auth" (the login was refused), "unknown-host" (the name does not resolve),
    "broken" (an open connection broke) or "other"."""

    KINDS = ("refused", "timeout", "no-route", "auth", "unknown-host", "broken", "other")
    FINAL = ("auth", "unknown-host")  # waiting cannot fix these

    def __init__(self, host: str, reason: str, hint: str = "", kind: str = "other"):
        super().__init__(f"cannot reach {host} over SSH: {reason}", hint)
        assert kind in self.KINDS, kind
        self.host, self.reason, self.kind = host, reason, kind


def fingerprint(key: str) -> str:
    """OpenSSH's form of a key's fingerprint: "ssh-ed25519 SHA256:..." from "type base64"."""
    try:
        kind, b64 = key.split()[:2]
        digest = base64.b64encode(hashlib.sha256(base64.b64decode(b64)).digest()).decode().rstrip("=")
        return f"{kind} SHA256:{digest}"
    except (ValueError, IndexError):
        return key


def short(command: str, limit: int = 160) -> str:
    return command if len(command) <= limit else command[:limit] + " ..."


def quote(value: str | Path) -> str:
    return shlex.quote(str(value))
