"""What an outbox line is: the record kinds, their parsing, and which finish records are valid usage events.

One JSON object per line: `{"t":"s",...}` a request started (before the engine sees it), `{"t":"p","id":...,
"n":N}` the engine counted its prompt, `{"t":"f","e":{UsageEvent}}` it finished. A finish record that parses but
is not a valid UsageEvent (a field missing or of the wrong type, a value the ledger's columns cannot hold) is a
poison record: the flusher quarantines it (dead_letter.py) instead of letting it stop delivery.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, get_args

import orjson

from fleetgate.db.schema import usage_events
from fleetgate.metering.events import EventStatus, UsageEvent, UsageSource

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".log"
# How each kind of line starts: the flusher tells them apart by these bytes without parsing the line.
START_PREFIX = b'{"t":"s",'
COUNTED_PREFIX = b'{"t":"p",'
FINISH_PREFIX = b'{"t":"f","e":'
LOCK_SUFFIX = ".lock"


@dataclass(frozen=True, slots=True)
class StartRecord:
    """What is known when a request is handed to an engine: enough to bill it if the gateway dies."""

    id: str
    tenant_id: str
    key_id: str
    model: str
    adapter: str | None
    replica_id: str | None
    engine: str | None
    gpu_type: str | None
    started_at: float
    stream: bool
    endpoint: str
    est_prompt_tokens: int

    def to_line(self) -> bytes:
        """One outbox line."""
        return START_PREFIX + orjson.dumps(self)[1:] + b"\n"  # no asdict(): it deep-copies every field

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StartRecord:
        """Rebuild from a parsed line."""
        return cls(**{k: data.get(k) for k in cls.__slots__})  # type: ignore[arg-type]


def segment_name(owner: str, seq: int) -> str:
    """File name of one segment."""
    return f"{owner}-{seq:06d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> tuple[str, int] | None:
    """(owner, seq) of a segment file name, or None."""
    if not name.endswith(SEGMENT_SUFFIX):
        return None
    stem = name[: -len(SEGMENT_SUFFIX)]
    owner, _, seq = stem.rpartition("-")
    if not owner or not seq.isdigit():
        return None
    return owner, int(seq)


def parse_lines(
    data: bytes, base: int = 0, skip: tuple[bytes, ...] = ()
) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """Parse complete lines into (end offset, record); returns them and the bytes used (a torn tail is left).

    Lines starting with one of `skip` are not parsed: delivery needs finish lines only, and parsing the start
    line every request also writes was about a quarter of the flusher's CPU. A line that is not a JSON object
    (the fragment of a write cut short) is skipped."""
    records: list[tuple[int, dict[str, Any]]] = []
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        line = data[pos:nl]
        pos = nl + 1
        if not line or line.startswith(skip):
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append((base + pos, record))
        else:
            log.warning("skipping a corrupt outbox line (%d bytes)", len(line))
    return records, pos


def finished_events(data: bytes, base: int = 0) -> list[tuple[int, Any]]:
    """(end offset, the finish record's event) of each complete finish line; start and prompt-count lines are not
    parsed. The event is as parsed: not necessarily a valid UsageEvent (see dead_letter.usage_event)."""
    records, _ = parse_lines(data, base, skip=(START_PREFIX, COUNTED_PREFIX))
    return [(at, r.get("e")) for at, r in records if r.get("t") == "f"]


def _max_length(column: str) -> int:
    length = getattr(usage_events.c[column].type, "length", None)
    return int(length) if length else 1 << 20


_TEXT = tuple((name, _max_length(name)) for name in ("event_id", "tenant_id", "key_id", "model", "endpoint"))
_OPTIONAL_TEXT = tuple((name, _max_length(name)) for name in ("adapter", "replica_id", "engine", "gpu_type"))
_COUNTS = ("prompt_tokens", "cached_tokens", "completion_tokens", "http_status")
_MAX_COUNT = 2**31 - 1  # the ledger's INTEGER columns (PostgreSQL int4)
_STATUSES = frozenset(get_args(EventStatus))
_SOURCES = frozenset(get_args(UsageSource))


def usage_event(raw: Any) -> UsageEvent | None:
    """The UsageEvent a finish record holds, or None when it is not a valid one (a poison record)."""
    if not isinstance(raw, dict):
        return None
    try:
        event = UsageEvent.from_dict(raw)
    except TypeError:  # a required field is missing
        return None
    return event if _valid(event) else None


def _valid(e: UsageEvent) -> bool:
    for name, limit in _TEXT:
        value = getattr(e, name)
        if type(value) is not str or not value or len(value) > limit:
            return False
    for name, limit in _OPTIONAL_TEXT:
        value = getattr(e, name)
        if value is not None and (type(value) is not str or len(value) > limit):
            return False
    for name in _COUNTS:
        value = getattr(e, name)
        if type(value) is not int or not 0 <= value <= _MAX_COUNT:
            return False
    return (
        _is_time(e.started_at)
        and _is_time(e.ended_at)
        and (e.first_token_at is None or _is_time(e.first_token_at))
        and type(e.status) is str
        and e.status in _STATUSES
        and type(e.usage_source) is str
        and e.usage_source in _SOURCES
        and type(e.stream) is bool
    )


def _is_time(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0  # type: ignore[arg-type,operator]
