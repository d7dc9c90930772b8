"""`mlcluster keys create|list|revoke`: the API keys of a cluster's public endpoint
(library: cluster_keys.py, apikeys.py)."""
from __future__ import annotations

import datetime
import json
from typing import Annotated

import typer

from . import cluster_keys
from .cli_options import Name

keys_app = typer.Typer(help="API keys of the cluster's public endpoint: with one or more, "
                            "/new_request and /workers_info need 'Authorization: Bearer <key>'.",
                       no_args_is_help=True, add_completion=False)

JsonFlag = Annotated[bool, typer.Option("--json", help="One JSON object on stdout, for scripts.")]


@keys_app.command()
def create(name: Name = "default", as_json: JsonFlag = False) -> None:
    """Make a key; it is printed once, alone on stdout (only its id and hash are kept)."""
    made = cluster_keys.create_key(name)
    print(json.dumps({"id": made.id, "key": made.key}) if as_json else made.key)


@keys_app.command("list")
def list_(name: Name = "default", as_json: JsonFlag = False) -> None:
    """The ids of the keys in force (never the keys)."""
    records = cluster_keys.list_keys(name)
    if as_json:
        print(json.dumps({"keys": [{"id": r.id, "created_at": r.created_at} for r in records]}))
        return
    for r in records:
        print(f"{r.id}  created {datetime.datetime.fromtimestamp(r.created_at).isoformat(timespec='seconds')}")


@keys_app.command()
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (mlcluster keys list).")],
           name: Name = "default", as_json: JsonFlag = False) -> None:
    """Stop a key from working, at once on the running orchestrator."""
    record = cluster_keys.revoke_key(name, key_id)
    print(json.dumps({"revoked": record.id}) if as_json else f"revoked {record.id}")
