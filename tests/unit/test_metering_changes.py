"""``metering.changes`` against a plain model of its contract, on random facts published in
part (some hours of a day published by an earlier run, the others not yet): the windows
nothing was published for take the short way (base rows as they are, no join), and must
give what the comparison gives every other key."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregations.engine import connect
from aggregations.metering import KEY, WINDOW, changes, recompute
from aggregations.meters import default_meters
from aggregations.schemas import METERING
from tests.fixtures.facts import usage_facts

START = datetime(2026, 11, 1, tzinfo=UTC)
FAR = datetime(2030, 1, 1, tzinfo=UTC)
METERS = default_meters()
DAYS = [START.date(), START.date() + timedelta(days=1)]

Key = tuple[Any, ...]


def _recomputed(facts: pa.Table, last_hour: datetime, last_day: date) -> list[dict[str, Any]]:
    connection = connect()
    connection.register("facts", facts)
    recompute(connection, METERS, DAYS, last_hour, last_day)
    rows: list[dict[str, Any]] = (
        connection.sql("SELECT * FROM recomputed").to_arrow_table().to_pylist()
    )
    connection.close()
    return rows


def _published(rows: list[dict[str, Any]]) -> pa.Table:
    stamped = [
        {**row, "is_correction": False, "publish_run": "r", "watermark": FAR, "published_at": FAR}
        for row in rows
    ]
    return pa.Table.from_pylist(stamped, schema=METERING)


def _changes(facts: pa.Table, published: pa.Table, new_meters: tuple[str, ...]) -> set[Key]:
    connection = connect()
    connection.register("facts", facts)
    recompute(connection, METERS, DAYS, FAR, FAR.date())
    connection.register("published", published)
    changes(connection, METERS, new_meters)
    rows = connection.sql("SELECT * FROM changes").to_arrow_table().to_pylist()
    connection.close()
    return {
        (*(r[k] for k in KEY), r["value"], r["is_correction"], r["window_published"]) for r in rows
    }


def _model(
    recomputed: list[dict[str, Any]], published: list[dict[str, Any]], new_meters: tuple[str, ...]
) -> set[Key]:
    """The contract (metering module docstring), key by key, in Python."""
    now = {tuple(r[k] for k in KEY): r["value"] for r in recomputed}
    current: dict[Key, Decimal] = {}
    for r in published:
        key = tuple(r[k] for k in KEY)
        current[key] = current.get(key, Decimal(0)) + r["value"]
    windows_published = {tuple(r[k] for k in WINDOW) for r in published}
    windows_with_facts = {tuple(r[k] for k in WINDOW) for r in recomputed}
    out = set()
    for key in now.keys() | current.keys():
        window = key[: len(WINDOW)]
        value, before = now.get(key, Decimal(0)), current.get(key)
        if window not in windows_with_facts:
            continue  # facts gone: left as published
        if value != (before or 0) or (before is None and window not in windows_published):
            meter = key[KEY.index("meter")]
            on = window in windows_published
            out.add((*key, value - (before or 0), on and meter not in new_meters, on))
    return out


_facts = st.lists(
    st.tuples(
        st.integers(0, 47),
        st.sampled_from(["request", "page_view", "login", "logout", "upload", "download"]),
        st.integers(0, 3),
        st.integers(0, 10**5),
        st.sampled_from(["a", "b"]),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@given(
    first=_facts,
    later=_facts,
    published_through=st.integers(0, 47),
    new_meters=st.sets(st.sampled_from([m.name for m in METERS]), max_size=2),
)
def test_changes_are_the_contracts_key_by_key(
    first: list[tuple[int, str, int, int, str]],
    later: list[tuple[int, str, int, int, str]],
    published_through: int,
    new_meters: set[str],
) -> None:
    def table(rows: list[tuple[int, str, int, int, str]]) -> pa.Table:
        return usage_facts(START, rows)

    # An earlier run saw ``first`` and closed the hours through ``published_through`` (and
    # the first day if that hour is past it): some windows published, the others not.
    last_hour = START + timedelta(hours=published_through)
    last_day = DAYS[0] if published_through >= 24 else DAYS[0] - timedelta(days=1)
    earlier = [
        r for r in _recomputed(table(first), last_hour, last_day) if r["meter"] not in new_meters
    ]
    now = table([*first, *later])
    recomputed = _recomputed(now, FAR, FAR.date())
    names = tuple(sorted(new_meters))
    assert _changes(now, _published(earlier), names) == _model(recomputed, earlier, names)
