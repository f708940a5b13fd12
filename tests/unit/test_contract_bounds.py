"""Contract bounds on every path (issue 14, items 1 and 4): nesting depth, instants Python can
hold, the arrival window with its wider backfill window, and control characters.

Each regression here failed on the code before the bounds: deep values raised
``RecursionError``, the far-offset instants were accepted (and crashed the split later),
identifiers could end in a newline, and any ``occurred_at`` was accepted.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.bounds import (
    BatchWindow,
    InstantVerdict,
    TimeBounds,
    batch_window,
    is_backfill,
    judge_instant,
    may_hold_control_characters,
    nests_deeper_than,
)
from schemas.decode import decode_batch
from schemas.events import BACKFILL_HEADER, MAX_EVENT_BYTES, MAX_NESTING_DEPTH
from schemas.validate import parse_event, validate_event, validate_event_bytes
from streams.errors import InvalidEventError

ARRIVAL = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ARRIVAL_MS = int(ARRIVAL.timestamp() * 1000)
BOUNDS = TimeBounds(
    max_ahead=timedelta(days=1),
    max_behind=timedelta(days=400),
    backfill_max_behind=timedelta(days=18_262),
)


def login(**changes: Any) -> dict[str, Any]:
    event = {
        "type": "login",
        "schema_version": 1,
        "event_id": "evt-1",
        "occurred_at": "2026-12-01T11:59:00Z",
        "account_id": "acct-1",
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not None}


def page_view(**changes: Any) -> dict[str, Any]:
    return login(**{"type": "page_view", "path": "/console", **changes})


def encoded(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


def first_problem(data: bytes, **arrival: Any) -> tuple[str, str]:
    """(code, path) of the decoder's rejection, after checking the validator agrees."""
    received = arrival.get("received_at_ms")
    backfill = arrival.get("backfill", False)
    batch = decode_batch(
        [data],
        None if received is None else [received],
        None if received is None else [backfill],
        BOUNDS,
    )
    (rejection,) = batch.rejections
    problems = validate_event_bytes(data, received_at_ms=received, backfill=backfill, bounds=BOUNDS)
    assert (problems[0].code, problems[0].path) == (rejection.code, rejection.field)
    with pytest.raises(InvalidEventError):
        parse_event(data, received_at_ms=received, backfill=backfill, bounds=BOUNDS)
    return rejection.code, rejection.field


# -- nesting ----------------------------------------------------------------------------------


def _nested(depth: int, opener: str = "[", closer: str = "]", *, closed: bool = True) -> str:
    return opener * depth + (closer * depth if closed else "")


DEEP_VALUES = [
    # The case: ~1,000 levels under 64 KB in an unknown field (before the tag).
    '{"x":' + _nested(1000) + ',"type":"login"}',
    '{"type":"login","x":' + _nested(1000) + "}",
    '{"type":"login","geo":' + '{"a":' * 1000 + "1" + "}" * 1000 + "}",
    _nested(5000),
    _nested(5000, closed=False),  # never closed: a parser still recurses into every level
    '{"type":"login","x":' + _nested(MAX_NESTING_DEPTH) + "}",  # 33 levels with the event
]


@pytest.mark.parametrize("text", DEEP_VALUES, ids=range(len(DEEP_VALUES)))
def test_deep_nesting_is_too_deep_on_every_path(text: str) -> None:
    data = text.encode()
    assert len(data) <= MAX_EVENT_BYTES
    assert first_problem(data) == ("too_deep", "$")
    assert first_problem(data, received_at_ms=ARRIVAL_MS) == ("too_deep", "$")


def test_nesting_at_the_limit_is_judged_on_its_fields() -> None:
    data = ('{"type":"login","x":' + _nested(MAX_NESTING_DEPTH - 1) + "}").encode()
    assert not nests_deeper_than(data, MAX_NESTING_DEPTH)
    code, _ = first_problem(data)
    assert code != "too_deep"


def test_validate_event_of_a_deep_dict_is_too_deep() -> None:
    value: Any = 1
    for _ in range(5000):
        value = [value]
    (problem,) = validate_event(login(x=value))
    assert problem.code == "too_deep"


def test_brackets_inside_strings_do_not_count() -> None:
    data = encoded(page_view(path="/" + "[{" * 400))
    assert not nests_deeper_than(data, MAX_NESTING_DEPTH)
    assert decode_batch([data]).rejections == []


