"""How a cluster is deployed onto hosts, whoever provided them: the
`RemoteOptions` record (the hosts and the deployment settings), and the one
parser of settings tables (`parse`) with the checks they share. The settings
(HOST, DEPLOY) are the `[ssh]` table's, explained in docs/providers.md#ssh-table;
the aws provider makes the hosts and reads only these (`parse_settings`, `host_settings`).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import kind_name
from ..errors import MlclusterError
from ..resources import HostConfig

# A check takes a value and what names it in a message ("[ssh] workers[0] port"), and returns
# the value to keep (perhaps converted) or raises an MlclusterError.
Check = Callable[[Any, str], Any]


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
    # The ssh provider's healing (elastic/pool.py), explained in docs/elastic.md#ssh-healing.
    spares: list[HostConfig] = field(default_factory=list)
    host_grace: float = 20.0
    authorized_keys: str = "~/.ssh/authorized_keys"
    # This machine's hosts (the local provider's): ports picked free on 127.0.0.1 and kept while
    # free, instead of the fixed ones above (orchestrator_port, when not 0, is the one asked for).
    free_ports: bool = False

    def hosts(self) -> list[HostConfig]:
        """Every distinct machine: the orchestrator's first, then the workers', then the spares."""
        hosts: dict[str, HostConfig] = {}
        for host in [self.orchestrator, *self.workers, *self.spares]:
            hosts.setdefault(host.name, host)
        return list(hosts.values())

    def host(self, name: str) -> HostConfig:
        for host in self.hosts():
            if host.name == name:
                return host
        raise MlclusterError(f"no host named {name!r} in the cluster's hosts")


def parse(table: dict, checks: dict[str, Check], where: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """The settings `checks` names, read from `table` in their order and checked, defaults too (one may be a
    function of the values read before it), as keyword arguments of the record they make. Other keys are the
    caller's (a table may hold more than one record)."""
    values: dict[str, Any] = {}
    for name, check in checks.items():
        default = defaults[name]
        value = table[name] if name in table else default(values) if callable(default) else default
        values[name] = check(value, f"{where} {name}")
    return values


def defaults_of(record: type) -> dict[str, Any]:
    """The defaults of a dataclass's fields (a new one of those made by a factory)."""
    return {f.name: f.default_factory() if f.default is MISSING else f.default for f in fields(record)
            if f.default is not MISSING or f.default_factory is not MISSING}


def rule(ok: Callable[[Any], bool], said: str, keep: Callable[[Any], Any] = lambda value: value,
         hint: str = "") -> Check:
    """The check of a value `ok` accepts (`keep` makes what is kept of it); of
    any other, the message "<what> <said>", where `said` may show {value!r}."""
    def check(value: Any, what: str) -> Any:
        if not ok(value):
            raise MlclusterError(f"{what} {said.format(value=value)}", hint)
        return keep(value)
    return check


def is_a(value: Any, kind: Any) -> bool:
    """Of TOML's `kind` (a type, or a tuple of them): true and false are no numbers."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def ip(value: Any) -> Optional[str]:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def one_of(choices: tuple[str, ...], said: str = "") -> Check:
    return rule(lambda value: value in choices, f"must be {said or 'one of ' + ', '.join(choices)}, not {{value!r}}")


def of_kind(kind: type) -> Check:
    """A value of TOML's `kind`; where a number is meant, an integer too (made a float)."""
    said = f"must be {kind_name(kind)}, not {{value!r}}"
    if kind is float:
        return rule(lambda value: is_a(value, (int, float)), said, float)
    return rule(lambda value: is_a(value, kind), said)


check_str = rule(lambda value: isinstance(value, str) and "\n" not in value, "must be a string, not {value!r}")
check_port = rule(lambda value: is_a(value, int) and 0 < value < 65536,
                  "must be a port number from 1 to 65535, not {value!r}")
check_seconds = rule(lambda value: is_a(value, (int, float)) and 0 < value <= 3600,
                     "must be a number of seconds between 0 and 3600, not {value!r}", float)
# None: not set (the host's private address, see `bind_for`).
check_bind = rule(lambda value: value is None or ip(value) is not None,
                  "must be an IP address (0.0.0.0 for all of the host's addresses), not {value!r}",
                  lambda value: None if value is None else ip(value))
