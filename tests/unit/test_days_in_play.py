"""Which days a run schedules (aggregations.analytics.days_in_play): looking at the recent
days only (newest first, up to the first day all of whose slots were already due) finds the
same days as asking every day of the history."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from aggregations.analytics import newly_due, newly_due_days
from aggregations.dp.budget import Budget

FIRST = date(2026, 1, 1)
START = datetime(2026, 1, 1, tzinfo=UTC)


@given(
    offsets=st.sets(st.integers(0, 60), max_size=40),
    late_batches=st.integers(0, 3),
    interval_hours=st.integers(1, 72),
    grace_hours=st.integers(0, 30),
    before_hours=st.none() | st.integers(0, 24 * 70),
    moved_hours=st.integers(0, 24 * 10),
)
def test_recent_days_only_find_every_day_that_fell_due(
    offsets: set[int],
    late_batches: int,
    interval_hours: int,
    grace_hours: int,
    before_hours: int | None,
    moved_hours: int,
) -> None:
    budget = Budget(
        epsilon=1.0,
        delta=1e-6,
        late_batches=late_batches,
        late_interval=timedelta(hours=interval_hours),
    )
    grace = timedelta(hours=grace_hours)
    before = None if before_hours is None else START + timedelta(hours=before_hours)
    after = (before or START) + timedelta(hours=moved_hours)
    days = [FIRST + timedelta(days=offset) for offset in offsets]
    every_day = {day for day in days if newly_due(day, budget, before, after, grace)}
    assert newly_due_days(days, budget, before, after, grace) == every_day
