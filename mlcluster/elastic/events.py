"""What the controller decided and did, as events: one JSON object a line in
`<cluster dir>/events.jsonl` (mode 0600), appended, never rewritten, read by
`mlcluster events`.

An event is a typed record: when (epoch seconds), what kind (heal,
scale_up, scale_down, and the controller's own start, stop and errors), the
reason in a sentence, the counts it saw and aimed for, and the container it
concerns when there is one.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

EVENTS_FILE = "events.jsonl"
KINDS = ("heal", "scale_up", "scale_down", "autostop", "started", "stopped", "error",
         "roll",  # roll: mlcluster/rollout
         "spot_fallback",  # a worker launched on-demand because spot was refused (providers/aws/spot.py)
         "move", "return",  # an ssh cluster's pool (elastic/pool.py): a stand-in started elsewhere, and sent home
         "prepare")  # an instance the controller launched, made ready (Docker, the image, a venv: poolprepare.py)


@dataclass(frozen=True)
class Event:
    time: float
    kind: str           # one of KINDS
    reason: str
    current: int = 0    # containers counted when it was decided
    desired: int = 0    # containers aimed for
    container: str = ""  # the container it concerns ("" for the cluster)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Event":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def line(self) -> str:
        """The event for people: "2026-12-04 07:01:02 UTC  scale_up    2 -> 4  <reason>"."""
        when = datetime.datetime.fromtimestamp(self.time, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        counts = f"{self.current} -> {self.desired}" if self.kind in ("scale_up", "scale_down") else ""
        subject = f"{self.container}: " if self.container else ""
        return f"{when}  {self.kind:<10}  {counts:<8}  {subject}{self.reason}"


def events_path(directory: Path) -> Path:
    return directory / EVENTS_FILE


def append(directory: Path, event: Event) -> None:
    """Add one event (a whole line in one write, so readers never see half of one)."""
    if event.kind not in KINDS:
        raise ValueError(f"unknown event kind {event.kind!r}")
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(events_path(directory), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(event.to_json(), sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


def parse(lines: list[str]) -> list[Event]:
    """Events from whole lines; a line that is not one (cut short by a crash) is skipped."""
    found = []
    for text in lines:
        try:
            found.append(Event.from_json(json.loads(text)))
        except (ValueError, TypeError):
            continue
    return found


def read(directory: Path, last: Optional[int] = None) -> list[Event]:
    """Every event so far, oldest first (only the `last` ones when given)."""
    path = events_path(directory)
    if not path.exists():
        return []
    found = parse(path.read_text().splitlines())
    return found[-last:] if last else found


def follow(directory: Path, last: Optional[int] = None, poll_s: float = 0.5,
           running: Callable[[], bool] = lambda: True) -> Iterator[Event]:
    """The `last` events, then each new one as it is written, while `running()`."""
    path = events_path(directory)
    offset = 0
    if path.exists():
        text = path.read_bytes()
        offset = text.rfind(b"\n") + 1
        backlog = parse(text[:offset].decode(errors="replace").splitlines())
        yield from backlog[-last:] if last else backlog
    while running():
        if path.exists() and path.stat().st_size > offset:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            whole = chunk.rfind(b"\n") + 1
            offset += whole
            yield from parse(chunk[:whole].decode(errors="replace").splitlines())
        else:
            time.sleep(poll_s)
