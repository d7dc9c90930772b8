"""Building a ClusterSpec: defaults, then the config file, then command-line flags.

A config file is TOML:

    name = "lab"
    provider = "ssh"            # local | ssh | aws
    runtime = "docker"          # process | docker
    workers = 4
    containers_per_worker = 2
    model = "distilbert-base-uncased"
    queue_limit = 100

    [local]                     # provider-specific tables, read by that provider
    port = 8000
    [ssh]
    ...
    [aws]
    ...
"""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, Optional

from .errors import MlclusterError
from .state import ClusterSpec

PROVIDER_TABLES = ("local", "ssh", "aws")
_FIELDS = {f.name: f for f in dataclasses.fields(ClusterSpec) if f.name != "provider_options"}


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
    for key, value in config.items():
        if key in PROVIDER_TABLES:
            if not isinstance(value, dict):
                raise MlclusterError(f"config: [{key}] must be a table")
            options[key] = dict(value)
        elif key in _FIELDS:
            values[key] = value
        else:
            raise MlclusterError(f"config: unknown setting {key!r}",
                                 "known: " + ", ".join(sorted([*_FIELDS, *PROVIDER_TABLES])))
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
            raise MlclusterError(f"config: {key} must be a {expected.__name__}, not {value!r}")
        values[key] = value
    return ClusterSpec(**values, provider_options=options).validate()
