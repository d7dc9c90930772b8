"""The ssh provider: machines you already have, listed in the config's `[ssh]`
table (providers/ssh/options.py), reached over SSH. It only says which hosts
there are; what runs on them is the deployment layer's (mlcluster/deploy).

Nothing here costs money, so `up` needs no confirmation (`plan` is None).
"""
from __future__ import annotations

from typing import ContextManager, Iterator, Optional

from ...deploy import reading, remote
from ...deploy.options import RemoteOptions
from ...deploy.runtime import Deployment
from ...errors import MlclusterError
from ...state import ClusterSpec, ClusterState
from ...ui import QuietUI
from ..base import CostPlan
from .options import parse_options


class SSHProvider:
    name = "ssh"

    def up(self, spec: ClusterSpec, state: ClusterState, ui: QuietUI) -> Deployment:
        return remote.deploy(spec, state, parse_options(spec), ui)

    def down(self, name: str, state: Optional[ClusterState], ui: QuietUI) -> list[str]:
        return remote.remove(name, state, _options_or_none(state), ui)

    def logs(self, state: ClusterState, target: Optional[str], follow: bool, tail: int) -> Iterator[str]:
        return reading.logs(state, _options_or_none(state), target, follow, tail)

    def describe(self, state: ClusterState) -> str:
        return reading.describe(state, _options_or_none(state))

    def stopped_itself(self, state: ClusterState) -> Optional[str]:
        return reading.stopped_itself(state, _options_or_none(state))

    def admin_channel(self, state: ClusterState) -> ContextManager[str]:
        return reading.admin_channel(state, _options_or_none(state))

    def details(self, state: ClusterState) -> dict[str, dict[str, str]]:
        return reading.details(state)

    def plan(self, spec: ClusterSpec) -> Optional[CostPlan]:
        return None  # nothing here costs money: `up` needs no confirmation


def _options_or_none(state: Optional[ClusterState]) -> Optional[RemoteOptions]:
    if state is None:
        return None
    try:
        return parse_options(state.spec)
    except MlclusterError:
        return None  # e.g. a key file moved: `down` still works from what the state recorded
