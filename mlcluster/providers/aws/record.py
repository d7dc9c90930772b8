"""The aws provider's bookkeeping in the cluster's state: what exists in AWS
is recorded the moment it does, and a failed or interrupted `up` says what
is there and how to remove it."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

from ...errors import MlclusterError
from ...resources import AWSResources
from ...state import ClusterState
from ...ui import QuietUI
from .api import AWS
from .ec2 import Instance


def remember(state: ClusterState, aws: AWS, **items) -> None:
    """Record resources (fields of AWSResources) in the state and save it at once."""
    state.resources.aws = dataclasses.replace(state.resources.aws or AWSResources(), region=aws.region, **items)
    state.save()


def forget_reused_addresses(state: ClusterState, instances: dict[str, Instance],
                             addressed: dict[str, tuple[str, str]]) -> dict[str, str]:
    """The cluster's known host keys, less those of addresses that now belong
    to another instance (AWS reuses public IPs): a new machine has a new key."""
    keys = state.resources.host_keys
    owners = state.resources.aws.address_owners
    for name, inst in instances.items():
        address = addressed[name][0]
        if owners.get(address) != inst.id:
            keys.pop(f"{address}:22", None)
            owners[address] = inst.id
    return keys


@contextlib.contextmanager
def accounted(state: ClusterState, ui: QuietUI) -> Iterator[None]:
    """On failure or Ctrl-C, say what exists in AWS and how to remove it
    (everything is already in the state and tagged)."""
    try:
        yield
    except KeyboardInterrupt:
        if created(state):
            ui.warn(created(state) + f"; `mlcluster down --name {state.name}` removes it")
        raise
    except MlclusterError as exc:
        if created(state) and not exc.names_cleanup:
            exc.hint = "; ".join(filter(None, [exc.hint, created(state) + f": `mlcluster up --name "
                                 f"{state.name}` resumes, `mlcluster down --name {state.name}` removes it"]))
        raise


def created(state: ClusterState) -> str:
    """What the cluster has in AWS that costs or blocks, in a sentence ("" when nothing)."""
    record = state.resources.aws or AWSResources()
    parts = [f"{len(record.instances)} instance(s)"] if record.instances else []
    parts += ["a security group"] if record.security_group else []
    parts += ["a key pair"] if record.key_pair else []
    parts += ["an IAM role and instance profile"] if record.instance_profile else []
    return f"cluster {state.name!r} has {', '.join(parts)} in AWS {record.region}".rstrip() if parts else ""
