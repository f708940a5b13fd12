"""The partition pipeline decides duplicates on arrival, not event time (issues 9 and 14).

Real events through the real pipeline: resends of events days late in event time are caught
when they arrive within the horizon, a future-dated event cannot switch dedup off, consent
comes back from the store after a restart, and a topic stamped with producers' clocks is
processed with one warning.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from schemas.commits import CommitMarker
from schemas.events import ConsentChange, Event, Request, encode
from streams.encryption import ParquetEncryption
from streams.privacy.keyring import Keyring
from streams.storage import open_data_root
from streams.worker.pipeline import PartitionPipeline, PendingRange, PipelineContext, RawRecord
from streams.worker.sink import RangeWriter, recover_partition
from streams.worker.state.folder import StateFolder
from tests.fixtures.pipeline_context import default_context

TOPIC = "raw"
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
SECOND = 1_000
HOUR_MS = 3_600 * SECOND


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture
def context(keyring: Keyring) -> PipelineContext:
    return default_context(keyring)


def request(occurred_at: datetime, user: str = "u1", event_id: str | None = None) -> Request:
    return Request(
        schema_version=1,
        event_id=event_id or str(uuid.uuid4()),
        occurred_at=occurred_at,
        account_id="acct-1",
        user_id=user,
        ip="192.0.2.7",
        path="/",
    )


def records(sent: list[tuple[Event, int]], start: int = 0, kind: int = 1) -> list[RawRecord]:
    """Raw records of (event, arrival ms), at consecutive offsets from ``start``."""
    made = [RawRecord(start + i, arrival, encode(e)) for i, (e, arrival) in enumerate(sent)]
    return made if kind == 1 else [dataclasses.replace(r, timestamp_type=kind) for r in made]


def run(pipeline: PartitionPipeline, batch: list[RawRecord]) -> PendingRange:
    pipeline.process(batch)
    pending = pipeline.take_range()
    assert pending is not None
    return pending


def test_resends_of_events_days_late_are_caught_when_they_arrive_within_the_horizon(
    context: PipelineContext,
) -> None:
    pipeline = PartitionPipeline(TOPIC, 0, context)
    newest = request(NOW)
    late = [request(NOW - timedelta(days=days)) for days in (1, 2, 3, 5)]
    sent = [(newest, NOW_MS), *[(e, NOW_MS + SECOND) for e in late]]
    # Each late event is resent a few seconds later (a producer retry) ...
    sent += [(e, NOW_MS + (3 + i) * SECOND) for i, e in enumerate(late)]
    # ... and once more 25 hours later, past the horizon: accepted, as the docs say.
    sent += [(e, NOW_MS + 25 * HOUR_MS) for e in late]
    counts = run(pipeline, records(sent)).counts
    assert (counts.accepted, counts.duplicates) == (1 + 4 + 4, 4)


def test_one_future_dated_event_does_not_switch_dedup_off(context: PipelineContext) -> None:
    # Issue 14, item 4: after one event dated 9999-12-31 the event-time watermark stood so far
    # ahead that every later resend passed.
    pipeline = PartitionPipeline(TOPIC, 0, context)
    future = request(datetime(9999, 12, 31, 23, tzinfo=UTC))
    events = [request(NOW - timedelta(minutes=m)) for m in (1, 2, 3)]
    sent = [(future, NOW_MS), *[(e, NOW_MS + SECOND) for e in events]]
    sent += [(e, NOW_MS + 2 * SECOND) for e in events]
    counts = run(pipeline, records(sent)).counts
    assert counts.duplicates == 3
    # Accepted, or refused up front by the contract's time bounds: either way not a gate.
    assert counts.accepted + sum(counts.dead_lettered.values()) == 4


def test_arrival_never_goes_back_when_the_broker_clock_steps_back(
    context: PipelineContext,
) -> None:
    pipeline = PartitionPipeline(TOPIC, 0, context)
    event = request(NOW)
    jump = NOW_MS + 30 * HOUR_MS
    # Once the clock read 30 h later, the event's first arrival is past the horizon: a clock
    # stepping back to an hour after it must not make it look recent again.
    sent = [(event, NOW_MS), (request(NOW), jump), (event, NOW_MS + HOUR_MS)]
    counts = run(pipeline, records(sent)).counts
    assert (counts.accepted, counts.duplicates) == (3, 0)


def test_an_opt_out_comes_back_from_the_store_after_a_restart(
    tmp_path: Path, context: PipelineContext, keyring: Keyring
) -> None:
    opened = open_data_root(str(tmp_path), create=True)
    filesystem, root = opened.fs, opened.path
    writer = RangeWriter(filesystem, root, ParquetEncryption(*keyring.encryption_keys()), "t")
    first = PartitionPipeline(TOPIC, 0, context)
    first.restore(filesystem, root, [])
    opt_out = ConsentChange(
        schema_version=1,
        event_id=str(uuid.uuid4()),
        occurred_at=NOW,
        account_id="acct-1",
        user_id="u1",
        choice="opt_out",
    )
    pending = run(first, records([(opt_out, NOW_MS), (request(NOW, "u2"), NOW_MS)]))
    first.range_committed(pending, writer.commit_range(TOPIC, 0, pending))
    first.close()

    markers = recover_partition(filesystem, root, TOPIC, 0).markers
    assert markers[0].consent_changes
    # The store holds the opt-out: recovery must not need the markers' history of changes.
    markers = [msgspec.structs.replace(m, consent_changes=[]) for m in markers]
    again = PartitionPipeline(TOPIC, 0, context)
    again.restore(filesystem, root, markers)
    later = [(request(NOW, "u1"), NOW_MS + SECOND), (request(NOW, "u2"), NOW_MS + SECOND)]
    pending = run(again, records(later, start=2))
    kept = set(pending.tables["identifiable"]["event_id"].to_pylist())
    assert kept == {later[1][0].event_id}, "u1 opted out; u2 did not"
    assert pending.tables["facts"].num_rows == 2


def test_producer_timestamps_are_used_with_one_warning_per_worker(
    context: PipelineContext, caplog: pytest.LogCaptureFixture
) -> None:
    event = request(NOW)
    with caplog.at_level(logging.WARNING, logger="streams.worker.pipeline"):
        for partition in (0, 1):
            pipeline = PartitionPipeline(TOPIC, partition, context)
            sent = [(event, NOW_MS), (event, NOW_MS + SECOND)]
            counts = run(pipeline, records(sent, kind=0)).counts
            assert (counts.accepted, counts.duplicates) == (1, 1)
    warnings = [r for r in caplog.records if "CreateTime" in r.getMessage()]
    assert len(warnings) == 1
    assert "LogAppendTime" in warnings[0].getMessage()


def test_dedup_logs_past_the_horizon_are_deleted_and_never_missed(
    tmp_path: Path,
    context: PipelineContext,
    keyring: Keyring,
    caplog: pytest.LogCaptureFixture,
) -> None:
    short = dataclasses.replace(context, dedup_horizon_seconds=1)
    opened = open_data_root(str(tmp_path), create=True)
    filesystem, root = opened.fs, opened.path
    writer = RangeWriter(filesystem, root, ParquetEncryption(*keyring.encryption_keys()), "t")
    events = [request(NOW) for _ in range(3)]

    def commit(pipeline: PartitionPipeline, offset: int, arrival_ms: int) -> None:
        pending = run(pipeline, records([(events[offset], NOW_MS + arrival_ms)], start=offset))
        pipeline.range_committed(pending, writer.commit_range(TOPIC, 0, pending))

    def markers() -> list[CommitMarker]:
        return recover_partition(filesystem, root, TOPIC, 0).markers

    first = PartitionPipeline(TOPIC, 0, short)  # its store (state folder) is kept
    first.restore(filesystem, root, [])
    commit(first, 0, 0)
    first.close()
    # Another worker, with a state folder of its own, commits two more ranges; the third
    # arrives 5 s in, past the 1 s horizon of both earlier ones: their logs go.
    other = PartitionPipeline(TOPIC, 0, dataclasses.replace(short, state=StateFolder()))
    other.restore(filesystem, root, markers())
    commit(other, 1, 1_500)
    commit(other, 2, 5_000)
    logs = sorted(path.name for path in (tmp_path / "_dedup").rglob("*.parquet"))
    assert logs == [f"{TOPIC}+0+2-2.parquet"]
    # The first store is behind and the log it would catch up from is gone: it is rebuilt,
    # and a resend of the newest event within the horizon is still caught.
    again = PartitionPipeline(TOPIC, 0, short)
    with caplog.at_level(logging.INFO, logger="streams.worker.pipeline"):
        again.restore(filesystem, root, markers())
    assert any("state rebuilt" in record.getMessage() for record in caplog.records)
    resent = [(events[2], NOW_MS + 5_500), (events[0], NOW_MS + 5_500)]
    counts = run(again, records(resent, start=3)).counts
    assert (counts.accepted, counts.duplicates) == (1, 1)
