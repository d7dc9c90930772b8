"""A canary in place, recorded in `<cluster dir>/canary.json` (0600): the
version it serves, its share, the spec it serves (what `--promote` finishes
the roll to) and its worker processes, each standing in for one old
container (the slot it will take). state.json keeps describing what the
cluster serves until the roll is done: a canary is not a change made."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional

from ..state import ClusterSpec, cluster_dir, write_private_json

CANARY_FILE = "canary.json"


@dataclass
class NewWorker:
    """A worker process of the new version, started for `slot` (an old container's process id)."""
    slot: str
    id: str       # its container id at the orchestrator
    port: int
    pid: int
    log: str


@dataclass
class CanaryRecord:
    version: str
    percent: float
    spec: ClusterSpec
    workers: list[NewWorker] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"version": self.version, "percent": self.percent, "spec": dataclasses.asdict(self.spec),
                "workers": [dataclasses.asdict(w) for w in self.workers]}


def load(name: str) -> Optional[CanaryRecord]:
    path = cluster_dir(name) / CANARY_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return CanaryRecord(version=data["version"], percent=float(data["percent"]), spec=ClusterSpec(**data["spec"]),
                        workers=[NewWorker(**w) for w in data["workers"]])


def save(name: str, record: CanaryRecord) -> None:
    write_private_json(cluster_dir(name) / CANARY_FILE, record.to_json())


def forget(name: str) -> None:
    (cluster_dir(name) / CANARY_FILE).unlink(missing_ok=True)
