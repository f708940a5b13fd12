"""k-anonymity invariants: no published cell under k, and nothing under k by subtraction."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregations.analytics import protect_batch
from aggregations.kanon import FineCell, Group, ProtectedCell, protect_day, rollup
from aggregations.testing import fact, facts_table

DAY = datetime(2026, 11, 1, tzinfo=UTC)
HOURS = [DAY + timedelta(hours=h) for h in range(4)]

# One fine cell: (value, hour index, events, people ids). Small domains so that cells near k,
# pooling and secondary suppression happen often.
_cell = st.tuples(
    st.sampled_from("abcde"),
    st.integers(0, 3),
    st.integers(0, 4),  # events beyond one per person (anonymous events, repeat visits)
    st.frozensets(st.integers(0, 40), max_size=12),
)


def _fine(raw: Iterable[tuple[str, int, int, frozenset[int]]]) -> list[FineCell]:
    merged: dict[tuple[str, int], tuple[int, frozenset[int]]] = {}
    for value, hour, extra, people in raw:
        events, seen = merged.get((value, hour), (0, frozenset()))
        merged[(value, hour)] = (events + len(people) + extra, seen | people)
    return [
        FineCell(value, HOURS[hour], events, people)
        for (value, hour), (events, people) in sorted(merged.items())
        if events > 0
    ]


def _atoms(cells: list[FineCell], published: list[ProtectedCell], dimension: str):  # type: ignore[no-untyped-def]
    """The event set (as fine-cell keys) of every published cell of one dimension, from the
    ground truth: "other" = values not published on their own; "rest" = hours of a day cell
    not published on their own."""
    rows = [c for c in published if c.dimension == dimension]
    value_cells = {c.value for c in rows if c.grain == "day" and c.cell == "value"}
    keys = {(f.value, f.hour) for f in cells}

    def day_set(cell: str, value: str | None) -> frozenset[tuple[str, datetime]]:
        if cell == "value":
            return frozenset(k for k in keys if k[0] == value)
        return frozenset(k for k in keys if k[0] not in value_cells)

    sets: dict[ProtectedCell, frozenset[tuple[str, datetime]]] = {}
    for row in rows:
        parent = day_set(row.cell, row.value)
        if row.grain == "day":
            sets[row] = parent
        elif row.hour is not None:
            sets[row] = frozenset(k for k in parent if k[1] == row.hour)
    for row in rows:
        if row.grain == "hour" and row.hour is None:
            published_hours = {
                r.hour
                for r in rows
                if r.grain == "hour" and r.cell == row.cell and r.value == row.value and r.hour
            }
            parent = day_set(row.cell, row.value)
            sets[row] = frozenset(k for k in parent if k[1] not in published_hours)
    return sets


def _measure(cells: list[FineCell], keys: frozenset[tuple[str, datetime]]) -> tuple[int, int]:
    chosen = [f for f in cells if (f.value, f.hour) in keys]
    people: set[int] = set()
    for f in chosen:
        people |= f.people
    return sum(f.events for f in chosen), len(people)


@settings(max_examples=300, deadline=None)
@given(st.lists(_cell, max_size=30), st.integers(2, 8))
def test_every_published_cell_has_at_least_k_people(raw, k) -> None:  # type: ignore[no-untyped-def]
    published = protect_day({"country": _fine(raw), "type": _fine(raw)}, k)
    assert all(cell.people >= k for cell in published)


@settings(max_examples=300, deadline=None)
@given(st.lists(_cell, max_size=30), st.integers(2, 8))
def test_total_minus_published_children_is_zero_or_a_published_remainder(raw, k) -> None:  # type: ignore[no-untyped-def]
    cells = _fine(raw)
    published = protect_day({"country": cells}, k)
    if not published:
        everyone: set[int] = set()
        for f in cells:
            everyone |= f.people
        assert len(everyone) < k
        return
    (total,) = [c for c in published if c.cell == "total"]
    day = [c for c in published if c.grain == "day" and c.dimension == "country"]
    values = [c for c in day if c.cell == "value"]
    others = [c for c in day if c.cell == "other"]
    residual = total.events - sum(c.events for c in values)
    assert residual == sum(c.events for c in others)
    assert residual == 0 or (len(others) == 1 and others[0].people >= k)
    for parent in day:
        hours = [
            c
            for c in published
            if c.grain == "hour"
            and c.cell == parent.cell
            and c.value == parent.value
            and c.dimension == parent.dimension
        ]
        on_their_own = [c for c in hours if c.hour is not None]
        rest = [c for c in hours if c.hour is None]
        residual = parent.events - sum(c.events for c in on_their_own)
        assert residual == sum(c.events for c in rest)
        assert residual == 0 or (len(rest) == 1 and rest[0].people >= k)
    # No total per hour: it would cut across the day cells (hour total - hour cells).
    assert not [c for c in published if c.grain == "hour" and c.cell == "total"]


@settings(max_examples=300, deadline=None)
@given(st.lists(_cell, max_size=30), st.integers(2, 8))
def test_published_cells_form_a_tree_whose_leaves_have_k_people(raw, k) -> None:  # type: ignore[no-untyped-def]
    """The proof of "no differencing", checked: the published event sets are laminar
    (nested or disjoint), every number is right, and the leaves (what no further published
    cell refines) partition the day's events into groups of >= k people. Any sum or
    difference of published numbers is then a signed sum of leaves: no group under k."""
    cells = _fine(raw)
    published = protect_day({"country": cells}, k)
    if not published:
        return
    sets = _atoms(cells, published, "country")
    all_keys = frozenset((f.value, f.hour) for f in cells)
    for row, keys in sets.items():
        assert _measure(cells, keys) == (row.events, row.people), row
    family = [*sets.values(), all_keys]
    for a in family:
        for b in family:
            assert a <= b or b <= a or not (a & b)
    distinct = set(sets.values())  # a cell and its only child can be the same events
    leaves = [keys for keys in distinct if not any(o < keys for o in distinct)]
    covered: frozenset[tuple[str, datetime]] = frozenset()
    for leaf in leaves:
        assert not (covered & leaf)
        covered |= leaf
        assert _measure(cells, leaf)[1] >= k
    assert covered == all_keys


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from("abcdefg"), st.frozensets(st.integers(0, 30), max_size=15), max_size=7
    ),
    st.integers(2, 10),
)
def test_rollup_pool_is_empty_or_at_least_k(groups, k) -> None:  # type: ignore[no-untyped-def]
    union: set[int] = set()
    for people in groups.values():
        union |= people
    mapped = {key: Group(len(people) + 1, people) for key, people in groups.items()}
    if len(union) < k:
        if any(len(g.people) < k for g in mapped.values()):
            with pytest.raises(ValueError):
                rollup(mapped, k)
        return
    published, pooled = rollup(mapped, k)
    assert sorted(published + pooled) == sorted(mapped)
    assert all(len(mapped[key].people) >= k for key in published)
    pool: set[int] = set()
    for key in pooled:
        pool |= mapped[key].people
    assert not pooled or len(pool) >= k


def test_a_small_hour_is_not_recoverable_from_its_day() -> None:
    """Per-window suppression would publish FR's day (12 people) and FR's hour 0 (11
    people) and hide hour 1 (1 person); day - hour 0 would reveal that one person's events.
    Here hour 0 joins hour 1 in the rest of the day instead."""
    cells = [
        FineCell("FR", HOURS[0], 11, frozenset(range(11))),
        FineCell("FR", HOURS[1], 3, frozenset({99})),
    ]
    published = protect_day({"country": cells}, 10)
    hours = [c for c in published if c.grain == "hour"]
    assert [(c.hour, c.events, c.people) for c in hours] == [(None, 14, 12)]


def test_a_small_other_takes_the_smallest_published_value() -> None:
    cells = [
        FineCell("FR", HOURS[0], 30, frozenset(range(30))),
        FineCell("DE", HOURS[0], 12, frozenset(range(100, 112))),
        FineCell("LU", HOURS[0], 2, frozenset({200, 201})),
    ]
    day = [c for c in protect_day({"country": cells}, 10) if c.grain == "day"]
    assert {(c.cell, c.value, c.events, c.people) for c in day} == {
        ("total", None, 44, 44),
        ("value", "FR", 30, 30),
        ("other", None, 14, 14),  # LU (2 people) alone would be < k: DE joined it
    }


def test_a_day_under_k_publishes_nothing() -> None:
    cells = [FineCell("FR", HOURS[0], 100, frozenset(range(9)))]
    assert protect_day({"country": cells}, 10) == []


def test_anonymous_events_never_make_a_cell_publishable() -> None:
    cells = [
        FineCell("FR", HOURS[0], 20, frozenset(range(20))),
        FineCell("DE", HOURS[0], 1000, frozenset()),  # events naming nobody: 0 people
    ]
    day = [c for c in protect_day({"country": cells}, 10) if c.grain == "day"]
    assert ("value", "DE") not in {(c.cell, c.value) for c in day}


_fact = st.tuples(
    st.integers(0, 5),
    st.sampled_from(["FR", "DE", "LU"]),
    st.sampled_from(["login", "logout", "request"]),
    st.one_of(st.none(), st.integers(0, 25)),
)


@settings(max_examples=25, deadline=None)
@given(st.lists(_fact, min_size=1, max_size=120), st.integers(2, 6))
def test_facts_to_published_cells_keep_k(rows, k) -> None:  # type: ignore[no-untyped-def]
    """The same invariants through DuckDB, from FACTS rows to published cells."""
    table = facts_table(
        [
            fact(
                DAY + timedelta(hours=h),
                country=c,
                type=t,
                subject_key=None if p is None else f"s{p}",
                session_seconds=float(h * 60),
            )
            for h, c, t, p in rows
        ]
    )
    batch = protect_batch(table, k)
    assert all(cell.people >= k for cell in batch.cells)
    totals = [c for c in batch.cells if c.cell == "total"]
    for dimension in ("country", "type", "device_class", "browser_family", "os_family"):
        day = [c for c in batch.cells if c.grain == "day" and c.dimension == dimension]
        if totals:
            assert sum(c.events for c in day) == totals[0].events == table.num_rows
    logout_day = [c for c in batch.cells if c.grain == "day" and c.value == "logout"]
    assert (batch.median_session_seconds is not None) == bool(logout_day)
