"""Fuzz and property tests: whatever the input, every parser of outside data accepts it or
rejects it with a reason, and never raises (issue 14).

The parsers: the worker's batch decoder (``schemas.decode``), the validator
(``schemas.validate``), the collector's body parser (``streams.collector.batch``) with its
content decoding (``streams.collector.encoding``), and the access-log parser
(``streams.replay``). Inputs are random bytes and, more usefully, structured generators:
JSON that nests deep or never closes, huge and odd numbers, odd Unicode and escaped lone
surrogates, NULs and other controls in every field, and timestamps of every shape.
"""

from __future__ import annotations

import gzip
import zlib
from datetime import timedelta
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.bounds import TimeBounds
from schemas.decode import decode_batch as decode_values
from schemas.events import ENVELOPE_FIELDS, EVENT_TYPES, type_specific_fields
from schemas.validate import CODES, first_problem, validate_event, validate_event_bytes
from streams.collector.batch import (
    ACCOUNT_MISMATCH,
    EMPTY_BATCH,
    JSON,
    NDJSON,
    NOT_A_BATCH,
    PrivacySignals,
    check_batch,
)
from streams.collector.batch import decode_batch as decode_body
from streams.collector.encoding import (
    DecodedTooLarge,
    UndecodableBody,
)
from streams.collector.encoding import (
    decode_body as decode_coding,
)
from streams.replay import ReplayReport, parse_combined_line, replay_records
from tests.fixtures.strategies import events

BATCH_CODES = CODES | {EMPTY_BATCH, NOT_A_BATCH, ACCOUNT_MISMATCH}
FIELDS = sorted(
    {"type", *ENVELOPE_FIELDS, *(f for t in EVENT_TYPES for f in type_specific_fields(t))}
)

# -- structured JSON text ------------------------------------------------------------------------

TIMESTAMPS = st.one_of(
    st.sampled_from(
        [
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "9999-12-31T23:59:59.9999999Z",
            "2024-02-29T24:00:00Z",
            "2024-05-01T12:00:00+24:00",
            "2024-05-01T12:00:00-00:00",
            "2024-05-01 12:00:00+0200",
            "2024-05-01T12:00:00",
            "2024-05-01t12:00:00z",
            "+002024-05-01T12:00:00Z",
            "2024-05-01T12:00:00.Z",
            "",
        ]
    ),
    st.datetimes(timezones=st.timezones() | st.none()).map(lambda d: d.isoformat()),
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?"
                  r"(Z|[+-][0-9]{2}:?[0-9]{2})?", fullmatch=True),
)  # fmt: skip

# Strings as they appear inside JSON: raw characters of every kind, and escapes, including
# lone and swapped surrogates, which are invalid JSON.
_ESCAPES = st.sampled_from(
    ["\\u0000", "\\n", "\\t", "\\u001b", "\\u007f", "\\u0085", "\\ud800", "\\udc00\\ud800",
     "\\ud83d\\ude00", '\\"', "\\\\", "\\/", "\\x", "\\u12"]
)  # fmt: skip
_RAW_TEXT = st.text(st.characters(exclude_characters='"\\', exclude_categories=["Cs"]), max_size=12)
JSON_STRINGS = st.lists(_RAW_TEXT | _ESCAPES, max_size=4).map(
    lambda parts: '"' + "".join(parts) + '"'
)
JSON_NUMBERS = st.one_of(
    st.integers().map(str),
    st.sampled_from(
        ["1e400", "-1e400", "1" + "0" * 400, "-0", "0.0", "1.0", "1e2", "9" * 30, "0x10", "01",
         "NaN", "Infinity", "1.", ".5", "2e-400"]
    ),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)  # fmt: skip


