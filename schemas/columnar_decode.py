"""The worker's batch decoder: raw values in, accepted events as aligned Arrow columns out.

It accepts exactly what :func:`schemas.decode.decode_batch` accepts, and a rejection carries
the same first problem (a hypothesis test holds the two together), but most of the contract
is checked a column at a time:

* **A lenient typed decode.** msgspec decodes into subclasses of the contract's structs
  whose identifiers (``event_id``, ``account_id``, ``user_id``, ``session_id``) keep their
  lengths but not their pattern: running that regex in msgspec, once per identifier, cost
  ~1.15 µs of the 1.75 µs typed decode (bench/README.md). Every other constraint stays
  in msgspec. The events are instances of the contract's own types (``isinstance`` holds),
  with the same field values a strict decode gives.
* **The envelope as Arrow columns**, built once from the events; the worker's stages and
  the split reuse them. The checks msgspec no longer does, or never did, run on them: the
  identifier pattern (printable ASCII without a space, two Arrow kernels), the user agent's
  UTF-8 length, the IP syntax once per distinct address (remembered across batches), and
  ``occurred_at`` against the window the whole batch shares.
* **Only rejected rows are explained**, by the validator (:func:`schemas.decode.explain`),
  so a dead letter has the same code, field and reason whichever decoder found it.

Never raises for bad input, whatever the bytes.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any, Final, Union, get_args, get_origin

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from schemas import post_decode
from schemas.bounds import (
    DEFAULT_TIME_BOUNDS,
    InstantVerdict,
    TimeBounds,
    batch_window,
    judge_instant,
    may_hold_control_characters,
)
from schemas.decode import Rejection, explain
from schemas.events import (
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    MAX_USER_AGENT_BYTES,
    Event,
    EventBase,
    Identifier,
)

# The identifier pattern the Arrow check stands for. Printable ASCII is U+0020 to U+007E, so
# "printable and no space" is exactly this class; should the contract change the pattern,
# importing this module fails rather than checking the old one.
_IDENTIFIER_PATTERN: Final = "^[\\x21-\\x7e]+\\Z"
IDENTIFIER_FIELDS: Final = ("event_id", "account_id", "user_id", "session_id")

_UTC_US: Final = pa.timestamp("us", tz="UTC")
_US_PER_S: Final = 1_000_000

# The envelope's columns, built for every decoded event (name -> Arrow type).
ENVELOPE_COLUMNS: Final[dict[str, pa.DataType]] = {
    "event_id": pa.string(),
    "account_id": pa.string(),
    "user_id": pa.string(),
    "session_id": pa.string(),
    "ip": pa.string(),
    "user_agent": pa.string(),
    "occurred_at": _UTC_US,
    "dnt": pa.bool_(),
    "gpc": pa.bool_(),
}


def _identifier_meta() -> msgspec.Meta:
    meta = next(m for m in get_args(Identifier) if isinstance(m, msgspec.Meta))
    if meta.pattern != _IDENTIFIER_PATTERN:
        raise RuntimeError(f"the contract's identifier pattern changed: {meta.pattern!r}")
    return meta


_STRICT_IDENTIFIER: Final = _identifier_meta()
_LENIENT_IDENTIFIER: Final = Annotated[
    str,
    msgspec.Meta(
        min_length=_STRICT_IDENTIFIER.min_length, max_length=_STRICT_IDENTIFIER.max_length
    ),
]


def _without_identifier_pattern(annotation: Any) -> Any:
    """``annotation`` with every Identifier made a :data:`_LENIENT_IDENTIFIER`."""
    if annotation == Identifier:
        return _LENIENT_IDENTIFIER
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return Union[tuple(_without_identifier_pattern(arg) for arg in get_args(annotation))]  # noqa: UP007
    return annotation


def _lenient_type(cls: type[EventBase]) -> type[EventBase]:
    """A subclass of ``cls`` whose identifier fields are checked for length only."""
    overridden: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for info in msgspec.structs.fields(cls):
        annotation = _without_identifier_pattern(info.type)
        if annotation is info.type:
            continue
        if info.required:
            overridden.append((info.name, annotation))
        else:
            overridden.append((info.name, annotation, info.default))
    config = cls.__struct_config__
    lenient = msgspec.defstruct(
        f"Lenient{cls.__name__}",
        overridden,
        bases=(cls,),
        tag=config.tag,
        kw_only=True,
        frozen=True,
        module=__name__,
        # Untracked by the garbage collector: an event refers to strings, numbers, instants
        # and a Geo, never back to itself, so it can form no cycle; tracked, each batch's 10k
        # events triggered collections that scanned all of them again and again.
        gc=False,
    )
    if [f.name for f in msgspec.structs.fields(lenient)] != list(cls.__struct_fields__):
        raise RuntimeError(f"the lenient {cls.__name__} does not keep the contract's fields")
    return lenient  # type: ignore[return-value]  # defstruct says Struct; bases=(cls,) makes it one


_LENIENT_TYPES: Final = {tag: _lenient_type(cls) for tag, cls in EVENT_TYPES.items()}
_DECODER: Final[msgspec.json.Decoder[Any]] = msgspec.json.Decoder(
    Union[tuple(_LENIENT_TYPES.values())]  # noqa: UP007
)

# Each event type's position in EVENT_TYPES, for the strict and the lenient classes alike.
TYPE_CODES: Final[dict[type, int]] = {
    **{cls: code for code, cls in enumerate(EVENT_TYPES.values())},
    **{cls: code for code, cls in enumerate(_LENIENT_TYPES.values())},
}


@dataclass(frozen=True, slots=True)
class DecodedColumns:
    """One batch decoded: the accepted events in input order, and every rejection."""

    positions: list[int]  # each accepted event's index in the input
    events: list[Event]  # the accepted events (subclasses of the contract's types)
    type_codes: pa.Array  # int8, aligned with events: the position of its type in EVENT_TYPES
    columns: dict[str, pa.Array]  # ENVELOPE_COLUMNS, aligned with events
    rejections: list[Rejection]  # in index order


def decode_columns(
    values: Sequence[bytes | None],
    received_at_ms: Sequence[int] | None = None,
    backfill: Sequence[bool] | None = None,
    bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> DecodedColumns:
    """Decode one batch; same arguments and verdicts as :func:`schemas.decode.decode_batch`."""
    if received_at_ms is not None and len(received_at_ms) != len(values):
        raise ValueError("received_at_ms must have one timestamp per value")
    if backfill is not None and len(backfill) != len(values):
        raise ValueError("backfill must have one flag per value")
    decode = _DECODER.decode
    has_control_characters = post_decode.has_control_characters
    positions: list[int] = []
    events: list[Event] = []
    rejected: list[int] = []
    for index, value in enumerate(values):
        if not value or len(value) > MAX_EVENT_BYTES:
            rejected.append(index)
            continue
        try:
            event = decode(value)
        except (msgspec.DecodeError, RecursionError):
            # RecursionError: msgspec recurses while it looks for the "type" tag; the
            # validator rejects such a value as too deep before parsing it.
            rejected.append(index)
            continue
        # Three memchr loops over the bytes spare nearly every event the regex searches.
        if may_hold_control_characters(value) and has_control_characters(event):
            rejected.append(index)
            continue
        positions.append(index)
        events.append(event)
    columns = {
        name: pa.array(list(map(attrgetter(name), events)), arrow_type)
        for name, arrow_type in ENVELOPE_COLUMNS.items()
    }
    failing = _failing(events, columns, positions, received_at_ms, backfill, bounds)
    if failing is not None:
        keep = pc.invert(failing)
        rejected.extend(p for p, bad in zip(positions, failing.to_pylist(), strict=True) if bad)
        rejected.sort()
        kept = keep.to_pylist()
        positions = [p for p, ok in zip(positions, kept, strict=True) if ok]
        events = [e for e, ok in zip(events, kept, strict=True) if ok]
        columns = {name: column.filter(keep) for name, column in columns.items()}
    rejections = [
        explain(
            index,
            values[index],
            received_at_ms[index] if received_at_ms is not None else None,
            backfill[index] if backfill is not None else False,
            bounds,
        )
        for index in rejected
    ]
    type_codes = pa.array([TYPE_CODES[type(event)] for event in events], pa.int8())
    return DecodedColumns(positions, events, type_codes, columns, rejections)


def _failing(
    events: list[Event],
    columns: dict[str, pa.Array],
    positions: list[int],
    received_at_ms: Sequence[int] | None,
    backfill: Sequence[bool] | None,
    bounds: TimeBounds,
) -> pa.Array | None:
    """A boolean mask of the events the column checks reject (None: none is)."""
    if not events:
        return None
    masks = [_bad_identifiers(columns[name]) for name in IDENTIFIER_FIELDS]
    masks.append(pc.greater(pc.binary_length(columns["user_agent"]), MAX_USER_AGENT_BYTES))
    masks.append(_bad_ips(columns["ip"]))
    masks.append(
        _outside_window(events, columns["occurred_at"], positions, received_at_ms, backfill, bounds)
    )
    failing = functools.reduce(pc.or_kleene, masks).fill_null(False)
    return failing if pc.any(failing).as_py() else None


def _bad_identifiers(column: pa.Array) -> pa.Array:
    # msgspec checked the length (1 to 128 characters); the class is the pattern's.
    return pc.invert(
        pc.and_(pc.ascii_is_printable(column), pc.invert(pc.match_substring(column, " ")))
    )


def _bad_ips(column: pa.Array) -> pa.Array:
    # One batch names few addresses (a client sends many events): each is parsed once.
    distinct = column.dictionary_encode()
    verdicts = [not _is_valid_ip(ip) for ip in distinct.dictionary.to_pylist()]
    return pa.array(verdicts, pa.bool_()).take(distinct.indices)


@functools.lru_cache(maxsize=1 << 16)  # addresses recur across batches too; a pure function
def _is_valid_ip(ip: str) -> bool:
    return post_decode.is_valid_ip(ip)


def _outside_window(
    events: list[Event],
    occurred: pa.Array,
    positions: list[int],
    received_at_ms: Sequence[int] | None,
    backfill: Sequence[bool] | None,
    bounds: TimeBounds,
) -> pa.Array:
    """Events whose ``occurred_at`` :func:`~schemas.bounds.judge_instant` does not accept.

    Two comparisons per event against the window every record of the batch accepts; only
    the events outside it are judged one by one, against their own arrival.
    """
    window = batch_window(received_at_ms, backfill, bounds)
    if window.earliest is None or window.latest is None:
        maybe = pa.array([True] * len(events))
    else:
        as_us = occurred.cast(pa.int64())
        maybe = pc.or_(
            pc.less(as_us, _epoch_us(window.earliest)),
            pc.greater(as_us, _epoch_us(window.latest)),
        )
        if not pc.any(maybe).as_py():
            return maybe
    outside = maybe.to_pylist()
    for i in [i for i, flagged in enumerate(outside) if flagged]:
        index = positions[i]
        verdict = judge_instant(
            events[i].occurred_at,
            received_at_ms[index] if received_at_ms is not None else None,
            backfill[index] if backfill is not None else False,
            bounds,
        )
        outside[i] = verdict is not InstantVerdict.OK
    return pa.array(outside, pa.bool_())


def _epoch_us(moment: Any) -> int:
    # Exact: an aware datetime as whole microseconds since the epoch, like Arrow's cast.
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _US_PER_S + delta.microseconds


_EPOCH: Final = pa.scalar(0, _UTC_US).as_py()
