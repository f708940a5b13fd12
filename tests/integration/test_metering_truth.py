"""Metering equals ground truth, duplicates and late events included.

The issue: "a test computes usage per account and hour straight from the generator's events
(independently, with its own code) and compares it with `metering_hourly`: equal on every
row, duplicates and late events included."

One module-scoped run: the generator's records go to a fresh topic in two halves and a real
worker drains each half. Publishing happens twice on the worker's data root (after the first
half, with ``now`` at the stream's position then, and after everything), so late events of
the second half land in windows already published and come out as corrections; a copy of
the final facts is also published once, in one step. Both histories must show the same
``metering_hourly`` / ``metering_daily`` as the usage this module computes from the
generator's events (``kind == "event"``: each valid event once, as dedup should leave it).
"""

from __future__ import annotations

import shutil
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Final

import pytest

from aggregations.catalog import open_catalog
from aggregations.meters import default_meters
from aggregations.publish import PublishReport, publish
from aggregations.testing import DEFAULT_PRIVACY
from schemas.events import Download, Event, Login, Logout, PageView, Request, Upload, encode
from streams.generate.model import TrafficModel
from streams.generate.records import GeneratedRecord
from streams.generate.sinks import TopicSink
from streams.topics import TopicSpec, create_topics
from tests.conftest import KafkaBroker
from tests.integration.pipeline_truth import traffic_config
from tests.integration.worker_harness import WorkerProcess, WorkerSetup, wait_until

COUNT: Final = 20_000
SEED: Final = 11
GRACE: Final = timedelta(hours=1)
HOUR: Final = timedelta(hours=1)
# A day after the generated period (which ends 2026-11-01): no wall-clock cap applies.
END_NOW: Final = datetime(2026, 11, 2, tzinfo=UTC)
MILLISECOND: Final = Decimal("0.001")
METRICS: Final = (
    "requests",
    "page_views",
    "sessions",
    "session_seconds",
    "uploads",
    "upload_bytes",
    "downloads",
    "download_bytes",
    "active_users",
)
# Windows close on *event* time (the latest fact hour + 1h), never on `now` alone, so the
# last hour of the period would stay open for ever in a test. In production later traffic
# closes it; here one request of another account, past the period by more than the grace,
# plays that part. Its own hour stays open, so it must not show in metering.
TICK: Final = Request(
    schema_version=1,
    event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:sieve:test:metering-tick")),
    occurred_at=datetime(2026, 11, 1, 2, 30, tzinfo=UTC),
    account_id="acct-watermark-tick",
    ip="192.0.2.10",
    path="/",
    status=200,
)

Key = tuple[str, datetime]  # (account_id, window start)
Rows = dict[Key, dict[str, Any]]


# --- ground truth, from the generator's events ----------------------------------------------


@dataclass
class _Window:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METRICS, 0))
    session_seconds: Decimal = Decimal(0)
    users: set[str] = field(default_factory=set)

    def row(self) -> dict[str, Any]:
        return {
            **self.counts,
            "session_seconds": self.session_seconds,
            "active_users": len(self.users),
        }


def _milliseconds(seconds: float) -> Decimal:
    """A logout's duration as metering counts it: the number as the event's JSON writes it
    (shortest round-trip form), rounded half away from zero to the millisecond, which is
    what the cast to DECIMAL(18, 3) in aggregations/metering.py does per value."""
    return Decimal(repr(seconds)).quantize(MILLISECOND, rounding=ROUND_HALF_UP)


def _add(window: _Window, event: Event) -> None:
    counts = window.counts
    if isinstance(event, Request):
        counts["requests"] += 1
    elif isinstance(event, PageView):
        counts["page_views"] += 1
    elif isinstance(event, Login):
        counts["sessions"] += 1  # a session counts where it starts
    elif isinstance(event, Logout):
        # Session time counts where the session ends: the logout carries the duration.
        window.session_seconds += _milliseconds(event.session_duration_s)
    elif isinstance(event, Upload):
        counts["uploads"] += 1
        counts["upload_bytes"] += event.bytes
    elif isinstance(event, Download):
        counts["downloads"] += 1
        counts["download_bytes"] += event.bytes
    # Payments, account lifecycle and consent events count nothing, but like every event
    # they give their account a row (of zeros) in their window.
    if event.user_id is not None:
        window.users.add(event.user_id)


