"""Collect, then summarise: every request's record is kept, and figures are
derived from all of them at once.

Percentiles are exact (nearest rank on the sorted recorded values): a
percentile is always one of the recorded latencies, never above the max, and
1..100 gives p95 = 95. Times are plain numbers passed in by the caller (the
load generator reads the clock); nothing here reads the time itself.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import threading
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Optional, Sequence

import orjson

PERCENTILES = (50, 90, 99)


@dataclass
class Answer:
    """What the client got back for one request (`Target.send`)."""
    status: Optional[int]  # HTTP status; None when no answer came back
    error: str = ""        # "" when ok; "http_503", "connection", "timeout", "bad_answer"
    container: str = ""
    queue_ms: Optional[float] = None       # orchestrator: waiting for a container
    inference_ms: Optional[float] = None   # worker: the model's own time
    server_ms: Optional[float] = None      # orchestrator: arrival to answer
    attempts: Optional[int] = None

    @classmethod
    def of_http(cls, status: Optional[int], error: str, body: bytes) -> "tuple[Answer, Optional[str]]":
        """The answer to one request from its HTTP status (None: no answer),
        transport error and body, and the model it names (None if none)."""
        values, model = _answer_values(status, error, body)
        return cls(*values), model


def _answer_values(status: Optional[int], error: str, body: bytes) -> tuple[tuple, Optional[str]]:
    """`Answer.of_http`'s fields, in order, and model: positional values, so a
    `RequestRecord` is built from them directly (no Answer in between; this
    runs once per request after the run). orjson decodes ~4x faster than json."""
    if error or status is None:
        return (status, error or "connection"), None
    if status != 200:
        return (status, f"http_{status}"), None
    try:
        answer = orjson.loads(body)
        result = answer.get("result") or {}
        return ((200, "", str(answer["container"]["id"]), answer.get("queue_ms"), result.get("inference_ms"),
                 answer.get("total_ms"), answer.get("attempts")),
                str(result["model"]) if result.get("model") else None)
    except (ValueError, KeyError, TypeError, AttributeError):  # orjson.JSONDecodeError is a ValueError
        return (200, "bad_answer"), None


@dataclass(kw_only=True)
class RequestRecord(Answer):
    """One request as the client saw it. Times are seconds from the run's
    start (the same clock for all of them); latencies are milliseconds. Its
    answer's fields are its own (`record.status`, `record.queue_ms`...)."""
    index: int
    step: int             # sweep step (0 for a single run)
    scheduled_s: float    # when it was due (open loop) or sent (closed loop)
    sent_s: float         # when the client actually sent it
    done_s: float

    @classmethod
    def of(cls, answer: Answer, **times: Any) -> "RequestRecord":
        """The record of `answer`, with its index, step and times as keywords."""
        return cls(**times, **dataclasses.asdict(answer))

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def latency_ms(self) -> float:
        """From when the request was due, so a late send counts (coordinated omission)."""
        return (self.done_s - self.scheduled_s) * 1000.0


# One CSV column per field, the times first, then latency_ms (derived: not read back).
CSV_FIELDS = ([f.name for f in fields(RequestRecord) if f.name not in {a.name for a in fields(Answer)}]
              + [f.name for f in fields(Answer)] + ["latency_ms"])


def percentile(sorted_values: Sequence[float], p: float) -> Optional[float]:
    """Nearest-rank percentile of already sorted values: the smallest value
    with at least p% of the values at or below it. None for no values."""
    if not sorted_values:
        return None
    if not 0 <= p <= 100:
        raise ValueError("a percentile is between 0 and 100")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Distribution:
    """Exact figures of some values (None for no values)."""
    p50: Optional[float] = None
    p90: Optional[float] = None
    p99: Optional[float] = None
    max: Optional[float] = None
    min: Optional[float] = None
    mean: Optional[float] = None
    count: int = 0


