"""This machine's Docker engine as the local Docker tests reach it (the Docker SDK,
as mlcluster itself does): a module fixture `engine` that skips when none answers,
and what a local cluster left there (`labelled`)."""
from __future__ import annotations

import pytest

from mlcluster.deploy.docker import L_CLUSTER, L_PROVIDER, connect
from mlcluster.errors import MlclusterError


@pytest.fixture(scope="module")
def engine():
    try:
        client = connect(timeout=900)
    except MlclusterError as exc:  # a developer machine without Docker; in CI (tests/run.sh sets
        # MLCLUSTER_REQUIRE_ALL=1, tests/conftest.py) a skip fails the run, so this never hides a failure there
        pytest.skip(f"no Docker engine answers here: {exc}")
    yield client
    client.close()


def labelled(client, name: str, kind: str = "containers") -> list:
    """The local cluster `name`'s containers (stopped ones too), networks or volumes."""
    filters = {"label": [f"{L_CLUSTER}={name}", f"{L_PROVIDER}=local"]}
    return getattr(client, kind).list(filters=filters, **({"all": True} if kind == "containers" else {}))