def hour_start(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def usage(events: Iterable[Event], grain: str) -> Rows:
    """Usage per (account, UTC hour) or (account, UTC day as midnight) of ``events``."""
    windows: defaultdict[Key, _Window] = defaultdict(_Window)
    for event in events:
        start = hour_start(event.occurred_at)
        if grain == "day":
            start = start.replace(hour=0)
        _add(windows[(event.account_id, start)], event)
    return {key: window.row() for key, window in windows.items()}


def valid_events(records: Iterable[GeneratedRecord]) -> list[Event]:
    """Each valid event once: the first sending, not its duplicates or the malformed."""
    return [r.event for r in records if r.kind == "event" and r.event is not None]


def late_events(records: Iterable[GeneratedRecord]) -> list[Event]:
    return [r.event for r in records if r.kind == "event" and r.late and r.event is not None]


def closed(rows: Rows, last: datetime) -> Rows:
    return {key: row for key, row in rows.items() if key[1] <= last}


# --- what the catalog shows -------------------------------------------------------------------


def _metering(data_root: Path, view: str) -> Rows:
    """``view`` (metering_hourly or metering_daily) keyed like :func:`usage`."""
    window = "hour" if view == "metering_hourly" else "date"
    connection = open_catalog(str(data_root), role="billing")
    try:
        table = connection.sql(
            f"SELECT account_id, {window} AS window, {', '.join(METRICS)} FROM {view}"
        ).to_arrow_table()
    finally:
        connection.close()
    rows: Rows = {}
    for row in table.to_pylist():
        start = row.pop("window")
        if isinstance(start, datetime):
            start = start.astimezone(UTC)
        else:
            assert isinstance(start, date)
            start = datetime(start.year, start.month, start.day, tzinfo=UTC)
        rows[(row.pop("account_id"), start)] = row
    return rows


def hourly(data_root: Path) -> Rows:
    return _metering(data_root, "metering_hourly")


def daily(data_root: Path) -> Rows:
    return _metering(data_root, "metering_daily")


def hourly_corrections(data_root: Path) -> Rows:
    """The hourly correction rows (deltas), summed per window."""
    connection = open_catalog(str(data_root), role="billing")
    try:
        table = connection.sql(
            f"SELECT account_id, hour, {', '.join(METRICS)} FROM metering_corrections"
            " WHERE grain = 'hour'"
        ).to_arrow_table()
    finally:
        connection.close()
    rows: Rows = {}
    for row in table.to_pylist():
        key = (row.pop("account_id"), row.pop("hour").astimezone(UTC))
        assert key not in rows, f"two hourly corrections for {key} in two runs"
        rows[key] = row
    return rows


def assert_rows_equal(actual: Rows, expected: Rows) -> None:
    """Equal on every row; on failure, say which windows differ rather than dump both."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    differing = sorted(
        (key, {m: (actual[key][m], expected[key][m]) for m in METRICS
               if actual[key][m] != expected[key][m]})
        for key in set(actual) & set(expected)
        if actual[key] != expected[key]
    )  # fmt: skip
    assert (missing, extra, differing[:10]) == ([], [], []), (
        f"{len(missing)} windows missing, {len(extra)} unexpected, {len(differing)} differ"
    )


def last_closed_hour(report: PublishReport) -> datetime:
    """From the report's watermark: hours up to this start are closed (the contract)."""
    assert report.watermark is not None
    return report.watermark - GRACE - HOUR


def last_closed_day(report: PublishReport) -> datetime:
    assert report.watermark is not None
    return (report.watermark - GRACE - timedelta(days=1)).replace(hour=0)


# --- the run ---------------------------------------------------------------------------------


@dataclass
class MeteringRun:
    setup: WorkerSetup
    records: list[GeneratedRecord]
    split: int  # records[:split] were drained and published first
    first: PublishReport
    first_hourly: Rows  # metering_hourly right after the first publish
    final: PublishReport
    one_step_root: Path
    one_step: PublishReport

    @property
    def events(self) -> list[Event]:
        return valid_events(self.records)


def _send(bootstrap_servers: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    sink = TopicSink(bootstrap_servers, topic, client_id="test-metering-truth")
    for key, value in records:
        sink.send(key, value)
    sink.close()  # waits for every acknowledgement


def _drain(setup: WorkerSetup, worker: WorkerProcess, records: int) -> None:
    wait_until(
        lambda: setup.committed_raw() >= records,
        timeout=300,
        what=f"{records} raw records committed",
        workers=[worker],
    )


@pytest.fixture(scope="module")
def metering_run(
    kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MeteringRun]:
    suffix = uuid.uuid4().hex[:8]
    raw, dead = f"test.metering.raw.{suffix}", f"test.metering.dead.{suffix}"
    create_topics(kafka.bootstrap_servers, [TopicSpec(raw, 3, {}), TopicSpec(dead, 1, {})])
    root = tmp_path_factory.mktemp("metering")
    setup = WorkerSetup(kafka.bootstrap_servers, raw, dead, root, f"g-{suffix}")
    records = list(TrafficModel(traffic_config(COUNT, seed=SEED)))
    split = len(records) // 2
    first_half = records[:split]

    worker = WorkerProcess(setup, "worker").start()
    try:
        _send(kafka.bootstrap_servers, raw, [(r.key, r.value) for r in first_half])
        _drain(setup, worker, split)
        # Published "live": `now` is the stream's position at that point, mid-period.
        position = max(event.occurred_at for event in valid_events(first_half))
        first = publish(str(setup.data_root), now=position, grace=GRACE, privacy=DEFAULT_PRIVACY)
        first_hourly = hourly(setup.data_root)

        rest = [(r.key, r.value) for r in records[split:]]
        _send(kafka.bootstrap_servers, raw, [*rest, (TICK.account_id.encode(), encode(TICK))])
        _drain(setup, worker, len(records) + 1)
    finally:
        worker.stop()
    final = publish(str(setup.data_root), now=END_NOW, grace=GRACE, privacy=DEFAULT_PRIVACY)

    # The same committed facts published in one step, in a data root of their own.
    one_step_root = root / "one-step"
    for part in ("facts", "_commits"):
        shutil.copytree(setup.data_root / part, one_step_root / part)
    one_step = publish(str(one_step_root), now=END_NOW, grace=GRACE, privacy=DEFAULT_PRIVACY)
    yield MeteringRun(setup, records, split, first, first_hourly, final, one_step_root, one_step)


# --- the tests -------------------------------------------------------------------------------


def test_the_truth_covers_every_published_metric() -> None:
    # A meter added to the packaged meters must be added to the truth above, not skipped.
    assert tuple(meter.name for meter in default_meters()) == METRICS


def test_the_run_has_duplicates_and_late_events_and_drops_only_duplicates(
    metering_run: MeteringRun,
) -> None:
    records = metering_run.records
    duplicates = sum(r.kind == "duplicate" for r in records)
    malformed = sum(r.kind == "malformed" for r in records)
    late = len(late_events(records))
    assert duplicates > 0 and late > 0 and malformed > 0
    totals = metering_run.setup.totals()
    assert totals["raw"] == len(records) + 1
    assert totals["duplicates"] == duplicates
    assert totals["accepted"] == len(metering_run.events) + 1  # + the tick
    assert totals["dead_lettered"] == malformed


def test_metering_hourly_equals_the_truth_on_every_row(metering_run: MeteringRun) -> None:
    truth = usage(metering_run.events, "hour")
    last = last_closed_hour(metering_run.final)
    # The tick closed every hour of the period, and only the tick's own hour is still open.
    assert max(hour for _, hour in truth) <= last < TICK.occurred_at
    actual = hourly(metering_run.setup.data_root)
    assert len(actual) > 500  # dozens of accounts over 72 hours: not a trivial comparison
    assert_rows_equal(actual, truth)
    assert_rows_equal(hourly(metering_run.one_step_root), truth)


def test_metering_daily_equals_the_truth_on_every_row(metering_run: MeteringRun) -> None:
    # Distinct users per day are not the sum of the hours' (one person, several hours).
    truth = usage(metering_run.events, "day")
    assert max(day for _, day in truth) <= last_closed_day(metering_run.final)
    assert_rows_equal(daily(metering_run.setup.data_root), truth)
    assert_rows_equal(daily(metering_run.one_step_root), truth)


def test_the_first_publish_equals_the_truth_of_the_first_half(metering_run: MeteringRun) -> None:
    first_truth = usage(valid_events(metering_run.records[: metering_run.split]), "hour")
    last = last_closed_hour(metering_run.first)
    assert min(hour for _, hour in first_truth) < last  # a real mid-period publish
    assert max(hour for _, hour in first_truth) > last  # ... with open windows left out
    assert_rows_equal(metering_run.first_hourly, closed(first_truth, last))


def test_late_events_became_corrections_of_exactly_the_changed_windows(
    metering_run: MeteringRun,
) -> None:
    first_truth = usage(valid_events(metering_run.records[: metering_run.split]), "hour")
    published_first = closed(first_truth, last_closed_hour(metering_run.first))
    final = usage(metering_run.events, "hour")
    expected = {
        key: {m: final[key][m] - row[m] for m in METRICS}
        for key, row in published_first.items()
        if final[key] != row
    }
    assert expected, "no late event of the second half fell into a published window"
    assert metering_run.final.hourly_corrections == len(expected)
    assert_rows_equal(hourly_corrections(metering_run.setup.data_root), expected)
    # Only late events can reach a closed window: in-order events never go back in time.
    second_half = metering_run.records[metering_run.split :]
    late_windows = {(e.account_id, hour_start(e.occurred_at)) for e in late_events(second_half)}
    assert set(expected) <= late_windows
    # The one-step history has the same totals and no corrections at all.
    assert metering_run.one_step.hourly_corrections == 0
    assert hourly_corrections(metering_run.one_step_root) == {}


def test_a_second_publish_with_nothing_new_writes_nothing(metering_run: MeteringRun) -> None:
    again = publish(
        str(metering_run.one_step_root), now=END_NOW, grace=GRACE, privacy=DEFAULT_PRIVACY
    )
    assert again.run_id is None and again.rows_written == 0
