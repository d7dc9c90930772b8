"""The `[ssh]` table of a config file: which hosts, how to log in, how to run.

    provider = "ssh"
    containers_per_worker = 2
    model = "distilbert-base-uncased"     # a hub id (the hosts download it), a local
                                          # directory (uploaded to each worker host) or overhead-test
    [ssh]
    key = "~/.ssh/id_ed25519"   # private key (ed25519, RSA or ECDSA, no passphrase); default for all hosts
    user = "ubuntu"             # default "root"
    port = 22
    runtime = "docker"          # docker (default) | process; per host too
    images = "build"            # docker: build (upload the build context, build on every host, default)
                                #         ship  (build here once, upload the saved image, load it)
                                #         pull  (pull worker_image / orchestrator_image from a registry)
    worker_image = "registry.example.com/mlcluster-worker:1"        # only for images = "pull"
    orchestrator_image = "registry.example.com/mlcluster-orchestrator:1"
    build_args = { BASE_IMAGE = "python:3.11-slim" }   # build/ship: docker build arguments
    wheelhouse = "~/wheels"     # build/ship: a folder of wheels pip may use inside the build
    ca_bundle = "/etc/ssl/certs/corp.pem"               # build/ship: extra CA certificates for pip
    python = "/opt/mlcluster/bin/python"  # process runtime: an interpreter with mlcluster installed;
                                          # default: make a venv in the host's workdir and pip install
                                          # this project there (needs python3 with venv and the
                                          # package index reachable from the host)
    workdir = ".mlcluster/<cluster>"      # on each host, relative to the login directory
    bind = "10.0.0.10"          # address the services listen on, on their host (default: the host's
                                # private_address when it is an IP address, else 0.0.0.0)
    orchestrator_port = 8000
    admin_port = 8001           # the admin endpoints, on the orchestrator host's 127.0.0.1 only (reached
                                # through SSH); default orchestrator_port + 1
    worker_port = 5000          # the first one; the next containers use 5001, 5002...
    connect_timeout = 10        # seconds for one connect + login
    reach_timeout = 120         # seconds `up` waits for every host to answer SSH
    orchestrator_env = { ORCH_FORWARD_TIMEOUT_S = "10" }   # extra environment, rarely needed
    worker_env = {}
    orchestrator = { address = "10.0.0.10", user = "admin", port = 22, key = "~/.ssh/other" }
    workers = [ { address = "10.0.0.11" },
                { address = "203.0.113.12", private_address = "10.0.0.12", runtime = "process" } ]

Each host may override key, user, port, runtime, python, workdir and bind, and
may have a `name` (default: orchestrator, worker1, worker2...) and a
`private_address` (how the orchestrator reaches its workers; default: `address`).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...config import check_known
from ...errors import MlclusterError
from ...resources import HostConfig  # one host, as parsed here and recorded in the state
from ...state import ClusterSpec

HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
RUNTIMES = ("docker", "process")
IMAGE_MODES = ("build", "ship", "pull")
HOST_KEYS = {"address", "private_address", "name", "user", "port", "key", "runtime", "python", "workdir", "bind"}
TOP_KEYS = HOST_KEYS - {"address", "private_address", "name"} | {
    "images", "worker_image", "orchestrator_image", "build_args", "wheelhouse", "ca_bundle", "orchestrator_port", "admin_port", "worker_port", "connect_timeout",
    "reach_timeout", "orchestrator_env", "worker_env", "orchestrator", "workers"}


@dataclass
class SSHOptions:
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

    def hosts(self) -> list[HostConfig]:
        """Every distinct machine: the orchestrator's first, then the workers'."""
        seen, hosts = set(), []
        for host in [self.orchestrator, *self.workers]:
            if host.name not in seen:
                seen.add(host.name)
                hosts.append(host)
        return hosts

    def host(self, name: str) -> HostConfig:
        for host in self.hosts():
            if host.name == name:
                return host
        raise MlclusterError(f"no host named {name!r} in the [ssh] config")


def parse_options(spec: ClusterSpec) -> SSHOptions:
    """Read and check `[ssh]` from a spec (given now, or the one in the state)."""
    name, runtime, table = spec.name, spec.runtime, spec.provider_options.get("ssh")
    if not isinstance(table, dict) or not table:
        raise MlclusterError("the ssh provider needs an [ssh] table in the config file",
                             "see `mlcluster up --help`: orchestrator = { address = ... } and workers = [ ... ]")
    _unknown(table, TOP_KEYS, "[ssh]")
    defaults = {
        "user": _str(table, "user", "root", "[ssh]"),
        "port": _port(table.get("port", 22), "[ssh] port"),
        "key": _key(table.get("key", ""), "[ssh] key"),
        "runtime": _runtime(table.get("runtime", runtime if runtime != "auto" else "docker"), "[ssh] runtime"),
        "python": _str(table, "python", "", "[ssh]"),
        "workdir": _str(table, "workdir", f".mlcluster/{name}", "[ssh]"),
        "bind": _bind(table["bind"], "[ssh] bind") if "bind" in table else None,
    }
    if "orchestrator" not in table:
        raise MlclusterError("[ssh] needs orchestrator = { address = \"...\" }")
    orchestrator = _host(table["orchestrator"], "orchestrator", defaults, "[ssh] orchestrator")
    workers_table = table.get("workers")
    if not isinstance(workers_table, list) or not workers_table:
        raise MlclusterError("[ssh] needs workers = [ { address = \"...\" }, ... ] with at least one host")
    workers = [_host(w, f"worker{i}", defaults, f"[ssh] workers[{i - 1}]") for i, w in enumerate(workers_table, 1)]
    names = [w.name for w in workers]
    if len(set(names)) != len(names):
        raise MlclusterError(f"[ssh] workers: two hosts have the same name ({', '.join(names)})")
    if len({(w.address, w.port) for w in workers}) != len(workers):
        raise MlclusterError("[ssh] workers: the same host is listed twice")
    for worker in workers:  # the orchestrator's machine may also be a worker: one host, one name
        if (worker.address, worker.port) == (orchestrator.address, orchestrator.port):
            orchestrator = replace(orchestrator, name=worker.name) if worker.name != orchestrator.name else orchestrator
    images = table.get("images", "build")
    if images not in IMAGE_MODES:
        raise MlclusterError(f"[ssh] images must be one of {', '.join(IMAGE_MODES)}, not {images!r}")
    orchestrator_port = _port(table.get("orchestrator_port", 8000), "[ssh] orchestrator_port")
    options = SSHOptions(
        orchestrator=orchestrator, workers=workers, images=images,
        worker_image=_str(table, "worker_image", "", "[ssh]"),
        orchestrator_image=_str(table, "orchestrator_image", "", "[ssh]"),
        build_args=_env(table.get("build_args", {}), "[ssh] build_args"),
        wheelhouse=_local_path(table.get("wheelhouse", ""), "[ssh] wheelhouse", directory=True),
        ca_bundle=_local_path(table.get("ca_bundle", ""), "[ssh] ca_bundle", directory=False),
        orchestrator_port=orchestrator_port,
        admin_port=_port(table.get("admin_port", orchestrator_port % 65535 + 1), "[ssh] admin_port"),
        worker_port=_port(table.get("worker_port", 5000), "[ssh] worker_port"),
        connect_timeout=_seconds(table.get("connect_timeout", 10), "[ssh] connect_timeout"),
        reach_timeout=_seconds(table.get("reach_timeout", 120), "[ssh] reach_timeout"),
        orchestrator_env=_env(table.get("orchestrator_env", {}), "[ssh] orchestrator_env"),
        worker_env=_env(table.get("worker_env", {}), "[ssh] worker_env"),
    )
    if options.admin_port == options.orchestrator_port:
        raise MlclusterError(f"[ssh] admin_port and orchestrator_port are both {options.admin_port}",
                             "the admin endpoints need a port of their own (leave admin_port out: orchestrator_port + 1)")
    if images == "pull" and not (options.worker_image and options.orchestrator_image):
        raise MlclusterError("[ssh] images = \"pull\" needs worker_image and orchestrator_image (registry references)")
    return options


def _host(item: Any, default_name: str, defaults: dict, where: str) -> HostConfig:
    if isinstance(item, str):
        item = {"address": item}
    if not isinstance(item, dict):
        raise MlclusterError(f"{where} must be a table like {{ address = \"10.0.0.11\" }}")
    _unknown(item, HOST_KEYS, where)
    address = _address(item.get("address"), f"{where} address")
    name = item.get("name", default_name)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise MlclusterError(f"{where} name {name!r} is not allowed", "use lowercase letters, digits and dashes")
    private = _address(item.get("private_address", address), f"{where} private_address")
    bind = item.get("bind", defaults["bind"])
    return HostConfig(
        name=name, address=address, private_address=private,
        user=_str(item, "user", defaults["user"], where),
        port=_port(item.get("port", defaults["port"]), f"{where} port"),
        key=_key(item["key"], f"{where} key") if "key" in item else defaults["key"],
        runtime=_runtime(item.get("runtime", defaults["runtime"]), f"{where} runtime"),
        python=_str(item, "python", defaults["python"], where),
        workdir=_str(item, "workdir", defaults["workdir"], where),
        bind=_bind(bind, f"{where} bind") if bind is not None else _private_bind(private),
    )


def _unknown(table: dict, known: set, where: str) -> None:
    check_known(table, known, where)


def _str(table: dict, key: str, default: str, where: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or "\n" in value:
        raise MlclusterError(f"{where} {key} must be a string, not {value!r}")
    return value


def _address(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise MlclusterError(f"{where} is missing", "give an IP address or a host name")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not HOSTNAME_RE.match(value):
        raise MlclusterError(f"{where} {value!r} is neither an IP address nor a host name")
    return value


def _private_bind(private_address: str) -> str:
    """Services listen on the address the orchestrator reaches them at, not on
    every interface; a host name cannot be bound, so it falls back to all."""
    try:
        return str(ipaddress.ip_address(private_address))
    except ValueError:
        return "0.0.0.0"


def _bind(value: Any, where: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise MlclusterError(f"{where} must be an IP address (0.0.0.0 for all of the host's addresses), not {value!r}") from None


def _port(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise MlclusterError(f"{where} must be a port number from 1 to 65535, not {value!r}")
    return value


def _seconds(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 3600:
        raise MlclusterError(f"{where} must be a number of seconds between 0 and 3600, not {value!r}")
    return float(value)


def _runtime(value: Any, where: str) -> str:
    if value not in RUNTIMES:
        raise MlclusterError(f"{where} must be docker or process, not {value!r}")
    return value


def _key(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise MlclusterError(f"{where} must be the path of a private key file")
    if not value:
        return ""
    path = Path(value).expanduser()
    if not path.is_file():
        raise MlclusterError(f"{where}: the key file {path} does not exist",
                             "point it at your private key, e.g. ~/.ssh/id_ed25519")
    return str(path)


def _local_path(value: Any, where: str, directory: bool) -> str:
    if not isinstance(value, str):
        raise MlclusterError(f"{where} must be a path on this machine")
    if value and not (Path(value).expanduser().is_dir() if directory else Path(value).expanduser().is_file()):
        raise MlclusterError(f"{where}: {value} is not an existing {'folder' if directory else 'file'}")
    return value


def _env(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and re.match(r"^[A-Z_][A-Z0-9_]*$", k)
                                              and isinstance(v, str) and "\n" not in v for k, v in value.items()):
        raise MlclusterError(f"{where} must be a table of VARIABLE = \"string value\"")
    return dict(value)