check_env = rule(lambda value: isinstance(value, dict) and all(
    isinstance(k, str) and re.match(r"^[A-Z_][A-Z0-9_]*$", k) and isinstance(v, str) and "\n" not in v
    for k, v in value.items()), 'must be a table of VARIABLE = "string value"', dict)


def local_path(kind: str) -> Check:
    """Empty, or the path of an existing `kind` (folder or file) on this machine."""
    def check(value: Any, what: str) -> str:
        if not isinstance(value, str):
            raise MlclusterError(f"{what} must be a path on this machine")
        path = Path(value).expanduser()
        if value and not (path.is_dir() if kind == "folder" else path.is_file()):
            raise MlclusterError(f"{what}: {value} is not an existing {kind}")
        return value
    return check


# Per host (and, in [ssh], as defaults for all hosts): how services run there.
HOST = {"runtime": one_of(("docker", "process"), "docker or process"), "python": check_str, "workdir": check_str,
        "bind": check_bind}
# For the whole deployment (their defaults: RemoteOptions'; orchestrator_port is read before admin_port,
# whose default it sets).
DEPLOY = {"images": one_of(("build", "ship", "pull")), "orchestrator_port": check_port, "worker_image": check_str,
          "orchestrator_image": check_str, "build_args": check_env, "wheelhouse": local_path("folder"),
          "ca_bundle": local_path("file"), "admin_port": check_port, "worker_port": check_port,
          "connect_timeout": check_seconds, "reach_timeout": check_seconds,
          "orchestrator_env": check_env, "worker_env": check_env}
HOST_SETTINGS, SETTINGS = set(HOST), set(DEPLOY)  # the names, for tables that hold other keys too


def _authorized_keys(value: Any, what: str) -> str:
    if not check_str(value, what) or "'" in value:
        raise MlclusterError(f"{what} must be the path of the hosts' authorized_keys file",
                             "e.g. \"~/.ssh/authorized_keys\" (sshd's AuthorizedKeysFile)")
    return value


# The controller's healing (elastic/pool.py), read from [ssh] on ssh and aws clusters; defaults: RemoteOptions'.
HEALING = {"authorized_keys": _authorized_keys, "host_grace": check_seconds}


def parse_settings(table: dict) -> dict[str, Any]:
    """The deployment settings of `table` (an [ssh] table), checked, as keyword arguments of RemoteOptions."""
    defaults = {**defaults_of(RemoteOptions), "admin_port": lambda values: values["orchestrator_port"] % 65535 + 1}
    settings = parse(table, DEPLOY, "[ssh]", defaults)
    port = settings["orchestrator_port"]
    if settings["admin_port"] == port:
        raise MlclusterError(f"[ssh] admin_port and orchestrator_port are both {port}", "the admin endpoints need "
                             "a port of their own (leave admin_port out: orchestrator_port + 1)")
    if settings["images"] == "pull" and not (settings["worker_image"] and settings["orchestrator_image"]):
        raise MlclusterError("[ssh] images = \"pull\" needs worker_image and orchestrator_image (registry references)")
    return settings


def parse_healing(table: dict) -> dict[str, Any]:
    """The healing settings (HEALING) of an [ssh] table, checked, as keyword arguments of RemoteOptions."""
    return parse(table, HEALING, "[ssh]", defaults_of(RemoteOptions))


def parse_ports(table: dict) -> tuple[int, int]:
    """(orchestrator_port, worker_port) of an [ssh] table, checked, as the deployment will use them."""
    found = parse(table, {k: DEPLOY[k] for k in ("orchestrator_port", "worker_port")}, "[ssh]",
                  defaults_of(RemoteOptions))
    return found["orchestrator_port"], found["worker_port"]


def host_settings(table: dict, cluster: str, runtime: str) -> dict[str, Any]:
    """The host settings (HOST) of a whole [ssh] table: those of every host that sets none of its own.
    `bind` None means: the host's private address (see `bind_for`)."""
    return parse(table, HOST, "[ssh]", {"runtime": runtime if runtime != "auto" else "docker", "python": "",
                                        "workdir": f".mlcluster/{cluster}", "bind": None})


def bind_for(private_address: str) -> str:
    """Services listen on the address the orchestrator reaches them at, not on
    every interface; a host name cannot be bound, so it falls back to all."""
    return ip(private_address) or "0.0.0.0"