def _json_text(depth: int = 3) -> st.SearchStrategy[str]:
    scalars = st.one_of(
        JSON_STRINGS, JSON_NUMBERS, st.sampled_from(["true", "false", "null"]),
        TIMESTAMPS.map(lambda t: msgspec.json.encode(t).decode()),
    )  # fmt: skip
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
            st.lists(st.tuples(st.sampled_from(FIELDS) | JSON_STRINGS, inner), max_size=5).map(
                lambda pairs: "{" + ",".join(f'"{k}":{v}' if not k.startswith('"') else f"{k}:{v}"
                                             for k, v in pairs) + "}"
            ),
        ),
        max_leaves=12,
    )  # fmt: skip


def _nested(levels: int, closed: bool) -> str:
    return "[" * levels + ("]" * levels if closed else "")


DEEP = st.builds(
    lambda levels, closed, where: where.replace("@", _nested(levels, closed)),
    st.integers(min_value=30, max_value=6000),
    st.booleans(),
    st.sampled_from(["@", '{"type":"login","x":@}', '{"x":@,"type":"login"}', '{"geo":@}']),
)


@st.composite
def event_texts(draw: st.DrawFn) -> str:
    """A valid event with one field set to odd JSON text, or spliced with odd bytes."""
    event = draw(events())
    obj: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(event))
    field = draw(st.sampled_from(FIELDS))
    value = draw(_json_text() | TIMESTAMPS.map(lambda t: msgspec.json.encode(t).decode()) | DEEP)
    obj.pop(field, None)
    body = msgspec.json.encode(obj).decode()
    return body[:-1] + ("," if len(obj) else "") + f'"{field}":{value}' + "}"


VALUES = st.one_of(
    st.binary(max_size=200),
    _json_text().map(str.encode),
    DEEP.map(str.encode),
    event_texts().map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.just(None),
)

ARRIVALS = st.one_of(st.just(-1), st.integers(min_value=0, max_value=253_402_300_799_000))
BOUNDS = st.builds(
    TimeBounds,
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3_000_000)),
)


# -- the worker's decoder and the validator --------------------------------------------------------


@settings(max_examples=200)
@given(
    values=st.lists(VALUES, max_size=6),
    arrivals=st.lists(ARRIVALS, min_size=6, max_size=6),
    flags=st.lists(st.booleans(), min_size=6, max_size=6),
    bounds=BOUNDS,
)
def test_the_decoder_accepts_or_rejects_everything_with_a_reason(
    values: list[bytes | None], arrivals: list[int], flags: list[bool], bounds: TimeBounds
) -> None:
    batch = decode_values(values, arrivals[: len(values)], flags[: len(values)], bounds)
    rejected = {r.index for r in batch.rejections}
    assert len(batch.events) == len(values)
    assert rejected == {i for i, e in enumerate(batch.events) if e is None}
    for rejection in batch.rejections:
        assert rejection.code in CODES
        assert rejection.reason and rejection.field.startswith("$")


@settings(max_examples=200)
@given(value=VALUES.filter(lambda v: v is not None), arrival=ARRIVALS, backfill=st.booleans(),
       bounds=BOUNDS)  # fmt: skip
def test_the_validator_answers_everything(
    value: bytes, arrival: int, backfill: bool, bounds: TimeBounds
) -> None:
    window = {"received_at_ms": arrival, "backfill": backfill, "bounds": bounds}
    problems = validate_event_bytes(value, **window)
    assert all(p.code in CODES and p.reason and p.path.startswith("$") for p in problems)
    assert first_problem(value, **window) == (problems[0] if problems else None)


_PY_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(obj=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), _PY_VALUES, max_size=8))
def test_validate_event_answers_any_dict(obj: dict[str, Any]) -> None:
    # Floats that JSON cannot hold, bytes, surrogates in str: "cannot be written as JSON".
    problems = validate_event(obj)
    assert all(p.code in CODES for p in problems)


def test_validate_event_of_a_dict_nested_beyond_python_is_too_deep() -> None:
    deep: Any = {}
    for _ in range(100_000):
        deep = {"x": deep}
    assert [p.code for p in validate_event({"type": "login", "x": deep})] == ["too_deep"]


# -- the collector's body parser -------------------------------------------------------------------


