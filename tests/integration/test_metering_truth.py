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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pytest

from aggregations.meters import default_meters
from aggregations.publish import PublishReport, publish
from schemas.events import Event, Request, encode
from streams.generate.model import TrafficModel
from streams.generate.records import GeneratedRecord
from streams.generate.sinks import TopicSink
from streams.topics import TopicSpec, create_topics
from tests.fixtures.facts import DEFAULT_PRIVACY
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.metering_truth import (
    GRACE,
    METRICS,
    Rows,
    assert_rows_equal,
    closed,
    daily,
    hour_start,
    hourly,
    hourly_corrections,
    last_closed_day,
    last_closed_hour,
    late_events,
    usage,
    valid_events,
)
from tests.fixtures.pipeline_truth import traffic_config
from tests.fixtures.worker_harness import WorkerProcess, WorkerSetup, wait_until

COUNT: Final = 20_000
SEED: Final = 11
# A day after the generated period (which ends 2026-11-01): no wall-clock cap applies.
END_NOW: Final = datetime(2026, 11, 2, tzinfo=UTC)
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
