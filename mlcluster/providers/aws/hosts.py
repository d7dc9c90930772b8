"""From running EC2 instances to the deployment layer's hosts: the first-boot
script that makes a fresh image ready for the ssh deployment (Python >= 3.10
with venv, Docker), the hosts with the user's `[ssh]` settings, and waiting
(with a deadline, never forever) until they answer SSH."""
from __future__ import annotations

import time
from typing import Any, Callable

from ...config import check_known
from ...deploy.options import (
    HEALING,
    HOST_SETTINGS,
    SETTINGS,
    RemoteOptions,
    bind_for,
    check_port,
    host_settings,
    parse_healing,
    parse_ports,
    parse_settings,
)
from ...errors import MlclusterError
from ...remote.connection import Connection, HostKeyStore, Unreachable, run_on_hosts
from ...resources import HostConfig
from ...state import ClusterSpec
from ...ui import QuietUI
from .ec2 import Instance
from .options import AWSOptions

# Set by AWS on every instance, not ours to choose: the [ssh] table's hosts.
FROM_AWS = ("orchestrator", "workers", "key", "user")
AUTH_GRACE_S = 90.0  # sshd can answer before cloud-init has installed the key

_USER_DATA = {
    "al2023": """#!/bin/bash
# mlcluster: what the ssh deployment needs on a fresh Amazon Linux 2023.
set -eu
dnf install -y -q python3.11 python3.11-pip docker tar gzip
ln -sf /usr/bin/python3.11 /usr/local/bin/python3   # the venv's Python: >= 3.10
systemctl enable --now docker
usermod -aG docker {user}
""",
    "ubuntu": """#!/bin/bash
# mlcluster: what the ssh deployment needs on a fresh Ubuntu.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q python3-venv docker.io
systemctl enable --now docker
usermod -aG docker {user}
""",
}

# Exit 0 where there is no cloud-init; `status --wait` exits 2 for "done,
# with recoverable errors", which is fine for us.
CLOUD_INIT_WAIT = ("command -v cloud-init >/dev/null 2>&1 || exit 0; cloud-init status --wait >/dev/null 2>&1; "
                   "code=$?; [ $code -eq 2 ] && exit 0; exit $code")


def user_data(o: AWSOptions) -> str:
    return _USER_DATA[o.os].format(user=o.user)


def ports(spec: ClusterSpec) -> tuple[int, int]:
    """(orchestrator port, first worker port) as the ssh deployment will use them."""
    return parse_ports(spec.provider_options.get("ssh") or {})


def addresses(o: AWSOptions, instances: dict[str, Instance]) -> dict[str, tuple[str, str]]:
    """name -> (public, private) address. With `address_map` (tests) every
    instance must be mapped: moto's public IPs are real AWS addresses."""
    out = {}
    for name, inst in instances.items():
        if o.address_map:
            mapped = o.address_map.get(name)
            if mapped is None:
                raise MlclusterError(f"[aws] address_map has no entry for {name}")
            address = mapped if isinstance(mapped, str) else mapped["address"]
            out[name] = (address, address)
        elif not inst.public_ip:
            raise MlclusterError(f"instance {inst.id} ({name}) has no public IP address",
                                 "the default subnets must assign public IPs (the default VPC's do)")
        else:
            out[name] = (inst.public_ip, inst.private_ip or inst.public_ip)
    return out


def remote_options(spec: ClusterSpec, o: AWSOptions, addressed: dict[str, tuple[str, str]],
                   key_file: str) -> RemoteOptions:
    """The instances as the deployment layer's hosts (public address for this
    machine, private address for the orchestrator), with the deployment
    settings the user gave in `[ssh]` (runtime, images, python, ports...)."""
    own: dict[str, Any] = dict(spec.provider_options.get("ssh") or {})
    clash = [k for k in ("orchestrator", "workers") if k in own]
    if clash:
        raise MlclusterError(f"[ssh] {', '.join(clash)} cannot be set with the aws provider: EC2 makes the hosts",
                             "keep only settings such as runtime, images, python or ports in [ssh]")
    check_known(own, SETTINGS | HOST_SETTINGS | set(FROM_AWS) | set(HEALING) | {"port"}, "[ssh]")
    defaults = host_settings(own, spec.name, spec.runtime)
    port = check_port(own.get("port", 22), "[ssh] port")

    def host(name: str) -> HostConfig:
        public, private = addressed[name]
        mapped = o.address_map.get(name)
        workdir = mapped["workdir"] if isinstance(mapped, dict) and "workdir" in mapped else defaults["workdir"]
        return HostConfig(name=name, address=public, private_address=private, user=o.user, port=port, key=key_file,
                          runtime=defaults["runtime"], python=defaults["python"], workdir=workdir,
                          bind=defaults["bind"] or bind_for(private))

    return RemoteOptions(orchestrator=host("orchestrator"), workers=[host(n) for n in addressed if n != "orchestrator"],
                         **parse_settings(own), **parse_healing(own))


def wait_for_ssh(hosts: dict[str, str], user: str, key_file: str, store: HostKeyStore, timeout_s: float,
                 ui: QuietUI, auth_grace_s: float = AUTH_GRACE_S, sleep: Callable[[float], None] = time.sleep) -> None:
    """Wait until every host (name -> address) lets us log in and has
    finished its first boot; raises naming each host that did not. A refused
    login is retried for `auth_grace_s` only (then the key is wrong)."""
    deadline = time.monotonic() + timeout_s

    def one(name: str, step) -> None:
        address = hosts[name]
        conn = Connection(address, user, 22, key_path=key_file, connect_timeout=10, known_hosts=store,
                          label=f"{name} ({address})")
        try:
            try:
                conn.wait_reachable(deadline, lambda why: step.update(f"{name} ({address}): waiting: {why}"),
                                    interval=2.0, auth_grace_s=auth_grace_s, sleep=sleep)
            except Unreachable as exc:
                if exc.kind in Unreachable.FINAL:
                    raise
                raise Unreachable(conn.label, f"still {exc.reason} after {timeout_s:.0f} s",
                                  "the instance may have failed to boot: the EC2 console shows its system log",
                                  exc.kind) from None
            step.update(f"{name} ({address}): waiting for first-boot setup (cloud-init)")
            done = conn.run(CLOUD_INIT_WAIT, timeout=max(30.0, deadline - time.monotonic()), warn=True)
            if not done.ok:
                log = conn.run("sudo -n tail -n 5 /var/log/cloud-init-output.log", warn=True).stdout.strip()
                raise MlclusterError(f"first-boot setup failed on {name} ({address}); the log ends:\n{log}",
                                     "`mlcluster down` then `up` again; or pick another `ami`/`os`", names_cleanup=True)
        finally:
            conn.close()

    run_on_hosts(list(hosts), one, ui, what="waiting for SSH")
