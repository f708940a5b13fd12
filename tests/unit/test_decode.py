"""schemas.decode: aligned batches, and exactly the validator's accept/reject decisions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from schemas.bounds import TimeBounds
from schemas.decode import DecodedBatch, Rejection, decode_batch
from schemas.events import EVENT_TYPES, MAX_EVENT_BYTES, Event, encode, type_specific_fields
from schemas.validate import first_problem, parse_event, schema_problems, validate_event_bytes
from streams.errors import InvalidEventError
from tests.fixtures.strategies import events

LOGIN = (
    b'{"type":"login","schema_version":1,"event_id":"e1",'
    b'"occurred_at":"2024-05-01T00:00:00Z","account_id":"a1","ip":"192.0.2.1"}'
)


def test_batch_is_aligned_with_its_input() -> None:
    bad_ip = LOGIN.replace(b"192.0.2.1", b"999.1.2.3")
    batch = decode_batch([LOGIN, None, b"", b"{oops", bad_ip, LOGIN])
    assert isinstance(batch, DecodedBatch)
    assert [e is not None for e in batch.events] == [True, False, False, False, False, True]
    assert [(r.index, r.code, r.field) for r in batch.rejections] == [
        (1, "empty_message", "$"),
        (2, "empty_message", "$"),
        (3, "invalid_json", "$"),
        (4, "invalid_ip", "$.ip"),
    ]
    assert batch.events[0] == msgspec.json.decode(LOGIN, type=Event)


def test_empty_batch() -> None:
    assert decode_batch([]) == DecodedBatch([], [])


def test_rejection_carries_the_validators_first_problem() -> None:
    value = LOGIN.replace(b'"event_id":"e1",', b"").replace(b"192.0.2.1", b"1.2.3")
    (rejection,) = decode_batch([value]).rejections
    first = validate_event_bytes(value)[0]
    assert rejection == Rejection(0, first.code, first.path, first.reason)


def test_a_bad_ip_repeated_in_a_batch_rejects_every_event_carrying_it() -> None:
    bad = LOGIN.replace(b"192.0.2.1", b"fe80::1%eth0")
    batch = decode_batch([bad, LOGIN, bad])
    assert [r.index for r in batch.rejections] == [0, 2]
    assert {r.code for r in batch.rejections} == {"invalid_ip"}


def test_oversize_value_is_rejected_without_decoding() -> None:
    (rejection,) = decode_batch([LOGIN + b" " * MAX_EVENT_BYTES]).rejections
    assert rejection.code == "too_large"


def test_values_that_would_form_events_only_when_joined_are_rejected() -> None:
    # Joined with commas, the first two make one valid page view and the third splits into
    # two: a decoder of b"[" + b",".join(values) + b"]" would accept three events here.
    head = (
        b'{"type":"page_view","schema_version":1,"event_id":"e1",'
        b'"occurred_at":"2024-05-01T00:00:00Z","account_id":"a1"'
    )
    values = [head, b'"path":"/"}', LOGIN + b"," + LOGIN]
    batch = decode_batch(values)
    assert batch.events == [None, None, None]
    assert [r.code for r in batch.rejections] == ["invalid_json"] * 3


# -- decoder and validator agree ---------------------------------------------------------------

BAD_IPS = [
    "999.1.2.3",
    "1.2.3",
    "1.2.3.4.5",
    "01.2.3.4",
    "fe80::1%eth0",
    "::ffff:999.0.0.1",
    "",
    "x",
]
TIMESTAMPS = [
    "2024-05-01T12:00:00",  # naive
    "2024-05-01 12:00:00",  # naive, space
    "2024-05-01 12:00:00Z",  # space separator (msgspec accepts it)
    "2024-05-01T12:00:00+0200",  # offset without colon (msgspec accepts it)
    "2024-05-01t12:00:00z",
    "2024-05-01T12:00:00Z\n",
    "2024-05-01T12:00Z",
    "2024-05-01T24:00:00Z",
    "2024-02-30T00:00:00Z",
    "9999-12-31T23:59:59.9999999Z",  # rounds past the last representable instant
    "2024-05-01",
    "",
    "0001-01-01T00:00:00+23:59",  # year 0 in UTC
    "9999-12-31T23:59:59-23:59",  # year 10000 in UTC
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:00:00Z",
    "2024-05-01T12:00:00+24:00",
    "2024-05-01T12:00:00.123456789+01:30",
    "1990-01-01T00:00:00-00:00",
]
# Strings where the contract forbids controls, or where a pattern's "$" must be the end.
CONTROL_TEXTS = ["\x00", "a\n", "\t", "x\x7f", "\u0085", "ok\u00a0", "é\x1b[0m"]
_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)


def _set(field: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return values.map(lambda v: ("set", field, v))


_MUTATIONS = st.one_of(
    st.just(("none",)),
    st.sampled_from(
        sorted({"type", "schema_version", "event_id", "occurred_at", "account_id"})
    ).map(lambda f: ("drop", f)),
    st.just(("drop_specific",)),
    _set("ip", st.sampled_from(BAD_IPS) | st.text(max_size=50)),
    _set("occurred_at", st.sampled_from(TIMESTAMPS)),
    _set("schema_version", st.sampled_from([0, 2, -1, 1.0, "1", True, None]) | st.integers()),
    st.tuples(st.just("set"), st.text(min_size=1), _json_values),  # unknown (or any) field
    _set(
        "user_agent", st.sampled_from(["é" * 1025, "€" * 700, "a" * 2049, "😀" * 513, "é" * 1024])
    ),
    _set("type", st.sampled_from(sorted(EVENT_TYPES)) | st.text(max_size=12)),
    st.tuples(
        st.just("set"),
        st.sampled_from(["status", "bytes", "response_bytes", "session_duration_s", "lat"]),
        st.sampled_from([1.0, 200.0, 1e2, -0.0, 10**30, True]),
    ),
    _set("geo", _json_values),
    st.tuples(st.just("raw"), st.binary(max_size=64)),
    st.tuples(
        st.just("set"),
        st.sampled_from(
            ["event_id", "account_id", "user_id", "path", "referrer", "user_agent", "provider"]
        ),
        st.sampled_from(CONTROL_TEXTS) | st.text(max_size=4),
    ),
    _set("geo", st.fixed_dictionaries({"city": st.sampled_from(CONTROL_TEXTS)})),
    st.integers(min_value=0, max_value=1200).map(lambda n: ("nest", n)),
    st.integers(min_value=0, max_value=400).map(lambda n: ("truncate", n)),
    st.just(("pad",)),
    st.sampled_from(sorted(EVENT_TYPES)).map(lambda t: ("duplicate_type", t)),
)


def _mutate(ev: Event, mutation: tuple[Any, ...]) -> bytes:
    data = encode(ev)
    obj: dict[str, Any] = msgspec.json.decode(data)
    kind = mutation[0]
    if kind == "none":
        return data
    if kind == "drop":
        obj.pop(mutation[1], None)
    elif kind == "drop_specific":
        # Drops a required field of the type when one is present (login has none).
        for key in [k for k in type_specific_fields(obj["type"]) if k in obj][:1]:
            obj.pop(key)
    elif kind == "set":
        obj[mutation[1]] = mutation[2]
    elif kind == "raw":
        return bytes(mutation[1])
    elif kind == "truncate":
        return data[: mutation[1]]
    elif kind == "pad":
        return data + b" " * (MAX_EVENT_BYTES + 1 - len(data))
    elif kind == "duplicate_type":
        return data[:-1] + b',"type":' + msgspec.json.encode(mutation[1]) + b"}"
    elif kind == "nest":
        depth = mutation[1]
        return b'{"deep":' + b"[" * depth + b"]" * depth + b"," + data[1:]
    return msgspec.json.encode(obj)


# Arrivals from 1990 to 2100 like the strategies' instants, sometimes none (-1).
_ARRIVALS = st.one_of(
    st.just(-1), st.integers(min_value=631_152_000_000, max_value=4_102_444_800_000)
)
_BOUNDS = st.sampled_from([TimeBounds(), TimeBounds(timedelta(hours=1), timedelta(days=30))])


@given(
    batch=st.lists(st.tuples(events(), _MUTATIONS), min_size=1, max_size=8),
    arrivals=st.none() | st.lists(_ARRIVALS, min_size=8, max_size=8),
    flags=st.lists(st.booleans(), min_size=8, max_size=8),
    bounds=_BOUNDS,
)
def test_decode_batch_rejects_exactly_what_the_validator_rejects(
    batch: list[tuple[Event, tuple[Any, ...]]],
    arrivals: list[int] | None,
    flags: list[bool],
    bounds: TimeBounds,
) -> None:
    values = [_mutate(ev, mutation) for ev, mutation in batch]
    received = None if arrivals is None else arrivals[: len(values)]
    backfill = None if arrivals is None else flags[: len(values)]
    decoded = decode_batch(values, received, backfill, bounds)
    assert len(decoded.events) == len(values)
    rejected = {r.index: r for r in decoded.rejections}
    for index, value in enumerate(values):
        arrival = {
            "received_at_ms": None if received is None else received[index],
            "backfill": False if backfill is None else backfill[index],
            "bounds": bounds,
        }
        problems = validate_event_bytes(value, **arrival)
        event = decoded.events[index]
        assert (event is None) == bool(problems), (value, problems)
        assert (index in rejected) == bool(problems)
        if problems:
            first = problems[0]
            assert rejected[index] == Rejection(index, first.code, first.path, first.reason)
            try:
                parse_event(value, **arrival)
                raise AssertionError("parse_event accepted a rejected value")
            except InvalidEventError as exc:
                assert exc.problems == [(p.path, p.reason) for p in problems]
        else:
            assert event == msgspec.json.decode(value, type=Event)
            assert parse_event(value, **arrival) == event


@given(
    batch=st.lists(st.tuples(events(), _MUTATIONS), min_size=1, max_size=4),
    arrival=_ARRIVALS,
    backfill=st.booleans(),
    bounds=_BOUNDS,
)
def test_first_problem_is_the_first_of_every_problem(
    batch: list[tuple[Event, tuple[Any, ...]]], arrival: int, backfill: bool, bounds: TimeBounds
) -> None:
    for ev, mutation in batch:
        value = _mutate(ev, mutation)
        window = {"received_at_ms": arrival, "backfill": backfill, "bounds": bounds}
        problems = validate_event_bytes(value, **window)
        assert first_problem(value, **window) == (problems[0] if problems else None)


@given(batch=st.lists(st.tuples(events(), _MUTATIONS), min_size=1, max_size=4))
def test_the_fast_schema_evaluator_finds_what_jsonschema_finds(
    batch: list[tuple[Event, tuple[Any, ...]]],
) -> None:
    for ev, mutation in batch:
        value = _mutate(ev, mutation)
        try:
            obj = msgspec.json.decode(value)
        except (msgspec.DecodeError, RecursionError):
            continue
        assert schema_problems(obj) == schema_problems(obj, use_jsonschema=True), value


@given(st.lists(events(), max_size=20))
def test_valid_events_are_all_accepted_in_order(evs: list[Event]) -> None:
    decoded = decode_batch([encode(e) for e in evs])
    assert decoded.rejections == []
    assert decoded.events == evs
