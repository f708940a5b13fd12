"""A request body as a batch of events: decoding, checking, and the browser's privacy signals.

Pure: bytes and plain values in, events and problems out; no HTTP, no Kafka, no clock (the
caller passes when the request arrived). A batch is all or nothing: :func:`check_batch`
returns events only when no event has a problem, so the collector never forwards part of a
batch a client has to fix and re-send. Neither function raises, whatever the bytes: a body
nested too deep for a parser (issue 14: 1,000 levels answered 500) is a problem like any
other, with the same depth limit as the worker's (``schemas.events.MAX_NESTING_DEPTH`` per
event, one more level for the array around them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from schemas.bounds import DEFAULT_TIME_BOUNDS, TimeBounds, nests_deeper_than
from schemas.events import MAX_NESTING_DEPTH, Event, encode
from schemas.validate import (
    INVALID_JSON,
    INVALID_VALUE,
    NOT_AN_OBJECT,
    TOO_DEEP,
    parse_event,
    validate_event_bytes,
)
from streams.errors import InvalidEventError
from streams.privacy.custom_events import CustomEvents, PropertyKind

JSON: Final = "application/json"
NDJSON: Final = "application/x-ndjson"
SUPPORTED_MEDIA_TYPES: Final = (JSON, NDJSON)

# Codes of problems only a batch can have; an event's own use schemas.validate.CODES.
PROPERTY_MISFIT: Final = "property_kind_mismatch"
EMPTY_BATCH: Final = "empty_batch"
NOT_A_BATCH: Final = "not_a_batch"
ACCOUNT_MISMATCH: Final = "account_mismatch"


@dataclass(frozen=True)
class BatchProblem:
    """One thing wrong with a batch. ``index`` is the event's position (None: the whole
    body); ``path`` is a JSON path inside the event ("$", "$.geo.country"), as in
    :class:`schemas.validate.Problem`. Like its reasons, these never quote a value."""

    index: int | None
    path: str
    code: str
    reason: str
    event_id: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "event_id": self.event_id,
            "path": self.path,
            "code": self.code,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Undecodable:
    """An item that is not a JSON value a parser may read (not JSON, or nested too deep);
    kept in place so later events keep their index."""

    reason: str
    code: str = INVALID_JSON


@dataclass(frozen=True)
class PrivacySignals:
    """What the request's headers say about the person: ``DNT: 1`` and ``Sec-GPC: 1``."""

    dnt: bool = False
    gpc: bool = False

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> PrivacySignals:
        # Only "1" is a signal (both specifications); "0" or junk leaves events as sent.
        return cls(
            dnt=headers.get("DNT", "").strip() == "1",
            gpc=headers.get("Sec-GPC", "").strip() == "1",
        )


def decode_batch(body: bytes, media_type: str) -> tuple[list[object], BatchProblem | None]:
    """The items of a body: a JSON array, one JSON object, or NDJSON (one event a line).

    Returns ``(items, None)``, or ``([], problem)`` when the body as a whole is unusable.
    Items are whatever JSON values the body held, checked by :func:`check_batch`; an NDJSON
    line that is not JSON is an :class:`Undecodable` item, so the other lines are still
    checked and reported. NDJSON skips blank lines (a trailing newline is fine), so an
    index counts events, not lines.
    """
    items = _decode_ndjson(body) if media_type == NDJSON else _decode_json(body)
    if isinstance(items, BatchProblem):
        return [], items
    if not items:
        return [], BatchProblem(None, "$", EMPTY_BATCH, "the body holds no events")
    return items, None


