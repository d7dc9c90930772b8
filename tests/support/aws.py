"""The aws provider against moto's server: specs, a provider that never
reaches the internet and never sleeps, states, a UI that records warnings."""
from __future__ import annotations

from typing import Optional

from mlcluster.providers.aws.api import Backoff
from mlcluster.providers.aws.provider import AWSProvider
from mlcluster.state import ClusterSpec, ClusterState
from mlcluster.ui import QuietUI

ALLOWED = "203.0.113.5/32"


class RecordingUI(QuietUI):
    """Keeps warnings; raises KeyboardInterrupt when a step starting with
    `interrupt_at` begins (a Ctrl-C at that point of `up`)."""

    def __init__(self, interrupt_at: Optional[str] = None):
        self.warnings: list[str] = []
        self.interrupt_at = interrupt_at

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def step(self, description: str, total: Optional[int] = None):
        if self.interrupt_at and description.startswith(self.interrupt_at):
            raise KeyboardInterrupt
        return super().step(description, total)


def make_spec(server, name: str = "lab", workers: int = 2, **aws) -> ClusterSpec:
    options = {"region": "us-east-1", "endpoint_url": server.url, "allowed_cidr": ALLOWED, **aws}
    return ClusterSpec(name=name, provider="aws", workers=workers, containers_per_worker=2,
                       provider_options={"aws": options}).validate()


def make_provider(sleeps: Optional[list] = None, **kw) -> AWSProvider:
    def no_internet() -> str:
        raise AssertionError("a test must never look up its public IP on the internet")
    record = sleeps.append if sleeps is not None else (lambda s: None)
    return AWSProvider(ip_lookup=kw.pop("ip_lookup", no_internet), backoff=Backoff(sleep=record),
                       sleep=lambda s: None, poll_s=0.0, timeout_s=30.0, **kw)


def new_state(spec: ClusterSpec) -> ClusterState:
    state = ClusterState(name=spec.name, provider="aws", token="t", spec=spec)
    state.save()
    return state


def provision(spec, provider=None, ui=None):
    state = ClusterState.load_or_none(spec.name) or new_state(spec)
    return (provider or make_provider()).provision(spec, state, ui or RecordingUI()), state
