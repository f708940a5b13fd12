"""The worker's columnar decoder accepts and rejects exactly what the reference decoder does.

``schemas.columnar_decode`` checks identifiers, user agents, IP addresses and instants a
column at a time and explains only the rows it rejects; ``schemas.decode.decode_batch`` is
the reference (itself held to the validator in test_decode). Same inputs, same verdicts,
same rejections (code, field, reason), same field values.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from schemas.bounds import TimeBounds
from schemas.columnar_decode import ENVELOPE_COLUMNS, TYPE_CODES, decode_columns
from schemas.decode import decode_batch
from schemas.events import EVENT_TYPES, Event, encode
from tests.fixtures.decode_inputs import ARRIVALS, BAD_IPS, BOUNDS, MUTATIONS, mutate
from tests.fixtures.strategies import events


def _same_verdicts(
    values: list[bytes | None],
    received: list[int] | None,
    backfill: list[bool] | None,
    bounds: TimeBounds,
) -> None:
    reference = decode_batch(values, received, backfill, bounds)
    columnar = decode_columns(values, received, backfill, bounds)
    accepted = [i for i, event in enumerate(reference.events) if event is not None]
    assert columnar.positions == accepted
    assert columnar.rejections == reference.rejections
    for event, index in zip(columnar.events, columnar.positions, strict=True):
        strict = reference.events[index]
        assert isinstance(event, type(strict))
        assert encode(event) == encode(strict)  # type: ignore[arg-type]
    tags = list(EVENT_TYPES)
    assert [tags[code] for code in columnar.type_codes.to_pylist()] == [
        type(reference.events[i]).__struct_config__.tag  # type: ignore[union-attr]
        for i in accepted
    ]
    for name, arrow_type in ENVELOPE_COLUMNS.items():
        expected = pa.array([getattr(reference.events[i], name) for i in accepted], arrow_type)
        assert columnar.columns[name].equals(expected), name


@given(
    batch=st.lists(st.tuples(events(), MUTATIONS), min_size=1, max_size=8),
    arrivals=st.none() | st.lists(ARRIVALS, min_size=8, max_size=8),
    flags=st.lists(st.booleans(), min_size=8, max_size=8),
    bounds=BOUNDS,
)
def test_columnar_decode_decides_what_decode_batch_decides(
    batch: list[tuple[Event, tuple[Any, ...]]],
    arrivals: list[int] | None,
    flags: list[bool],
    bounds: TimeBounds,
) -> None:
    values: list[bytes | None] = [mutate(ev, mutation) for ev, mutation in batch]
    received = None if arrivals is None else arrivals[: len(values)]
    backfill = None if arrivals is None else flags[: len(values)]
    _same_verdicts(values, received, backfill, bounds)


_IDENTIFIERS = st.sampled_from(
    ["ok", "a b", " lead", "tab\there", "é", "x" * 128, "x" * 129, "\x7f", "~!", ""]
) | st.text(max_size=6)


@given(
    event=events(),
    field=st.sampled_from(["event_id", "account_id", "user_id", "session_id"]),
    value=_IDENTIFIERS,
    ip=st.sampled_from([*BAD_IPS, "10.0.0.1", "2001:db8::1", "::ffff:1.2.3.4"]),
)
def test_identifier_and_address_checks_match_the_contract(
    event: Event, field: str, value: str, ip: str
) -> None:
    document = msgspec.json.decode(encode(event))
    document[field] = value
    other = {**document, "ip": ip}
    values: list[bytes | None] = [
        msgspec.json.encode(document),
        msgspec.json.encode(other),
        None,
        b"",
        encode(event),
    ]
    _same_verdicts(values, None, None, TimeBounds())


def test_type_codes_name_the_contract_types() -> None:
    for code, cls in enumerate(EVENT_TYPES.values()):
        assert TYPE_CODES[cls] == code
