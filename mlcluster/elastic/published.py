"""What the controller publishes of itself for `status`: `<cluster dir>/autoscale.json`,
rewritten on every change (atomically, mode 0600), read by cluster.status."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..state import write_private_json

PUBLISHED_FILE = "autoscale.json"


@dataclass(frozen=True)
class ControllerStatus:
    """`status --json`'s `autoscale` object. min/max/target are None on a
    fixed cluster (the controller then only heals)."""
    min: Optional[int]
    max: Optional[int]
    target: Optional[float]
    desired: int
    current: int
    reason: str = ""
    pid: int = 0
    updated_at: float = 0.0  # epoch seconds
    parked: tuple[str, ...] = ()       # `up`'s containers scaled away (drained, stopped; they come back first)
    scaled_away: tuple[str, ...] = ()  # aws: `up`'s worker instances terminated while all theirs are parked

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def publish(directory: Path, status: ControllerStatus) -> None:
    write_private_json(directory / PUBLISHED_FILE, status.to_json())


def published(directory: Path) -> Optional[ControllerStatus]:
    """The last published status, or None (no controller, or an unreadable file)."""
    try:
        return parse_published((directory / PUBLISHED_FILE).read_text())
    except OSError:
        return None


def parse_published(text: str) -> Optional[ControllerStatus]:
    """A published status from its text, or None (empty or unreadable)."""
    try:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(ControllerStatus)}
        return ControllerStatus(**{k: v for k, v in data.items() if k in names})
    except (ValueError, TypeError, AttributeError):
        return None
