"""Contract bounds that JSON Schema cannot say or that msgspec would check too slowly.

Pure functions of bytes, strings and instants (callers pass the arrival time; nothing here
reads a clock), shared by every path that checks events: the worker's batch decoder
(:mod:`schemas.decode`), the validator (:mod:`schemas.validate`) and the collector.

* **Nesting.** A valid event nests two levels (the event, its ``geo``), yet a JSON parser
  recurses once per level: about 1,000 levels, under 64 KB, made msgspec raise
  ``RecursionError`` in the worker (issue 14). A value nesting deeper than
  :data:`~schemas.events.MAX_NESTING_DEPTH` is rejected before any parser sees it.
* **Instants.** ``occurred_at`` must be an instant Python can hold in UTC
  (``0001-01-01T00:00:00+23:59`` is year 0 in UTC), and lie in a window around its
  arrival (:class:`TimeBounds`): a clock years ahead would otherwise switch deduplication
  off for its partition, and one decades behind is a broken clock, not a late batch.
* **Control characters** are found with one regular expression per text field, but only
  in events whose bytes can hold one (:func:`may_hold_control_characters`): checking every
  user agent and path with a pattern inside msgspec cost ~2 µs an event, as much as the
  whole typed decode.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import accumulate
from typing import Final

import msgspec

from schemas.events import (
    BACKFILL_HEADER,
    DEFAULT_BACKFILL_MAX_BEHIND,
    DEFAULT_EVENT_MAX_AHEAD,
    DEFAULT_EVENT_MAX_BEHIND,
)

# -- nesting ----------------------------------------------------------------------------------

# A JSON string, escapes included (the unrolled form: linear, no nested quantifiers).
_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Openers become +1, closers -1 (as int8); every other byte is deleted.
_TO_STEPS: Final = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")
_NOT_BRACKETS: Final = bytes(set(range(256)) - set(b"[]{}"))


def nests_deeper_than(data: bytes, limit: int) -> bool:
    """True if the JSON text ``data`` opens more than ``limit`` arrays or objects at once.

    Never an underestimate of how deep a parser would recurse, so a value this accepts
    cannot make msgspec (or anything walking the decoded value) recurse past ``limit``
    levels: the depth is the highest running count of openers minus closers, outside
    strings. Exact for valid JSON; for invalid JSON it may count brackets a parser would
    never reach (after the error), which only turns invalid_json into too_deep.

    Every step is a C loop over the bytes (a 64 KB value of brackets costs a fraction of a
    millisecond): two counts settle nearly every value; otherwise strings are cut out, the
    brackets become +1/-1 steps, and the running sum is Arrow's.
    """
    if data.count(b"[") + data.count(b"{") <= limit:  # nearly every value: two memchr loops
        return False
    steps = _JSON_STRING.sub(b"", data).translate(_TO_STEPS, _NOT_BRACKETS)
    if steps.count(b"\x01") <= limit:
        return False
    if b"\x01" * (limit + 1) in steps:  # openers in a row: the usual deep value
        return True
    return _deepest_running_sum(steps) > limit


def _deepest_running_sum(steps: bytes) -> int:
    if len(steps) <= 512:  # Arrow's fixed cost (~0.1 ms a call) is more than the loop's
        return max(accumulate(memoryview(steps).cast("b")))
    import pyarrow as pa  # only for values with many brackets; imported when first needed
    import pyarrow.compute as pc

    as_int8 = pa.Array.from_buffers(pa.int8(), len(steps), [None, pa.py_buffer(steps)])
    deepest = pc.max(pc.cumulative_sum(as_int8.cast(pa.int32()))).as_py()
    return int(deepest or 0)


# -- instants -----------------------------------------------------------------------------------

_DATETIME_DECODER: Final = msgspec.json.Decoder(datetime)


@functools.lru_cache(maxsize=64)  # the format check and the window check parse the same text
def parse_datetime(text: str) -> datetime | None:
    """``text`` as msgspec's typed decoder reads a date-time (aware or naive), or None.

    The very parser the event decoder uses, so every check agrees with it on every string
    (it also accepts a space for "T" and "+hhmm" offsets, which strict RFC 3339 does not).
    """
    try:
        return _DATETIME_DECODER.decode(msgspec.json.encode(text))
    except (msgspec.DecodeError, msgspec.EncodeError, UnicodeError):  # UnicodeError: surrogates
        return None


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
# Instants that stay representable after a day's shift either way (a zone offset is under a
# day): comparing an aware datetime against them never overflows.
_EARLIEST: Final = datetime.min.replace(tzinfo=UTC) + timedelta(days=1)
_LATEST: Final = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """How far an event's ``occurred_at`` may lie from its arrival (the Kafka record
    timestamp in the worker, the request's receipt in the collector).

    ``max_behind`` is for live traffic (a phone that was offline for weeks still fits);
    records marked as a backfill (:data:`~schemas.events.BACKFILL_HEADER`, set by
    ``sieve replay``) get ``backfill_max_behind`` instead. Nothing may be more than
    ``max_ahead`` in the future, backfill or not.
    """

    max_ahead: timedelta = DEFAULT_EVENT_MAX_AHEAD
    max_behind: timedelta = DEFAULT_EVENT_MAX_BEHIND
    backfill_max_behind: timedelta = DEFAULT_BACKFILL_MAX_BEHIND

    def __post_init__(self) -> None:
        for name in ("max_ahead", "max_behind", "backfill_max_behind"):
            if getattr(self, name) < timedelta(0):
                raise ValueError(f"{name} must not be negative")


DEFAULT_TIME_BOUNDS: Final = TimeBounds()


class InstantVerdict(StrEnum):
    """What :func:`judge_instant` found; ``OK`` is the only verdict that accepts."""

    OK = "ok"
    UNREPRESENTABLE = "unrepresentable"
    TOO_FAR_AHEAD = "too_far_ahead"
    TOO_FAR_BEHIND = "too_far_behind"


def is_representable(occurred_at: datetime) -> bool:
    """True if the aware ``occurred_at`` exists in UTC within datetime's years 1-9999."""
    if 1 < occurred_at.year < 9999:  # an offset shifts the UTC date by less than a day
        return True
    try:
        occurred_at.astimezone(UTC)
    except OverflowError:
        return False
    return True


