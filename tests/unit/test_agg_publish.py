"""Publishing: closed windows only, idempotent, corrections for late facts, differentially
private analytics on the day's schedule with a ledger and an accountant, only committed
facts."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aggregations import publish as publish_module
from aggregations.analytics import LegacyAnalyticsError
from aggregations.catalog import open_catalog
from aggregations.dp.ledger import LEDGER_DIR, read_ledger
from aggregations.publish import LegacyMeteringError, publish
from aggregations.schemas import ANALYTICS, ANALYTICS_DIR, METERING_DIR
from aggregations.storage import resolve_root
from aggregations.windows import day_closed, hour_closed, watermark
from schemas.events import EVENT_TYPES
from tests.fixtures.facts import (
    DEFAULT_PRIVACY,
    fact,
    facts_table,
    write_committed_facts,
    write_uncommitted_facts,
)

DAY = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 5, tzinfo=UTC)
GRACE = timedelta(hours=1)
PRIVACY = DEFAULT_PRIVACY


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


def _view(root: Path, view: str) -> list[dict[str, object]]:
    """Rows of a billing view, as the catalog shows them."""
    return (
        open_catalog(str(root), role="billing")
        .sql(f"SELECT * FROM {view}")
        .to_arrow_table()
        .to_pylist()
    )


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
    report = publish(str(tmp_path), NOW, GRACE, PRIVACY)
    assert report.watermark == DAY + timedelta(days=1, hours=3)
    # Hours 0..2 of day 1 and hours up to 01:00 of day 2 are closed; day 2's 02:00 is not.
    hourly = _view(tmp_path, "metering_hourly")
    assert sorted(r["hour"] for r in hourly) == [DAY + timedelta(hours=h) for h in range(3)]
    assert all(r["corrections"] == 0 and r["uploads"] == 20 for r in hourly)
    daily = _view(tmp_path, "metering_daily")
    assert [(r["date"], r["active_users"], r["upload_bytes"]) for r in daily] == [
        (date(2026, 11, 1), 20, 600)
    ]
    assert report.analytics_batches == 1 and report.run_id is not None
    before = _files(tmp_path)
    again = publish(str(tmp_path), NOW + timedelta(days=1), GRACE, PRIVACY)
    assert again.run_id is None and again.rows_written == 0
    assert _files(tmp_path) == before


def test_late_facts_become_corrections_with_deltas(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(), first_offset=0)
    publish(str(tmp_path), NOW, GRACE, PRIVACY)
    late = facts_table([fact(DAY, type="upload", subject_key="late", bytes=7, event_key="late-1")])
    write_committed_facts(tmp_path, late, first_offset=1000)
    report = publish(str(tmp_path), NOW, GRACE, PRIVACY)
    assert (report.hourly_base, report.hourly_corrections) == (0, 1)
    assert (report.daily_base, report.daily_corrections) == (0, 1)
    fixes = [r for r in _view(tmp_path, "metering_corrections") if r["grain"] == "hour"]
    assert [
        (r["hour"], r["uploads"], r["upload_bytes"], r["active_users"], r["requests"])
        for r in fixes
    ] == [(DAY, 1, 7, 1, 0)]
    # The sum of a window's rows is its exact current value.
    (daily,) = _view(tmp_path, "metering_daily")
    assert (daily["active_users"], daily["upload_bytes"], daily["corrections"]) == (21, 607, 1)


def test_only_committed_facts_count(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(), first_offset=0)
    crashed = facts_table([fact(DAY, type="upload", bytes=10**9, subject_key="ghost")])
    write_uncommitted_facts(tmp_path, crashed, "sieve.raw+0+500-500.parquet")
    report = publish(str(tmp_path), NOW, GRACE, PRIVACY)
    assert report.facts == _day_of_traffic().num_rows
    daily = _view(tmp_path, "metering_daily")
    assert daily[0]["upload_bytes"] == 600


class _Crash(RuntimeError):
    pass


def test_a_crash_before_the_manifest_leaves_the_old_state_and_the_rerun_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(), first_offset=0)

    def crash(*args: object) -> None:
        raise _Crash("killed before the manifest")

    with monkeypatch.context() as patched:
        patched.setattr(publish_module, "write_manifest", crash)
        with pytest.raises(_Crash):
            publish(str(tmp_path), NOW, GRACE, PRIVACY)
    # Its metering file was written, but no manifest lists it: readers see nothing yet.
    assert list((tmp_path / METERING_DIR).glob("grain=*/date=*/*.parquet"))
    assert _view(tmp_path, "metering_daily") == []
    # The ledger recorded the release (the budget is spent): the rerun restores it, draws
    # no new noise, and publishes the metering.
    (entry,) = read_ledger(resolve_root(str(tmp_path)))[date(2026, 11, 1)]
    report = publish(str(tmp_path), NOW, GRACE, PRIVACY)
    assert report.analytics_batches == 0 and (report.hourly_base, report.daily_base) == (3, 1)
    assert read_ledger(resolve_root(str(tmp_path)))[date(2026, 11, 1)] == [entry]
    assert [r["upload_bytes"] for r in _view(tmp_path, "metering_daily")] == [600]
    # The crashed run's files are gone or the rerun's own (same inputs, same names).
    listed = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / METERING_DIR).rglob("*")}
    assert not [name for name in listed if ".tmp-" in name]


def test_metering_of_an_earlier_sieve_is_refused_with_what_to_do(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(), first_offset=0)
    legacy = tmp_path / "published" / "metering_daily"
    legacy.mkdir(parents=True)
    pq.write_table(ANALYTICS.empty_table(), legacy / "20261101T03Z-0123456789abcdef.parquet")
    with pytest.raises(LegacyMeteringError, match="Move published/metering_hourly"):
        publish(str(tmp_path), NOW, GRACE, PRIVACY)


def _batch(root: Path, number: int, folder: str = ANALYTICS_DIR) -> Path:
    return root / folder / "date=2026-11-01" / f"batch-{number:04d}.parquet"


def _next_day_fact(hours: int, offset: int, root: Path) -> None:
    """A fact on 2 November at ``hours``: it moves the watermark (event time) there + 1 h."""
    write_committed_facts(
        root,
        facts_table([fact(DAY + timedelta(days=1, hours=hours), event_key=f"tick-{hours}")]),
        first_offset=offset,
    )


def test_analytics_are_recorded_in_the_ledger_then_published(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(people=12), first_offset=0)
    report = publish(str(tmp_path), NOW, GRACE, PRIVACY)
    assert report.analytics_batches == 1 and report.analytics_refused == ()
    published, recorded = _batch(tmp_path, 0), _batch(tmp_path, 0, LEDGER_DIR)
    assert published.read_bytes() == recorded.read_bytes()  # the same rows, the same spend
    rows = pq.read_table(published).to_pylist()
    (total,) = [r for r in rows if r["dimension"] == "total" and r["grain"] == "day"]
    # Every count is noisy and says how noisy: nothing here is an exact count.
    assert all(r["events_sd"] > 0 for r in rows)
    assert total["people_sd"] > 0 and total["events"] >= 0 and total["people"] >= 0
    assert len([r for r in rows if r["grain"] == "hour"]) == 24
    (entry,) = read_ledger(resolve_root(str(tmp_path)))[date(2026, 11, 1)]
    # Slot 0 spends 90 % of the day's rho; the late slot keeps the rest.
    assert entry.slots == (0,) and entry.rho == pytest.approx(0.9 * PRIVACY.budget.rho)
    assert entry.epsilon_after < PRIVACY.budget.epsilon
    assert entry.covered_files == ("facts/date=2026-11-01/sieve.raw+0+0-72.parquet",)
    assert report.analytics_spent == ((date(2026, 11, 1), 0, entry.epsilon_after),)


def test_late_facts_draw_on_the_same_days_budget(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(people=12), first_offset=0)
    publish(str(tmp_path), NOW, GRACE, PRIVACY)
    late = [fact(DAY, type="upload", subject_key=f"late{i}") for i in range(3)]
    write_committed_facts(tmp_path, facts_table(late), first_offset=1000)
    # The late slot is due a day after the close (by event time): the facts wait.
    waiting = publish(str(tmp_path), NOW, GRACE, PRIVACY)
    assert waiting.analytics_batches == 0 and waiting.waiting_days == (date(2026, 11, 1),)
    _next_day_fact(23, 2000, tmp_path)  # watermark 3 November 00:00
    still = publish(str(tmp_path), NOW, GRACE, PRIVACY)
    assert still.analytics_batches == 0 and still.waiting_days == (date(2026, 11, 1),)
    write_committed_facts(
        tmp_path,
        facts_table([fact(DAY + timedelta(days=2, hours=1), event_key="tick-3")]),
        first_offset=3000,
    )
    report = publish(str(tmp_path), NOW, GRACE, PRIVACY)  # watermark 02:00: slot 1 is due
    assert report.analytics_batches == 2  # 1 November's late batch, 2 November's first
    entries = read_ledger(resolve_root(str(tmp_path)))[date(2026, 11, 1)]
    assert [e.slots for e in entries] == [(0,), (1,)]
    assert entries[1].covered_files == ("facts/date=2026-11-01/sieve.raw+0+1000-1002.parquet",)
    # Both batches together spend the whole day: epsilon 1, not more.
    assert sum(e.rho for e in entries) == pytest.approx(PRIVACY.budget.rho)
    assert entries[1].epsilon_after == pytest.approx(PRIVACY.budget.epsilon, rel=1e-6)
    # Every slot of the day is spent: later facts for it are counted, never released.
    write_committed_facts(tmp_path, facts_table(late[:1]), first_offset=4000)
    after = publish(str(tmp_path), NOW, GRACE, PRIVACY)
    assert after.unreleased_facts == 1 and after.analytics_batches == 0
    assert after.daily_corrections == 1  # metering still counts it, exactly


def test_slots_due_together_are_one_batch_with_their_shares(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(people=12), first_offset=0)
    # Closed through 3 November 02:00: slot 0 and the late slot of 1 November are both due.
    report = publish(str(tmp_path), NOW, GRACE, PRIVACY, close_through=DAY + timedelta(days=2))
    (entry,) = read_ledger(resolve_root(str(tmp_path)))[date(2026, 11, 1)]
    assert report.analytics_batches >= 1 and entry.slots == (0, 1)
    assert entry.rho == pytest.approx(PRIVACY.budget.rho)


def test_republishing_from_scratch_restores_the_recorded_release(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(people=12), first_offset=0)
    publish(str(tmp_path), NOW, GRACE, PRIVACY)
    before = _batch(tmp_path, 0).read_bytes()
    ledger_before = sorted((tmp_path / LEDGER_DIR).rglob("*"))
    shutil.rmtree(tmp_path / ANALYTICS_DIR)  # "delete the analytics and publish again"
    report = publish(str(tmp_path), NOW, GRACE, PRIVACY)
    # The very same numbers come back (no new noise to difference), and nothing is spent.
    assert _batch(tmp_path, 0).read_bytes() == before
    assert report.analytics_restored == 1 and report.analytics_batches == 0
    assert sorted((tmp_path / LEDGER_DIR).rglob("*")) == ledger_before


def test_the_accountant_refuses_a_batch_over_the_days_budget(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(people=12), first_offset=0)
    publish(str(tmp_path), NOW, GRACE, PRIVACY)
    # The operator halves epsilon after slot 0 spent 90 % of the old budget: the late batch
    # would take the day past the new budget, so it is refused and nothing is written.
    halved = dataclasses.replace(PRIVACY, budget=dataclasses.replace(PRIVACY.budget, epsilon=0.5))
    late = [fact(DAY, type="upload", subject_key=f"late{i}") for i in range(3)]
    write_committed_facts(tmp_path, facts_table(late), first_offset=1000)
    report = publish(str(tmp_path), NOW, GRACE, halved, close_through=DAY + timedelta(days=2))
    (refusal,) = report.analytics_refused
    assert (refusal.day, refusal.batch) == (date(2026, 11, 1), 1)
    assert "over budget" in refusal.reason and "over its 0.5" in refusal.reason
    assert not _batch(tmp_path, 1).exists() and not _batch(tmp_path, 1, LEDGER_DIR).exists()
    assert len(read_ledger(resolve_root(str(tmp_path)))[date(2026, 11, 1)]) == 1


def test_a_lost_ledger_record_stops_the_day(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(people=12), first_offset=0)
    publish(str(tmp_path), NOW, GRACE, PRIVACY)
    shutil.rmtree(tmp_path / LEDGER_DIR)  # the budget's memory is gone, the release is not
    report = publish(str(tmp_path), NOW, GRACE, PRIVACY, close_through=DAY + timedelta(days=2))
    (refusal,) = report.analytics_refused
    assert refusal.day == date(2026, 11, 1) and "ledger" in refusal.reason
    assert not _batch(tmp_path, 1).exists()


def test_k_anonymous_files_of_an_earlier_sieve_are_refused(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(people=12), first_offset=0)
    legacy = ANALYTICS.remove_metadata().with_metadata({"sieve.dataset": "analytics"})
    (tmp_path / ANALYTICS_DIR / "date=2026-10-01").mkdir(parents=True)
    pq.write_table(legacy.empty_table(), tmp_path / ANALYTICS_DIR / "date=2026-10-01/b.parquet")
    with pytest.raises(LegacyAnalyticsError, match="Delete"):
        publish(str(tmp_path), NOW, GRACE, PRIVACY)


def test_a_day_of_few_people_still_gets_its_noisy_totals(tmp_path: Path) -> None:
    write_committed_facts(tmp_path, _day_of_traffic(people=5), first_offset=0)
    report = publish(str(tmp_path), NOW, GRACE, PRIVACY)
    assert report.daily_base == 1  # metering is exact, never suppressed
    rows = pq.read_table(_batch(tmp_path, 0)).to_pylist()
    # Totals and event types (a public, small domain) are always released with their noise.
    # Whether the one value 5 people share passes the people threshold is up to the noise
    # (about 1 run in 10 it does): a value row or the dimension's "other" row, never less.
    assert {r["dimension"] for r in rows} == {"total", "type", *_OPEN_DIMENSIONS}
    for dimension in _OPEN_DIMENSIONS:
        cells = [r["cell"] for r in rows if r["dimension"] == dimension]
        assert set(cells) <= {"value", "other"} and "other" in cells
    assert len([r for r in rows if r["dimension"] == "type"]) == len(
        EVENT_TYPES
    )  # every type of the contract


_OPEN_DIMENSIONS = {"country", "device_class", "browser_family", "os_family"}


def test_no_facts_publishes_nothing(tmp_path: Path) -> None:
    report = publish(str(tmp_path), NOW, GRACE, PRIVACY)
    assert report.run_id is None and report.watermark is None


def test_close_through_closes_the_windows_of_a_quiet_stream(tmp_path: Path) -> None:
    # Only day 1's traffic: without later events its last hours and the day stay open.
    write_committed_facts(tmp_path, _day_of_traffic(hours=3).slice(0, 120), first_offset=0)
    quiet = publish(str(tmp_path), NOW, GRACE, PRIVACY)
    assert quiet.daily_base == 0 and quiet.hourly_base == 2  # 00:00, 01:00 closed; 02:00 not
    closed = publish(str(tmp_path), NOW, GRACE, PRIVACY, close_through=DAY + timedelta(days=1))
    assert (closed.hourly_base, closed.daily_base) == (1, 1)
    daily = _view(tmp_path, "metering_daily")
    assert [(r["date"], r["uploads"]) for r in daily] == [(date(2026, 11, 1), 60)]
    # Never past the clock: a close-through in the future closes nothing more.
    again = publish(str(tmp_path), NOW, GRACE, PRIVACY, close_through=NOW + timedelta(days=30))
    assert again.hourly_base + again.daily_base + again.hourly_corrections == 0
    # The clock (5 November) is past 1 November's late slot, so that batch is released, on
    # schedule, with no late facts: its existence says nothing about anyone.
    assert [(day, batch) for day, batch, _ in again.analytics_spent] == [(date(2026, 11, 1), 1)]
