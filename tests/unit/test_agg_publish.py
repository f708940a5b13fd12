"""Publishing: closed windows only, idempotent, corrections for late facts, k-anonymous
analytics in frozen batches, only committed facts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aggregations.publish import publish
from aggregations.schemas import (
    ANALYTICS,
    ANALYTICS_DIR,
    METERING_DAILY,
    METERING_DAILY_DIR,
    METERING_HOURLY,
    METERING_HOURLY_DIR,
)
from aggregations.storage import read_published, resolve_root
from aggregations.testing import fact, facts_table, write_committed_facts, write_uncommitted_facts
from aggregations.windows import day_closed, hour_closed, watermark

DAY = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 5, tzinfo=UTC)
GRACE = timedelta(hours=1)
K = 10


def _day_of_traffic(people: int = 20, hours: int = 3):  # type: ignore[no-untyped-def]
    return facts_table(
        [
            fact(DAY + timedelta(hours=h), type=t, subject_key=f"p{p}", bytes=10)
            for p in range(people)
            for h in range(hours)
            for t in ("request", "upload")
        ]
        # An event the next day at 02:00 moves the watermark to 03:00: day 1 closes.
        + [fact(DAY + timedelta(days=1, hours=2), subject_key="x")]
    )


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "published").rglob("*.parquet"))
    }


def _rows(root: Path, folder: str, schema):  # type: ignore[no-untyped-def]
    return read_published(resolve_root(str(root)), folder, schema).to_pylist()


def test_window_arithmetic() -> None:
    mark = watermark(DAY + timedelta(hours=5), NOW)
    assert mark == DAY + timedelta(hours=6)
    assert hour_closed(DAY + timedelta(hours=4), mark, GRACE)
    assert not hour_closed(DAY + timedelta(hours=5), mark, GRACE)
    assert not day_closed(DAY.date(), DAY + timedelta(days=1, minutes=59), GRACE)
    assert day_closed(DAY.date(), DAY + timedelta(days=1, hours=1), GRACE)


def test_watermark_never_runs_past_now() -> None:
    """An event dated next year must not close every window at once."""
    assert watermark(datetime(2027, 6, 1, tzinfo=UTC), NOW) == NOW + timedelta(hours=1)
    with pytest.raises(ValueError):
        watermark(DAY, datetime(2026, 11, 5))  # noqa: DTZ001 - naive on purpose


def test_publishes_closed_windows_once_and_is_idempotent(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(), first_offset=0)
    report = publish(str(tmp_path), NOW, GRACE, K)
    assert report.watermark == DAY + timedelta(days=1, hours=3)
    # Hours 0..2 of day 1 and hours up to 01:00 of day 2 are closed; day 2's 02:00 is not.
    hourly = _rows(tmp_path, METERING_HOURLY_DIR, METERING_HOURLY)
    assert sorted(r["hour"] for r in hourly) == [DAY + timedelta(hours=h) for h in range(3)]
    assert all(not r["is_correction"] and r["uploads"] == 20 for r in hourly)
    daily = _rows(tmp_path, METERING_DAILY_DIR, METERING_DAILY)
    assert [(r["date"], r["active_users"], r["upload_bytes"]) for r in daily] == [
        (date(2026, 11, 1), 20, 600)
    ]
    assert report.analytics_batches == 1 and report.run_id is not None
    before = _files(tmp_path)
    again = publish(str(tmp_path), NOW + timedelta(days=1), GRACE, K)
    assert again.run_id is None and again.rows_written == 0
    assert _files(tmp_path) == before


def test_late_facts_become_corrections_with_deltas(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(), first_offset=0)
    publish(str(tmp_path), NOW, GRACE, K)
    late = facts_table([fact(DAY, type="upload", subject_key="late", bytes=7, event_key="late-1")])
    write_committed_facts(tmp_path, late, first_offset=1000)
    report = publish(str(tmp_path), NOW, GRACE, K)
    assert (report.hourly_base, report.hourly_corrections) == (0, 1)
    assert (report.daily_base, report.daily_corrections) == (0, 1)
    fixes = [r for r in _rows(tmp_path, METERING_HOURLY_DIR, METERING_HOURLY) if r["is_correction"]]
    assert [
        (r["hour"], r["uploads"], r["upload_bytes"], r["active_users"], r["requests"])
        for r in fixes
    ] == [(DAY, 1, 7, 1, 0)]
    # The sum of a window's rows is its exact current value.
    daily = _rows(tmp_path, METERING_DAILY_DIR, METERING_DAILY)
    assert sum(r["active_users"] for r in daily) == 21
    assert sum(r["upload_bytes"] for r in daily) == 607


def test_only_committed_facts_count(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(), first_offset=0)
    crashed = facts_table([fact(DAY, type="upload", bytes=10**9, subject_key="ghost")])
    write_uncommitted_facts(tmp_path, crashed, "sieve.raw+0+500-500.parquet")
    report = publish(str(tmp_path), NOW, GRACE, K)
    assert report.facts == _day_of_traffic().num_rows
    daily = _rows(tmp_path, METERING_DAILY_DIR, METERING_DAILY)
    assert daily[0]["upload_bytes"] == 600


def test_rerun_after_a_crash_writes_only_what_is_missing(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(), first_offset=0)
    publish(str(tmp_path), NOW, GRACE, K)
    (daily_file,) = [p for p in (tmp_path / METERING_DAILY_DIR).glob("2*.parquet")]
    daily_file.unlink()  # as if the run died between the hourly and the daily file
    report = publish(str(tmp_path), NOW, GRACE, K)
    assert (report.hourly_base, report.hourly_corrections, report.daily_base) == (0, 0, 1)
    assert report.analytics_batches == 0


def test_analytics_cells_have_k_people_and_late_facts_wait_for_k(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(people=12), first_offset=0)
    publish(str(tmp_path), NOW, GRACE, K)
    batch0 = tmp_path / ANALYTICS_DIR / "date=2026-11-01" / "batch-0000.parquet"
    first_bytes = batch0.read_bytes()
    rows = pq.read_table(batch0).to_pylist()
    assert rows and all(r["people"] >= K for r in rows)
    total = [r for r in rows if r["dimension"] == "total"]
    assert [(r["events"], r["people"]) for r in total] == [(72, 12)]

    # Three late people: fewer than k, so held back (not published, not dropped).
    late = [fact(DAY, type="upload", subject_key=f"late{i}") for i in range(3)]
    write_committed_facts(tmp_path, facts_table(late), first_offset=1000)
    report = publish(str(tmp_path), NOW, GRACE, K)
    assert report.held_back_days == (date(2026, 11, 1),) and report.analytics_batches == 0

    # Ten more late people: the late facts together reach k and become batch 1.
    more = [fact(DAY, type="upload", subject_key=f"more{i}") for i in range(10)]
    write_committed_facts(tmp_path, facts_table(more), first_offset=2000)
    report = publish(str(tmp_path), NOW, GRACE, K)
    assert report.analytics_batches == 1 and report.held_back_days == ()
    batch1 = pq.read_table(batch0.with_name("batch-0001.parquet")).to_pylist()
    (late_total,) = [r for r in batch1 if r["dimension"] == "total"]
    assert (late_total["events"], late_total["people"]) == (13, 13)
    assert batch0.read_bytes() == first_bytes  # a published batch never changes
    state = pq.read_schema(batch0.with_name("batch-0001.parquet")).metadata
    assert b"sieve.raw+0+1000-1002" in state[b"sieve.covered_files"]
    assert len(_rows(tmp_path, ANALYTICS_DIR, ANALYTICS)) == len(rows) + len(batch1)


def test_a_day_under_k_publishes_metering_but_no_analytics(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(people=5), first_offset=0)
    report = publish(str(tmp_path), NOW, GRACE, K)
    assert report.daily_base == 1  # metering is exact, never suppressed
    assert report.analytics_batches == 0 and report.held_back_days == (date(2026, 11, 1),)


def test_no_facts_publishes_nothing(tmp_path: Path) -> None:
    report = publish(str(tmp_path), NOW, GRACE, K)
    assert report.run_id is None and report.watermark is None


def test_close_through_closes_the_windows_of_a_quiet_stream(tmp_path: Path) -> None:
    # Only day 1's traffic: without later events its last hours and the day stay open.
    write_committed_facts(tmp_path, _day_of_traffic(hours=3).slice(0, 120), first_offset=0)
    quiet = publish(str(tmp_path), NOW, GRACE, K)
    assert quiet.daily_base == 0 and quiet.hourly_base == 2  # 00:00, 01:00 closed; 02:00 not
    closed = publish(str(tmp_path), NOW, GRACE, K, close_through=DAY + timedelta(days=1))
    assert (closed.hourly_base, closed.daily_base) == (1, 1)
    daily = _rows(tmp_path, METERING_DAILY_DIR, METERING_DAILY)
    assert [(r["date"], r["uploads"]) for r in daily] == [(date(2026, 11, 1), 60)]
    # Never past the clock: a close-through in the future closes nothing more.
    again = publish(str(tmp_path), NOW, GRACE, K, close_through=NOW + timedelta(days=30))
    assert again.rows_written == 0
