"""The plumbing under the SSH test hosts (sshhosts.py): what they need from this
machine, `ip`, key generation, killing by pid, links and mounts; and the mask that
keeps this machine's shell start-up files out of the hosts' sessions.

The hosts share this machine's filesystem, so sshd's sessions would run root's
~/.bashrc (Debian's bash reads it for a command sent over SSH). Whatever this
machine's own shell set-up does there (a `pyenv init` that rehashes under a lock
on every command: up to 60 s a command once a killed session left the lock) is
not a fresh host's: sshd runs in its own mount namespace with an empty file
bound over each of them (`masked_rc_files`).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from shlex import quote
from typing import Optional

SSHD = "/usr/sbin/sshd"
DOCKERD_CANDIDATES = ("/usr/sbin/dockerd", "/usr/bin/dockerd")


def missing_facilities(docker: bool = False) -> Optional[str]:
    """Why SSH test hosts cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, sshd as root)"
    if not shutil.which("ip"):
        return "needs iproute2's `ip` (run .ci/setup-ssh.sh)"
    if not os.path.exists(SSHD):
        return "needs Debian's openssh-server at /usr/sbin/sshd (run .ci/setup-ssh.sh)"
    if not shutil.which("unshare") or not shutil.which("nsenter") or not shutil.which("ssh-keygen"):
        return "needs unshare, nsenter and ssh-keygen (run .ci/setup-ssh.sh)"
    probe = f"mlct-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create network namespaces: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if docker and not dockerd_path():
        return "needs dockerd (run .ci/setup-docker.sh)"
    return None


def dockerd_path() -> Optional[str]:
    return next((p for p in DOCKERD_CANDIDATES if os.path.exists(p)), None)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def keygen(path: Path, kind: str) -> None:
    args = ["-t", kind] + (["-b", "3072"] if kind == "rsa" else [])
    subprocess.run(["ssh-keygen", "-q", *args, "-N", "", "-C", f"mlct-{kind}", "-f", str(path)],
                   check=True, capture_output=True)


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    if pid:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return ""


def links() -> list[str]:
    return [link.get("ifname", "") for link in json.loads(ip("-j", "link", "show", check=False).stdout or "[]")]


def unmount_under(path: Path) -> None:
    """dockerd leaves overlay/shm mounts under its data root when killed."""
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)


RC_FILES = ("~/.bashrc", "/etc/bash.bashrc")


def masked_rc_files(empty: Path) -> str:
    """A shell prefix, run inside a new mount namespace, that binds `empty` over
    each shell start-up file of RC_FILES that exists (none: nothing to do)."""
    empty.touch()
    binds = [f"mount --bind {quote(str(empty))} {quote(path)}"
             for path in (os.path.expanduser(rc) for rc in RC_FILES) if os.path.isfile(path)]
    return "".join(f"{bind} && " for bind in binds)
