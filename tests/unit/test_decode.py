"""schemas.decode: aligned batches, and exactly the validator's accept/reject decisions."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from schemas.bounds import TimeBounds
from schemas.decode import DecodedBatch, Rejection, decode_batch
from schemas.events import MAX_EVENT_BYTES, Event, encode
from schemas.validate import first_problem, parse_event, schema_problems, validate_event_bytes
from streams.errors import InvalidEventError
from tests.fixtures.decode_inputs import ARRIVALS, BOUNDS, MUTATIONS, mutate
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


@given(
    batch=st.lists(st.tuples(events(), MUTATIONS), min_size=1, max_size=8),
    arrivals=st.none() | st.lists(ARRIVALS, min_size=8, max_size=8),
    flags=st.lists(st.booleans(), min_size=8, max_size=8),
    bounds=BOUNDS,
)
def test_decode_batch_rejects_exactly_what_the_validator_rejects(
    batch: list[tuple[Event, tuple[Any, ...]]],
    arrivals: list[int] | None,
    flags: list[bool],
    bounds: TimeBounds,
) -> None:
    values = [mutate(ev, mutation) for ev, mutation in batch]
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
    batch=st.lists(st.tuples(events(), MUTATIONS), min_size=1, max_size=4),
    arrival=ARRIVALS,
    backfill=st.booleans(),
    bounds=BOUNDS,
)
def test_first_problem_is_the_first_of_every_problem(
    batch: list[tuple[Event, tuple[Any, ...]]], arrival: int, backfill: bool, bounds: TimeBounds
) -> None:
    for ev, mutation in batch:
        value = mutate(ev, mutation)
        window = {"received_at_ms": arrival, "backfill": backfill, "bounds": bounds}
        problems = validate_event_bytes(value, **window)
        assert first_problem(value, **window) == (problems[0] if problems else None)


@given(batch=st.lists(st.tuples(events(), MUTATIONS), min_size=1, max_size=4))
def test_the_fast_schema_evaluator_finds_what_jsonschema_finds(
    batch: list[tuple[Event, tuple[Any, ...]]],
) -> None:
    for ev, mutation in batch:
        value = mutate(ev, mutation)
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
