"""What the traffic generator emits, and the ground truth it keeps about it.

A test (or a benchmark) compares what the pipeline reports against :class:`GroundTruth`,
so the counts here are exact, never estimates: every record the generator yields is counted
once, in the category the pipeline is expected to put it in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any, Final, Literal, get_args

import msgspec

from schemas.events import EVENT_TYPES, Event, EventBase

RecordKind = Literal["event", "duplicate", "malformed"]
RECORD_KINDS: Final[tuple[RecordKind, ...]] = ("event", "duplicate", "malformed")

# The reason codes of the validator (schemas.validate): one malformed record breaks exactly
# one rule, so the dead-letter topic can be checked reason by reason.
MalformedReason = Literal[
    "invalid_json",
    "unsupported_schema_version",
    "missing_field",
    "naive_timestamp",
    "invalid_ip",
    "too_long",
    "unknown_field",
]
MALFORMED_REASONS: Final[tuple[MalformedReason, ...]] = get_args(MalformedReason)
TYPE_TAG_OF: Final[dict[type[EventBase], str]] = {cls: tag for tag, cls in EVENT_TYPES.items()}


# A msgspec struct rather than a frozen dataclass: one is made per record, and a frozen
# dataclass's __init__ (object.__setattr__ per field) cost as much as encoding the event.
# gc=False: it holds bytes, strings and an event (gc=False itself), never a cycle.
class GeneratedRecord(msgspec.Struct, frozen=True, gc=False):
    """One Kafka record as the generator would send it.

    ``kind`` is "event" for the first sending of a valid event, "duplicate" for the same
    bytes sent again (a producer retry), "malformed" for bytes that break the contract.
    ``late`` marks an event emitted at least :data:`~streams.generate.model.MIN_LATENESS`
    after the stream had moved past its ``occurred_at`` (its duplicate is marked too).
    """

    key: bytes
    value: bytes
    kind: RecordKind
    event: Event | None
    malformed_reason: MalformedReason | None
    late: bool = False


def _zeroes(names: Iterable[str]) -> dict[str, int]:
    return dict.fromkeys(names, 0)


@dataclass
class GroundTruth:
    """Exact counts of what was emitted. Complete once the record stream is exhausted."""

    records: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: _zeroes(RECORD_KINDS))
    events_by_type: dict[str, int] = field(default_factory=lambda: _zeroes(EVENT_TYPES))
    duplicates_by_type: dict[str, int] = field(default_factory=lambda: _zeroes(EVENT_TYPES))
    malformed_by_reason: dict[str, int] = field(default_factory=lambda: _zeroes(MALFORMED_REASONS))
    late_events: int = 0
    late_by_type: dict[str, int] = field(default_factory=lambda: _zeroes(EVENT_TYPES))
    accounts: int = 0
    users: int = 0
    sessions: int = 0

    def count(self, record: GeneratedRecord) -> None:
        """Add one emitted record."""
        if record.kind == "malformed":
            assert record.malformed_reason is not None
            self.add("malformed", record.malformed_reason)
        else:
            assert record.event is not None
            self.add(record.kind, event_type_of(record.event), late=record.late)

    def add(self, kind: RecordKind, name: str, *, late: bool = False, n: int = 1) -> None:
        """Add ``n`` emitted records of ``kind``; ``name`` is the event type (the
        malformed reason for malformed records); ``late`` counts for events only."""
        self.records += n
        self.by_kind[kind] += n
        if kind == "malformed":
            self.malformed_by_reason[name] += n
        elif kind == "duplicate":
            self.duplicates_by_type[name] += n
        else:
            self.events_by_type[name] += n
            if late:
                self.late_events += n
                self.late_by_type[name] += n

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (what ``sieve generate --truth-json`` writes)."""
        return {
            "records": self.records,
            "by_kind": dict(self.by_kind),
            "events_by_type": dict(self.events_by_type),
            "duplicates_by_type": dict(self.duplicates_by_type),
            "malformed_by_reason": dict(self.malformed_by_reason),
            "late_events": self.late_events,
            "late_by_type": dict(self.late_by_type),
            "accounts": self.accounts,
            "users": self.users,
            "sessions": self.sessions,
        }


def event_type_of(event: Event) -> str:
    """The event's ``type`` tag ("request", "login", ...)."""
    return TYPE_TAG_OF[type(event)]


def tally(records: Iterable[GeneratedRecord]) -> GroundTruth:
    """Count records into a fresh GroundTruth (population counts stay zero)."""
    truth = GroundTruth()
    for record in records:
        truth.count(record)
    return truth


def write_jsonl(records: Iterable[GeneratedRecord], out: IO[bytes]) -> int:
    """Write each record's value as one line; returns how many lines were written.

    The line is the exact bytes a producer would send (malformed ones included), so
    ``sieve replay FILE.jsonl`` feeds the same values to the raw topic. Values never
    contain a raw newline: msgspec escapes them inside strings and the malformed
    variants are built without one.
    """
    written = 0
    for record in records:
        out.write(record.value)
        out.write(b"\n")
        written += 1
    return written
