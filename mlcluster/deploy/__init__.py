"""What runs on machines, whoever provided them: the deployment layer (docs/architecture.md#tree).

A provider (mlcluster/providers) says which machines a cluster has (a
`RemoteOptions`: its host records and the deployment settings); this package
starts, checks, stops and reads the logs of the services on them, through the
entry functions in ENTRY_POINTS, the same for every provider. Nothing here
imports a provider. The entry functions are imported from their submodules at
first use, so a local `list` or `status` never loads paramiko, nor does a local `up`.
"""
from __future__ import annotations

import importlib

# The entry functions the providers call (`deploy.deploy(...)`) -> the submodule defining each.
ENTRY_POINTS = {"deploy": "remote", "remove": "remote", "logs": "reading", "admin_channel": "reading",
                "stopped_itself": "reading", "describe": "reading", "details": "reading"}


def __getattr__(name: str):
    if name not in ENTRY_POINTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{ENTRY_POINTS[name]}"), name)
