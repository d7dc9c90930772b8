"""Building a ClusterSpec: defaults, then the config file, then command-line flags.

A config file is TOML:

    name = "lab"
    provider = "ssh"            # local | ssh | aws
    runtime = "docker"          # process | docker
    workers = 4
    containers_per_worker = 2
    model = "distilbert-base-uncased"
    queue_limit = 100

    [autoscale]                 # optional: the controller keeps 1..6 containers (mlcluster/elastic)
    min_containers = 1
    max_containers = 6
    target_ongoing = 2          # in flight + queued per container (default: a container's capacity)
    upscale_delay = 30          # seconds
    downscale_delay = 600

    [local]                     # provider-specific tables, read by that provider
    port = 8000
    [ssh]
    ...
    [aws]
    ...
"""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Iterable, Optional

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from .errors import MlclusterError, UsageError
from .state import ClusterSpec

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as the tomli package
    import tomli as tomllib

PROVIDER_TABLES = ("local", "ssh", "aws")   # [ssh] and [aws] are checked by their providers
LOCAL_KEYS = {"port": int}
AUTOSCALE_KEYS = ("min_containers", "max_containers", "target_ongoing", "upscale_delay", "downscale_delay",
                  "heal_grace")
_FIELDS = {f.name: f for f in dataclasses.fields(ClusterSpec) if f.name != "provider_options"}
KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table", list: "a list"}


def kind_name(expected: type) -> str:
    """How a message names a TOML value's type: "an integer", "a string"..."""
    return KINDS.get(expected, f"a {expected.__name__}")


def check_known(table: dict, known: Iterable[str], where: str) -> None:
    """Refuse a key that is not a setting of `where` (`config`, `[ssh]`...),
    naming the closest known one."""
    known = sorted(known)
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise UsageError(f"{where}: unknown setting {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""),
                             "known: " + ", ".join(known))


def load_config(path: Optional[Path]) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(Path(path).expanduser().read_text())
    except FileNotFoundError:
        raise MlclusterError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise MlclusterError(f"config file {path} is not valid TOML: {exc}") from None


def build_spec(config: dict[str, Any], **flags: Any) -> ClusterSpec:
    """`flags` whose value is None were not given and leave the file's value."""
    values: dict[str, Any] = {}
    options: dict[str, Any] = {}
    check_known(config, [*_FIELDS, *PROVIDER_TABLES, "autoscale"], "config")
    for key, value in config.items():
        if key == "autoscale":
            continue
        if key in PROVIDER_TABLES:
            if not isinstance(value, dict):
                raise UsageError(f"config: [{key}] must be a table")
            options[key] = dict(value)
        else:
            values[key] = value
    autoscale = config.get("autoscale", {})
    if not isinstance(autoscale, dict):
        raise UsageError("config: [autoscale] must be a table")
    check_known(autoscale, AUTOSCALE_KEYS, "[autoscale]")
    values.update(autoscale)  # its keys are the spec's own fields
    local = options.get("local", {})
    check_known(local, LOCAL_KEYS, "[local]")
    for key, expected in LOCAL_KEYS.items():
        if key in local and (not isinstance(local[key], expected) or isinstance(local[key], bool)):
            raise UsageError(f"[local] {key} must be {kind_name(expected)}, not {local[key]!r}")
    for key, value in flags.items():
        if value is None:
            continue
        if key in _FIELDS:
            values[key] = value
        else:  # a provider option given on the command line, e.g. aws_region
            table, _, option = key.partition("_")
            options.setdefault(table, {})[option] = value
    for key, value in values.items():
        expected = type(_FIELDS[key].default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) and expected is not bool:
            raise UsageError(f"config: {key} must be {kind_name(expected)}, not {value!r}")
        values[key] = value
    return ClusterSpec(**values, provider_options=options).validate()