def distribution(values: Iterable[float], digits: int = 3) -> Distribution:
    """p50/p90/p99/max (and min, mean, count) of `values`, exact."""
    data = sorted(values)
    if not data:
        return Distribution()
    p50, p90, p99 = (_round(percentile(data, p), digits) for p in PERCENTILES)
    return Distribution(p50, p90, p99, max=_round(data[-1], digits), min=_round(data[0], digits),
                        mean=_round(sum(data) / len(data), digits), count=len(data))


def _round(value: Optional[float], digits: int) -> Optional[float]:
    return None if value is None else round(value, digits)


# What the load generator records per request, decoded only when read:
# (step, index, scheduled_s, sent_s, done_s, status, error, body).
RawRecord = tuple


class Recorder:
    """Thread-safe collection of request records. The load generator adds raw
    tuples (`add_raw`: cheap on its hot path); they become `RequestRecord`s,
    answers decoded, when first read. `model` is the first good answer's.

    `add_raw` takes no lock: it is one `list.append`, atomic under the GIL
    (and under free-threading's per-list lock), and the readers, which do
    lock among themselves, only ever remove a prefix of `_raw` they have
    already read, so an append racing with them is never lost. Records keep
    the order they were added in (raw ones after decoded ones), so a count of
    them is a stable position (`done_times_since`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._raw: list[RawRecord] = []
        self.model: Optional[str] = None
        # The load generator's hot path: one C call, no lock (see above).
        self.add_raw: Callable[[RawRecord], None] = self._raw.append
        self.add_many: Callable[[list[RawRecord]], None] = self._raw.extend  # the compiled engine's, a batch at once

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._decode()
            self._records.append(record)

    def __len__(self) -> int:
        return len(self._records) + len(self._raw)

    def records(self, step: Optional[int] = None) -> list[RequestRecord]:
        with self._lock:
            self._decode()
            records = list(self._records)
        return records if step is None else [r for r in records if r.step == step]

    def done_times(self, step: int) -> list[float]:
        return self.done_times_since(step, 0)[0]

    def done_times_since(self, step: int, position: int) -> tuple[list[float], int]:
        """The done times of `step`'s records from the `position`-th record on
        (in the order added), and the position after the last: a caller
        polling during a run reads only what is new."""
        with self._lock:  # no decoding meanwhile: `_records` is fixed, `_raw` only grows
            decoded = len(self._records)
            times = [r.done_s for r in self._records[position:] if r.step == step]
            skip = max(0, position - decoded)
            raw = self._raw[skip:]
            times += [t[4] for t in raw if t[0] == step]
            return times, decoded + skip + len(raw)

    def _decode(self) -> None:
        count = len(self._raw)  # what was added up to now; later appends wait for the next read
        for step, index, scheduled_s, sent_s, done_s, status, error, body in self._raw[:count]:
            values, model = _answer_values(status, error, body)
            if self.model is None and model:
                self.model = model
            self._records.append(RequestRecord(*values, index=index, step=step, scheduled_s=scheduled_s,
                                               sent_s=sent_s, done_s=done_s))
        del self._raw[:count]


@dataclass
class Summary:
    """The figures of one measurement (a step, or the whole run). Its JSON form
    is its fields, in this order (`mlcluster bench --json`)."""
    requests: int
    ok: int
    errors: int
    errors_by_kind: dict[str, int]
    duration_s: float
    throughput_rps: float            # answered ok per second
    sent_rps: Optional[float]        # what the client achieved while sending
    offered_rps: Optional[float]     # the open loop's rate (None: closed loop)
    latency_ms: Distribution         # at the client, from when each request was due
    per_container: dict[str, int]    # container id -> requests it answered ok
    breakdown_ms: dict[str, Distribution]  # client, send_delay, server_total, queue, inference, forwarding, network

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Summary":
        """Raises KeyError or TypeError when `data` is not a summary."""
        values = {f.name: data[f.name] for f in fields(cls)}
        values["latency_ms"] = Distribution(**values["latency_ms"])
        values["breakdown_ms"] = {k: Distribution(**v) for k, v in values["breakdown_ms"].items()}
        return cls(**values)


@dataclass
class StepSummary:
    """One step of a sweep: its load, why it ended, and its figures
    (JSON: these fields, then the summary's)."""
    step: int
    concurrency: Optional[int]   # closed loop
    rate: Optional[float]        # open loop
    stopped_by: str              # done | stable | time limit | interrupted
    summary: Summary

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "concurrency": self.concurrency, "rate": self.rate,
                "stopped_by": self.stopped_by, **self.summary.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StepSummary":
        return cls(data["step"], data["concurrency"], data["rate"], data["stopped_by"], Summary.from_json(data))


def summarise(records: Sequence[RequestRecord], start_s: float, end_s: float,
              offered_rps: Optional[float] = None) -> Summary:
    """The figures of one measurement: counts, rates, client latency and the
    server-side breakdown. `start_s`/`end_s` bound the measurement window."""
    duration = max(end_s - start_s, 1e-9)
    ok = [r for r in records if r.ok]
    errors = collections.Counter(r.error for r in records if not r.ok)
    per_container = collections.Counter(r.container for r in ok if r.container)
    return Summary(
        requests=len(records), ok=len(ok), errors=sum(errors.values()), errors_by_kind=dict(sorted(errors.items())),
        duration_s=round(duration, 3), throughput_rps=round(len(ok) / duration, 3), sent_rps=_send_rate(records),
        offered_rps=offered_rps, latency_ms=distribution(r.latency_ms for r in ok),
        per_container=dict(sorted(per_container.items())), breakdown_ms=breakdown(ok))


def _send_rate(records: Sequence[RequestRecord]) -> Optional[float]:
    """Requests per second while sending: the rate the client achieved, to
    set beside the offered rate (and apart from the drain at the end)."""
    sent = sorted(r.sent_s for r in records)
    if len(sent) < 2 or sent[-1] <= sent[0]:
        return None
    return round((len(sent) - 1) / (sent[-1] - sent[0]), 3)


def breakdown(ok: Sequence[RequestRecord]) -> dict[str, Distribution]:
    """Where the time went, per request, from the answer's own fields:
    queue wait and inference (server side), forwarding (orchestrator to worker
    and back, minus inference), and the rest (network and client)."""
    with_server = [r for r in ok if r.server_ms is not None]
    parts = {
        "client": [r.latency_ms for r in ok],
        "send_delay": [(r.sent_s - r.scheduled_s) * 1000.0 for r in ok],
        "server_total": [r.server_ms for r in with_server],
        "queue": [r.queue_ms for r in with_server if r.queue_ms is not None],
        "inference": [r.inference_ms for r in with_server if r.inference_ms is not None],
        "forwarding": [r.server_ms - r.queue_ms - r.inference_ms for r in with_server
                       if r.queue_ms is not None and r.inference_ms is not None],
        "network": [(r.done_s - r.sent_s) * 1000.0 - r.server_ms for r in with_server],
    }
    return {name: distribution(values) for name, values in parts.items()}


def window_rates(done_times: Sequence[float], start_s: float, now_s: float, window_s: float) -> list[float]:
    """Completions per second in consecutive whole windows from `start_s` to `now_s`."""
    count = int((now_s - start_s) // window_s)
    if count <= 0:
        return []
    buckets = [0] * count
    for t in done_times:
        i = int((t - start_s) // window_s)
        if 0 <= i < count:
            buckets[i] += 1
    return [b / window_s for b in buckets]


def is_stable(rates: Sequence[float], windows: int = 3, tolerance: float = 0.1) -> bool:
    """True when the last `windows` window rates each lie within `tolerance`
    (a fraction) of their mean: throughput has settled."""
    if len(rates) < windows:
        return False
    last = rates[-windows:]
    mean = sum(last) / windows
    return mean > 0 and all(abs(r - mean) <= tolerance * mean for r in last)