def judge_instant(
    occurred_at: datetime,
    received_at_ms: int | None,
    backfill: bool,
    bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> InstantVerdict:
    """An :class:`InstantVerdict` for the aware ``occurred_at`` of an event that arrived at
    ``received_at_ms`` (ms since the epoch; None or negative: arrival unknown, as for a
    Kafka record without a timestamp, and only representability is checked)."""
    if not is_representable(occurred_at):
        return InstantVerdict.UNREPRESENTABLE
    if received_at_ms is None or received_at_ms < 0:
        return InstantVerdict.OK
    # Aware minus aware is a timedelta (exact, never overflowing), unlike a float timestamp.
    lead = (occurred_at - _EPOCH) - received_at_ms * _ONE_MS
    if lead > bounds.max_ahead:
        return InstantVerdict.TOO_FAR_AHEAD
    behind = bounds.backfill_max_behind if backfill else bounds.max_behind
    if -lead > behind:
        return InstantVerdict.TOO_FAR_BEHIND
    return InstantVerdict.OK


@dataclass(frozen=True, slots=True)
class BatchWindow:
    """The instants every record of a batch accepts: ``[earliest, latest]``.

    Arrival times in one batch lie close together, so nearly every event falls inside
    this intersection of the records' windows and costs two datetime comparisons; only
    the rest go through :func:`judge_instant`. None bounds: nothing is known for sure.
    """

    earliest: datetime | None
    latest: datetime | None

    def surely_accepts(self, occurred_at: datetime) -> bool:
        """True only if :func:`judge_instant` would say OK for every record of the batch."""
        return (
            self.earliest is not None
            and self.latest is not None
            and self.earliest <= occurred_at <= self.latest
        )


def batch_window(
    received_at_ms: Sequence[int] | None,
    backfill: Sequence[bool] | None,
    bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> BatchWindow:
    """The window every record of a batch accepts (see :class:`BatchWindow`)."""
    if received_at_ms is None:
        # Only representability to check: every instant between the two guards is fine.
        return BatchWindow(_EARLIEST, _LATEST)
    if not received_at_ms or min(received_at_ms) < 0:
        return BatchWindow(None, None)
    widest_behind = bounds.max_behind
    if backfill is not None and all(backfill):
        widest_behind = bounds.backfill_max_behind
    earliest = _shift(max(received_at_ms), -widest_behind)
    latest = _shift(min(received_at_ms), bounds.max_ahead)
    return BatchWindow(earliest, latest)


def _shift(epoch_ms: int, by: timedelta) -> datetime:
    try:
        moment = _EPOCH + epoch_ms * _ONE_MS + by
    except OverflowError:
        return _EARLIEST if by < timedelta(0) else _LATEST
    return min(max(moment, _EARLIEST), _LATEST)


def is_backfill(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    """True if a raw record's headers mark it as a backfill (``sieve.backfill: 1``)."""
    if not headers:
        return False
    return any(name == BACKFILL_HEADER and value == b"1" for name, value in headers)


# -- control characters -----------------------------------------------------------------------

# What each kind of text field must not hold (the patterns in the JSON Schema files say the
# same, for producers; schemas.events explains the choice per field).
FORBIDDEN_IN_TEXT: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
FORBIDDEN_IN_HEADER_TEXT: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


def may_hold_control_characters(data: bytes) -> bool:
    """False if no string in the JSON text ``data`` can hold a C0 or C1 control or DEL.

    JSON strings hold C0 controls only as escapes (a raw one is invalid JSON), so a text
    with no backslash, no DEL byte and no UTF-8 lead byte 0xC2 (which starts U+0080-U+00BF,
    the C1 controls among them) has none: two memchr loops and an ASCII check decide for
    nearly every event. ``find`` rather than ``in``: measured at half the cost per call.
    """
    return (
        data.find(b"\\") >= 0
        or data.find(b"\x7f") >= 0
        or (not data.isascii() and data.find(b"\xc2") >= 0)
    )