def _as_array(texts: list[str]) -> bytes:
    return ("[" + ",".join(texts) + "]").encode("utf-8", "surrogatepass")


BODIES = st.one_of(
    st.binary(max_size=300),
    st.lists(event_texts() | _json_text() | DEEP, max_size=4).map(_as_array),
    st.lists(event_texts() | DEEP, max_size=4).map(
        lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
    ),
    DEEP.map(str.encode),
)


@settings(max_examples=200)
@given(body=BODIES, media_type=st.sampled_from([JSON, NDJSON]), arrival=ARRIVALS,
       dnt=st.booleans())  # fmt: skip
def test_the_collector_body_parser_answers_every_body(
    body: bytes, media_type: str, arrival: int, dnt: bool
) -> None:
    items, problem = decode_body(body, media_type)
    if problem is not None:
        assert items == [] and problem.code in BATCH_CODES and problem.reason
        return
    events_, problems = check_batch(
        items, "acct-1", PrivacySignals(dnt=dnt), received_at_ms=arrival
    )
    assert bool(events_) != bool(problems) or not items
    assert all(p.code in BATCH_CODES and p.reason for p in problems)
    assert all(p.index is not None and 0 <= p.index < len(items) for p in problems)


@given(body=st.binary(max_size=200), coding=st.sampled_from(["identity", "gzip", "deflate"]),
       compress=st.booleans(), cap=st.integers(min_value=1, max_value=400))  # fmt: skip
def test_content_decoding_answers_every_body(
    body: bytes, coding: str, compress: bool, cap: int
) -> None:
    sent = body
    if compress and coding == "gzip":
        sent = gzip.compress(body)
    elif compress and coding == "deflate":
        sent = zlib.compress(body)
    try:
        decoded = decode_coding(sent, coding, cap)
    except (UndecodableBody, DecodedTooLarge):
        return
    assert len(decoded) <= cap
    if compress or coding == "identity":
        assert decoded == body


# -- the access-log parser -------------------------------------------------------------------------

_LOG_PIECES = st.sampled_from(
    ['"', "\\", "\\\"", " ", "-", "[", "]", "\x00", "\x1b", "\t", "\r", "é", "\ud800",
     "17/May/2015:10:05:03 +0000", "31/Dec/9999:23:59:59 -2359", "01/Jan/0001:00:00:00 +2359",
     "GET / HTTP/1.1", "200", "1234", "83.149.9.216", "::1"]
)  # fmt: skip
COMBINED_LINES = st.one_of(
    st.text(max_size=200),
    st.lists(_LOG_PIECES, max_size=30).map("".join),
    st.builds(
        lambda host, stamp, target, agent: (
            f'{host} - - [{stamp}] "GET {target} HTTP/1.1" 200 5 "-" "{agent}'
        ),
        st.sampled_from(["83.149.9.216", "::1", "x", ""]),
        st.sampled_from(
            [
                "17/May/2015:10:05:03 +0000",
                "31/Dec/9999:23:59:59 -2359",
                "01/Jan/0001:00:00:00 +2359",
                "30/Feb/2015:10:05:03 +0000",
            ]
        ),
        st.text(max_size=20),
        st.text(max_size=30),
    ),
)


@settings(max_examples=200)
@given(COMBINED_LINES)
def test_the_access_log_parser_parses_or_skips_every_line(line: str) -> None:
    event = parse_combined_line(line)
    if event is not None:  # anything it parses, the worker accepts
        assert validate_event_bytes(msgspec.json.encode(event)) == []


@given(st.lists(COMBINED_LINES | st.text(max_size=50), max_size=8),
       st.sampled_from(["combined", "jsonl"]))  # fmt: skip
def test_replay_counts_every_line(lines: list[str], fmt: Any) -> None:
    report = ReplayReport(fmt)
    records = list(replay_records(lines, fmt, report))
    assert report.lines == len(lines)
    assert report.sent == len(records)
    assert report.sent + report.blank + report.unparsed == report.lines
