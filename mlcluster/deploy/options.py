"""How a cluster is deployed onto hosts, whoever provided them: the
`RemoteOptions` record (the hosts and the deployment settings) and the parsing
of the deployment settings every provider of remote hosts shares.

The settings live in the config's `[ssh]` table (see providers/ssh/options.py
for the whole table): `runtime`, `images`, `worker_image`, `orchestrator_image`,
`build_args`, `wheelhouse`, `ca_bundle`, `python`, `workdir`, `bind`, the ports,
the time-outs and the extra environments. The ssh provider reads the hosts
from the same table; the aws provider makes them from its instances and reads
only these settings (`parse_settings`, `host_settings`).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MlclusterError
from ..resources import HostConfig

RUNTIMES = ("docker", "process")
IMAGE_MODES = ("build", "ship", "pull")
# Per host (and as defaults for all hosts): how services run there.
HOST_SETTINGS = {"runtime", "python", "workdir", "bind"}
# For the whole deployment.
SETTINGS = {"images", "worker_image", "orchestrator_image", "build_args", "wheelhouse", "ca_bundle",
            "orchestrator_port", "admin_port", "worker_port", "connect_timeout", "reach_timeout",
            "orchestrator_env", "worker_env"}


@dataclass
class RemoteOptions:
    """The hosts of a cluster and how to deploy onto them."""
    orchestrator: HostConfig
    workers: list[HostConfig]
    images: str = "build"
    worker_image: str = ""
    orchestrator_image: str = ""
    build_args: dict[str, str] = field(default_factory=dict)
    wheelhouse: str = ""
    ca_bundle: str = ""
    orchestrator_port: int = 8000
    admin_port: int = 8001
    worker_port: int = 5000
    connect_timeout: float = 10.0
    reach_timeout: float = 120.0
    orchestrator_env: dict[str, str] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)
    # The ssh provider's healing (elastic/pool.py): hosts `up` prepares but starts no container on
    # (room for the containers of a host that drops off), how long a host may be unreachable before
    # its containers move, and where the hosts' sshd reads authorized keys (the controller's key goes there).
    spares: list[HostConfig] = field(default_factory=list)
    host_grace: float = 20.0
    authorized_keys: str = "~/.ssh/authorized_keys"
    # This machine's hosts (the local provider's): ports picked free on 127.0.0.1 and kept while
    # free, instead of the fixed ones above (orchestrator_port, when not 0, is the one asked for).
    free_ports: bool = False

    def hosts(self) -> list[HostConfig]:
        """Every distinct machine: the orchestrator's first, then the workers', then the spares."""
        seen, hosts = set(), []
        for host in [self.orchestrator, *self.workers, *self.spares]:
            if host.name not in seen:
                seen.add(host.name)
                hosts.append(host)
        return hosts

    def host(self, name: str) -> HostConfig:
        for host in self.hosts():
            if host.name == name:
                return host
        raise MlclusterError(f"no host named {name!r} in the cluster's hosts")


def parse_settings(table: dict, where: str = "[ssh]") -> dict[str, Any]:
    """The deployment settings of `table` (keys of SETTINGS), checked, as
    keyword arguments of RemoteOptions."""
    images = table.get("images", "build")
    if images not in IMAGE_MODES:
        raise MlclusterError(f"{where} images must be one of {', '.join(IMAGE_MODES)}, not {images!r}")
    orchestrator_port = check_port(table.get("orchestrator_port", 8000), f"{where} orchestrator_port")
    settings = dict(
        images=images,
        worker_image=check_str(table, "worker_image", "", where),
        orchestrator_image=check_str(table, "orchestrator_image", "", where),
        build_args=check_env(table.get("build_args", {}), f"{where} build_args"),
        wheelhouse=check_local_path(table.get("wheelhouse", ""), f"{where} wheelhouse", directory=True),
        ca_bundle=check_local_path(table.get("ca_bundle", ""), f"{where} ca_bundle", directory=False),
        orchestrator_port=orchestrator_port,
        admin_port=check_port(table.get("admin_port", orchestrator_port % 65535 + 1), f"{where} admin_port"),
        worker_port=check_port(table.get("worker_port", 5000), f"{where} worker_port"),
        connect_timeout=check_seconds(table.get("connect_timeout", 10), f"{where} connect_timeout"),
        reach_timeout=check_seconds(table.get("reach_timeout", 120), f"{where} reach_timeout"),
        orchestrator_env=check_env(table.get("orchestrator_env", {}), f"{where} orchestrator_env"),
        worker_env=check_env(table.get("worker_env", {}), f"{where} worker_env"),
    )
    if settings["admin_port"] == orchestrator_port:
        raise MlclusterError(f"{where} admin_port and orchestrator_port are both {orchestrator_port}",
                             "the admin endpoints need a port of their own (leave admin_port out: orchestrator_port + 1)")
    if images == "pull" and not (settings["worker_image"] and settings["orchestrator_image"]):
        raise MlclusterError(f"{where} images = \"pull\" needs worker_image and orchestrator_image "
                             "(registry references)")
    return settings


def host_settings(table: dict, cluster: str, runtime: str, defaults: dict | None = None,
                  where: str = "[ssh]") -> dict[str, Any]:
    """The per-host settings (HOST_SETTINGS) of `table`, over `defaults` (those
    of the whole table, for one host's entry); `bind` None means: the host's
    private address (see `bind_for`)."""
    base = defaults or {"runtime": runtime if runtime != "auto" else "docker", "python": "",
                        "workdir": f".mlcluster/{cluster}", "bind": None}
    bind = table.get("bind", base["bind"])
    return {"runtime": check_runtime(table.get("runtime", base["runtime"]), f"{where} runtime"),
            "python": check_str(table, "python", base["python"], where),
            "workdir": check_str(table, "workdir", base["workdir"], where),
            "bind": check_bind(bind, f"{where} bind") if bind is not None else None}


def bind_for(private_address: str) -> str:
    """Services listen on the address the orchestrator reaches them at, not on
    every interface; a host name cannot be bound, so it falls back to all."""
    try:
        return str(ipaddress.ip_address(private_address))
    except ValueError:
        return "0.0.0.0"


def check_str(table: dict, key: str, default: str, where: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or "\n" in value:
        raise MlclusterError(f"{where} {key} must be a string, not {value!r}")
    return value


def check_bind(value: Any, where: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise MlclusterError(f"{where} must be an IP address (0.0.0.0 for all of the host's addresses), "
                             f"not {value!r}") from None


def check_port(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise MlclusterError(f"{where} must be a port number from 1 to 65535, not {value!r}")
    return value


def check_seconds(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 3600:
        raise MlclusterError(f"{where} must be a number of seconds between 0 and 3600, not {value!r}")
    return float(value)


def check_runtime(value: Any, where: str) -> str:
    if value not in RUNTIMES:
        raise MlclusterError(f"{where} must be docker or process, not {value!r}")
    return value


def check_local_path(value: Any, where: str, directory: bool) -> str:
    if not isinstance(value, str):
        raise MlclusterError(f"{where} must be a path on this machine")
    if value and not (Path(value).expanduser().is_dir() if directory else Path(value).expanduser().is_file()):
        raise MlclusterError(f"{where}: {value} is not an existing {'folder' if directory else 'file'}")
    return value


def check_env(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and re.match(r"^[A-Z_][A-Z0-9_]*$", k)
                                              and isinstance(v, str) and "\n" not in v for k, v in value.items()):
        raise MlclusterError(f"{where} must be a table of VARIABLE = \"string value\"")
    return dict(value)
