"""The `[ssh]` table of a config file: which hosts, how to log in, how to run. Every setting, with
an example and its default: docs/providers.md#ssh-table (the deployment settings' checks:
deploy/options.py).
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...config import check_known
from ...deploy.options import (
    HEALING,
    HOST,
    SETTINGS,
    RemoteOptions,
    bind_for,
    check_port,
    check_str,
    host_settings,
    ip,
    parse,
    parse_healing,
    parse_settings,
    rule,
)
from ...errors import MlclusterError
from ...resources import HostConfig  # one host, as parsed here and recorded in the state
from ...state import ClusterSpec

LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"  # one dot-separated part of a host name (RFC 1123)
HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){LABEL}(\.{LABEL})*$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


def _address(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise MlclusterError(f"{what} is missing", "give an IP address or a host name")
    if not ip(value) and not HOSTNAME_RE.match(value):
        raise MlclusterError(f"{what} {value!r} is neither an IP address nor a host name")
    return ip(value) or value


def _key(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise MlclusterError(f"{what} must be the path of a private key file")
    path = Path(value).expanduser()
    if value and not path.is_file():
        raise MlclusterError(f"{what}: the key file {path} does not exist",
                             "point it at your private key, e.g. ~/.ssh/id_ed25519")
    return str(path) if value else ""


_name = rule(lambda value: isinstance(value, str) and NAME_RE.match(value) is not None, "{value!r} is not allowed",
             hint="use lowercase letters, digits and dashes")
# How to log in: the table's for every host, each may override it.
LOGIN = {"user": check_str, "port": check_port, "key": _key}
# One host's entry (its login and host settings over the table's).
ENTRY = {"address": _address, "name": _name, "private_address": _address, **HOST, **LOGIN}


def parse_options(spec: ClusterSpec) -> RemoteOptions:
    """Read and check `[ssh]` from a spec (given now, or the one in the state)."""
    table = spec.provider_options.get("ssh")
    if not isinstance(table, dict) or not table:
        raise MlclusterError("the ssh provider needs an [ssh] table in the config file",
                             "see `mlcluster up --help`: orchestrator = { address = ... } and workers = [ ... ]")
    check_known(table, [*LOGIN, *HOST, *SETTINGS, *HEALING, "orchestrator", "workers", "spares"], "[ssh]")
    defaults = {**parse(table, LOGIN, "[ssh]", {"user": "root", "port": 22, "key": ""}),
                **host_settings(table, spec.name, spec.runtime)}
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
            orchestrator = replace(orchestrator, name=worker.name)
    spares = _spares(table.get("spares", []), defaults, [orchestrator, *workers])
    return RemoteOptions(orchestrator=orchestrator, workers=workers, spares=spares, **parse_settings(table),
                         **parse_healing(table))


def _spares(items: Any, defaults: dict, used: list[HostConfig]) -> list[HostConfig]:
    """`spares = [ { address = ... } ]`: pool hosts with no container of `up`'s (the controller's room)."""
    if not isinstance(items, list):
        raise MlclusterError("[ssh] spares must be a list like [ { address = \"10.0.0.13\" } ]")
    spares = [_host(s, f"spare{i}", defaults, f"[ssh] spares[{i - 1}]") for i, s in enumerate(items, 1)]
    for spare in spares:
        if any(spare.name == h.name or (spare.address, spare.port) == (h.address, h.port) for h in used):
            raise MlclusterError(f"[ssh] spares: {spare.name} ({spare.address}) is already a host of the cluster",
                                 "a spare is a host `up` starts nothing on")
        used = [*used, spare]
    return spares


def _host(item: Any, name: str, defaults: dict, where: str) -> HostConfig:
    if isinstance(item, str):
        item = {"address": item}
    if not isinstance(item, dict):
        raise MlclusterError(f"{where} must be a table like {{ address = \"10.0.0.11\" }}")
    check_known(item, ENTRY, where)
    host = HostConfig(**parse(item, ENTRY, where, {**defaults, "address": None, "name": name,
                                                   "private_address": lambda values: values["address"]}))
    return replace(host, bind=host.bind or bind_for(host.private_address))