def check_batch(
    items: Sequence[object],
    account_id: str,
    signals: PrivacySignals | None = None,
    *,
    received_at_ms: int | None = None,
    bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> tuple[list[Event], list[BatchProblem]]:
    """Every problem of every item, or (when there are none) the items as events.

    ``signals`` are applied first (:func:`apply_signals`), so what is checked is exactly
    what will be sent. An event naming another account than the write key's is a problem
    of that event (``account_id``, ``account_mismatch``) like any other, so the client
    learns everything to fix from one answer. ``received_at_ms`` is when the request
    arrived: each ``occurred_at`` must lie within ``bounds`` of it, as the worker will
    require of the record's timestamp (None: only that it exists in UTC).
    """
    signals = signals or PrivacySignals()
    events: list[Event] = []
    problems: list[BatchProblem] = []
    for index, item in enumerate(items):
        if isinstance(item, Undecodable):
            problems.append(BatchProblem(index, "$", item.code, item.reason))
        elif not isinstance(item, dict):
            reason = f"an event must be a JSON object, not {_json_kind(item)}"
            problems.append(BatchProblem(index, "$", NOT_AN_OBJECT, reason))
        else:
            arrival = (received_at_ms, bounds)
            event, found = _check_event(index, apply_signals(item, signals), account_id, arrival)
            problems.extend(found)
            if event is not None:
                events.append(event)
    return ([], problems) if problems else (events, [])


def apply_signals(item: dict[str, object], signals: PrivacySignals) -> dict[str, object]:
    """The event object with ``dnt``/``gpc`` raised where the request's headers raise them.

    A header only ever raises a flag, never lowers one: it is the person's own agent
    speaking, while the body is the site's code, and an SDK that always sends
    ``"dnt": false`` must not silence the person's browser. A value that is not a boolean
    is left alone for the validator to report.
    """
    raised = dict(item)
    for flag, on in (("dnt", signals.dnt), ("gpc", signals.gpc)):
        if on and item.get(flag, False) is False:
            raised[flag] = True
    return raised


@dataclass(frozen=True)
class Declared:
    """Items with each custom event's properties cut to what the policy declares, and how
    many were dropped (not declared; declared ``dropped``)."""

    items: list[object]
    undeclared: int = 0
    declared_dropped: int = 0


def keep_declared(items: Sequence[object], custom: CustomEvents) -> Declared:
    """Cut every ``custom`` event object's ``properties`` to the declared ones (so nothing
    undeclared is ever sent); a declared property of the wrong kind makes the item an
    :class:`Undecodable` (reported, never cast). Other items are left as they are."""
    kept: list[object] = []
    undeclared = dropped = 0
    for item in items:
        properties = item.get("properties") if isinstance(item, dict) else None
        name = item.get("name") if isinstance(item, dict) else None
        if (
            not isinstance(item, dict)
            or item.get("type") != "custom"
            or not isinstance(properties, dict)
            or not isinstance(name, str)
        ):
            kept.append(item)
            continue
        filtered = custom.filter(name, properties)
        undeclared += filtered.undeclared
        dropped += filtered.declared_dropped
        if filtered.misfits:
            key, kind = filtered.misfits[0]
            what = "a number" if kind is PropertyKind.METRIC else "a string, number or boolean"
            reason = f"property {key!r} is declared {kind.value} and must be {what}"
            kept.append(Undecodable(reason, PROPERTY_MISFIT))
        else:
            kept.append({**item, "properties": filtered.kept})
    return Declared(kept, undeclared, dropped)


# An array's elements as raw JSON: msgspec checks the syntax (~1.5 ms a MB) without building
# them, so each element's depth is checked before anything recurses into it.
_RAW_ITEMS: Final = msgspec.json.Decoder(list[msgspec.Raw])
_TOO_DEEP_BODY: Final = BatchProblem(
    None, "$", TOO_DEEP, f"the body nests deeper than {MAX_NESTING_DEPTH + 1} levels of JSON"
)


def _decode_json(body: bytes) -> list[object] | BatchProblem:
    start = body.lstrip(b" \t\r\n")[:1]
    if start == b"[":
        try:
            raw_items = _RAW_ITEMS.decode(body)
        except RecursionError:  # msgspec recurses to skip an element ~1,000 levels deep
            return _TOO_DEEP_BODY
        except msgspec.DecodeError as error:
            return BatchProblem(
                None, "$", INVALID_JSON, f"the body is not valid JSON ({_where(error)})"
            )
        return [_decode_item(bytes(raw), f"event {index}") for index, raw in enumerate(raw_items)]
    if start == b"{" and nests_deeper_than(body, MAX_NESTING_DEPTH):
        return _TOO_DEEP_BODY
    try:
        document = msgspec.json.decode(body)  # one object, a scalar, or not JSON: no depth
    except (msgspec.DecodeError, RecursionError) as error:
        return BatchProblem(
            None, "$", INVALID_JSON, f"the body is not valid JSON ({_where(error)})"
        )
    if isinstance(document, dict):
        return [document]
    reason = f"the body must be a JSON array of events or one event, not {_json_kind(document)}"
    return BatchProblem(None, "$", NOT_A_BATCH, reason)


def _decode_ndjson(body: bytes) -> list[object]:
    items: list[object] = []
    for line_number, line in enumerate(body.split(b"\n"), start=1):
        if line.strip():
            items.append(_decode_item(line, f"line {line_number}"))
    return items


def _decode_item(data: bytes, what: str) -> object:
    if nests_deeper_than(data, MAX_NESTING_DEPTH):
        reason = f"{what} nests deeper than {MAX_NESTING_DEPTH} levels of JSON"
        return Undecodable(reason, TOO_DEEP)
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError) as error:
        return Undecodable(f"{what} is not valid JSON ({_where(error)})")


def _check_event(
    index: int,
    item: dict[str, object],
    account_id: str,
    arrival: tuple[int | None, TimeBounds],
) -> tuple[Event | None, list[BatchProblem]]:
    event_id = item.get("event_id")
    shown_id = event_id if isinstance(event_id, str) else None
    received_at_ms, bounds = arrival
    # Re-encoded so every event meets the same byte-level checks (size limit) whether it
    # came in an array or on its own NDJSON line.
    data = msgspec.json.encode(item)
    event: Event | None = None
    found: list[BatchProblem] = []
    try:
        # The decoder's fast path first: the validator only runs to explain an event
        # that fails.
        event = parse_event(data, received_at_ms=received_at_ms, bounds=bounds)
        # Also the canonical bytes the producer will send (dates and numbers may be spelt
        # longer than the client spelt them): the producer refuses an invalid event, and a
        # refusal in the middle of sending would leave part of a batch sent.
        parse_event(encode(event), received_at_ms=received_at_ms, bounds=bounds)
    except InvalidEventError as error:
        found = [
            BatchProblem(index, problem.path, problem.code, problem.reason, shown_id)
            for problem in validate_event_bytes(data, received_at_ms=received_at_ms, bounds=bounds)
        ] or [
            BatchProblem(index, path, INVALID_VALUE, reason, shown_id)
            for path, reason in error.problems
        ]
    claimed = item.get("account_id")
    if isinstance(claimed, str) and claimed != account_id:
        reason = "account_id is not the account of the write key the batch was sent with"
        found.append(BatchProblem(index, "$.account_id", ACCOUNT_MISMATCH, reason, shown_id))
    return (None if found else event), found


def _json_kind(value: object) -> str:
    names = {list: "an array", dict: "an object", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _where(error: Exception) -> str:
    # msgspec says what and where ("JSON is malformed: invalid character (byte 12)",
    # "Input data was truncated") without quoting the input.
    if isinstance(error, RecursionError):
        return "nested too deep to read"
    detail = str(error).removeprefix("JSON is malformed: ")
    return detail[:1].lower() + detail[1:]