def _reference_depth(data: bytes) -> int:
    """The deepest a parser recursing per bracket goes, with strings skipped (slow, obvious)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        char = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
            if depth < 0:
                return deepest  # a parser stops at the first unmatched closer
    return deepest


_json_texts = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=60,
).map(lambda value: msgspec.json.encode(value))


@given(data=_json_texts, limit=st.integers(min_value=0, max_value=12))
def test_nesting_is_exact_for_valid_json(data: bytes, limit: int) -> None:
    assert nests_deeper_than(data, limit) == (_reference_depth(data) > limit)


@given(data=st.text(alphabet='[]{}"\\a', max_size=80).map(str.encode), limit=st.integers(0, 8))
def test_nesting_never_underestimates_what_a_parser_reaches(data: bytes, limit: int) -> None:
    if _reference_depth(data) > limit:
        assert nests_deeper_than(data, limit)


# -- instants Python can hold -------------------------------------------------------------------


@pytest.mark.parametrize(
    "occurred_at",
    [
        "0001-01-01T00:00:00+23:59",  # year 0 in UTC: OverflowError in the split (issue 14)
        "9999-12-31T23:59:59-23:59",  # year 10000 in UTC: a partition stuck for good
        "0001-01-01T00:00:00.5+00:01",
    ],
)
def test_an_instant_outside_utc_years_1_to_9999_is_rejected(occurred_at: str) -> None:
    data = encoded(login(occurred_at=occurred_at))
    assert first_problem(data) == ("out_of_range", "$.occurred_at")
    assert first_problem(data, received_at_ms=ARRIVAL_MS) == ("out_of_range", "$.occurred_at")


@pytest.mark.parametrize(
    "occurred_at", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-02T00:00:00+23:59"]
)
def test_extreme_instants_that_exist_in_utc_pass_without_an_arrival(occurred_at: str) -> None:
    assert validate_event_bytes(encoded(login(occurred_at=occurred_at))) == []


# -- the window around the arrival ----------------------------------------------------------------


def _at(delta: timedelta) -> str:
    return (ARRIVAL + delta).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("delta", "backfill", "expected"),
    [
        (timedelta(days=1), False, None),  # exactly at the bound: accepted
        (timedelta(days=1, seconds=1), False, "too_far_ahead"),
        (timedelta(days=1, seconds=1), True, "too_far_ahead"),  # a backfill is never ahead
        (timedelta(days=365 * 80), False, "too_far_ahead"),  # 9999-12-31T23:00Z in issue 4
        (-timedelta(days=400), False, None),
        (-timedelta(days=400, seconds=1), False, "too_far_behind"),
        (-timedelta(days=400, seconds=1), True, None),
        (-timedelta(days=11 * 365), True, None),  # the 2015 access log, replayed
        (-timedelta(days=18_262, seconds=1), True, "too_far_behind"),
    ],
)
def test_occurred_at_lies_within_its_window_around_the_arrival(
    delta: timedelta, backfill: bool, expected: str | None
) -> None:
    data = encoded(login(occurred_at=_at(delta)))
    if expected is None:
        batch = decode_batch([data], [ARRIVAL_MS], [backfill], BOUNDS)
        assert batch.rejections == []
        assert (
            validate_event_bytes(data, received_at_ms=ARRIVAL_MS, backfill=backfill, bounds=BOUNDS)
            == []
        )
    else:
        arrival = {"received_at_ms": ARRIVAL_MS, "backfill": backfill}
        assert first_problem(data, **arrival) == (expected, "$.occurred_at")


def test_far_future_with_offset_is_too_far_ahead() -> None:
    data = encoded(login(occurred_at="9999-12-31T23:00:00Z"))
    assert first_problem(data, received_at_ms=ARRIVAL_MS) == ("too_far_ahead", "$.occurred_at")


def test_the_reason_names_the_limit_and_never_the_value() -> None:
    data = encoded(login(occurred_at="2031-05-17T08:09:10Z"))
    (problem,) = validate_event_bytes(data, received_at_ms=ARRIVAL_MS, bounds=BOUNDS)
    assert "1 day" in problem.reason
    assert "2031" not in problem.reason
    behind = encoded(login(occurred_at="2021-05-17T08:09:10Z"))
    (problem,) = validate_event_bytes(behind, received_at_ms=ARRIVAL_MS, bounds=BOUNDS)
    assert "400 days" in problem.reason and "2021" not in problem.reason


@pytest.mark.parametrize("received", [-1, None])
def test_no_arrival_means_no_window(received: int | None) -> None:
    data = encoded(login(occurred_at="2090-01-01T00:00:00Z"))
    stamps = None if received is None else [received]
    assert decode_batch([data], stamps, None, BOUNDS).rejections == []


def test_each_record_is_judged_against_its_own_arrival() -> None:
    # One batch, arrivals a year apart (a consumer catching up): the shared window is empty,
    # so every record goes through its own check.
    late = ARRIVAL_MS + 365 * 86_400_000
    values = [encoded(login(event_id=f"e{i}")) for i in range(3)]
    batch = decode_batch(values, [ARRIVAL_MS, late + 500 * 86_400_000, late], None, BOUNDS)
    assert [(r.index, r.code) for r in batch.rejections] == [(1, "too_far_behind")]


def test_backfill_flags_are_per_record() -> None:
    old = encoded(login(occurred_at="2015-05-17T10:05:03Z"))
    batch = decode_batch([old, old], [ARRIVAL_MS, ARRIVAL_MS], [True, False], BOUNDS)
    assert [(r.index, r.code) for r in batch.rejections] == [(1, "too_far_behind")]


def test_decode_batch_refuses_misaligned_arrivals() -> None:
    with pytest.raises(ValueError, match="one timestamp per value"):
        decode_batch([b"{}"], [1, 2])


_instants = st.datetimes(
    min_value=datetime(1, 1, 2),  # noqa: DTZ001
    max_value=datetime(9999, 12, 30),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@given(
    arrivals=st.lists(
        st.integers(min_value=-1, max_value=4_102_444_800_000), min_size=1, max_size=5
    ),
    flags=st.lists(st.booleans(), min_size=5, max_size=5),
    occurred=_instants,
)
def test_the_batch_window_only_accepts_what_every_record_accepts(
    arrivals: list[int], flags: list[bool], occurred: datetime
) -> None:
    backfill = flags[: len(arrivals)]
    window = batch_window(arrivals, backfill, BOUNDS)
    if window.surely_accepts(occurred):
        for arrival, flag in zip(arrivals, backfill, strict=True):
            assert judge_instant(occurred, arrival, flag, BOUNDS) is InstantVerdict.OK


def test_an_empty_batch_window_accepts_nothing() -> None:
    assert not BatchWindow(None, None).surely_accepts(ARRIVAL)


def test_backfill_header() -> None:
    assert is_backfill([(BACKFILL_HEADER, b"1")])
    assert is_backfill([("other", b"x"), (BACKFILL_HEADER, b"1")])
    assert not is_backfill([(BACKFILL_HEADER, b"0")])
    assert not is_backfill([])
    assert not is_backfill(None)


def test_negative_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_ahead"):
        TimeBounds(max_ahead=timedelta(seconds=-1))


# -- control characters -------------------------------------------------------------------------

IDENTIFIER_ENDINGS = ["\n", "\x00", "\t", "\x7f", "\u0085", " "]


@pytest.mark.parametrize("ending", IDENTIFIER_ENDINGS, ids=repr)
@pytest.mark.parametrize("field", ["event_id", "account_id", "user_id", "session_id"])
def test_identifiers_hold_printable_ascii_only(field: str, ending: str) -> None:
    # "acct-1\n" passed before: Python's "$" also matches before a final newline.
    data = encoded(login(**{field: "id-1" + ending}))
    assert first_problem(data) == ("invalid_format", f"$.{field}")


@pytest.mark.parametrize("field", ["method"])
def test_patterns_end_at_the_end_of_the_text(field: str) -> None:
    data = encoded(login(type="request", path="/", **{field: "GET\n"}))
    assert first_problem(data) == ("invalid_format", "$.method")


TEXT_FIELDS = [
    ("page_view", "path", "/a"),
    ("page_view", "referrer", "https://example.com/"),
    ("payment", "provider", "stripe"),
    ("payment", "provider_reference", "pi_1"),
]
_PAYMENT = {"amount": "1.00", "currency": "EUR", "provider": "stripe", "provider_reference": "x"}


def _of_type(type_name: str, **fields: Any) -> dict[str, Any]:
    base = login(type=type_name)
    if type_name == "page_view":
        base["path"] = "/"
    if type_name == "payment":
        base.update(_PAYMENT)
    base.update(fields)
    return base


@pytest.mark.parametrize("bad", ["\x00", "\n", "\r\n", "\t", "\x1b[31m", "\x7f", "\u0085", "\x9f"])
@pytest.mark.parametrize(("type_name", "field", "good"), TEXT_FIELDS)
def test_text_fields_hold_no_control_characters(
    type_name: str, field: str, good: str, bad: str
) -> None:
    assert validate_event_bytes(encoded(_of_type(type_name, **{field: good}))) == []
    data = encoded(_of_type(type_name, **{field: good + bad}))
    assert first_problem(data) == ("control_character", f"$.{field}")


@pytest.mark.parametrize("field", ["region", "city"])
def test_place_names_hold_no_control_characters(field: str) -> None:
    data = encoded(login(geo={field: "Berlin\x00"}))
    assert first_problem(data) == ("control_character", f"$.geo.{field}")


@pytest.mark.parametrize("bad", ["\x00", "\n", "\r", "\x1b", "\x7f"])
def test_a_user_agent_holds_no_control_but_tab(bad: str) -> None:
    data = encoded(login(user_agent=f"Mozilla/5.0{bad}x"))
    assert first_problem(data) == ("control_character", "$.user_agent")


@pytest.mark.parametrize("allowed", ["\t", "\u0085", "\xa0", "é", "😀"])
def test_a_user_agent_may_hold_tabs_and_obs_text(allowed: str) -> None:
    data = encoded(login(user_agent=f"Mozilla/5.0{allowed}x"))
    assert decode_batch([data]).rejections == []
    assert validate_event_bytes(data) == []


def test_text_escapes_without_controls_are_accepted() -> None:
    data = encoded(page_view(path='/a"b\\c', referrer="https:\\/\\/x"))
    assert may_hold_control_characters(data)  # the escapes open the check...
    assert decode_batch([data]).rejections == []  # ...which finds nothing wrong


@given(st.text(max_size=40))
def test_bytes_without_the_markers_hold_no_control_characters(text: str) -> None:
    data = encoded(page_view(path="/" + text))
    if not may_hold_control_characters(data):
        assert validate_event_bytes(data) == [] or all(
            p.code != "control_character" for p in validate_event_bytes(data)
        )
