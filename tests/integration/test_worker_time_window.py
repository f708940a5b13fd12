"""The worker holds every event to the arrival window of the contract (issue 14, item 4).

Arrival is the Kafka record timestamp. An event more than a day ahead of its arrival, or
further behind than the live window, becomes a dead letter with its own reason, so one
future-dated event cannot reach the facts (nor move anything keyed on event time); a record
marked as a backfill (``sieve.backfill: 1``, what ``sieve replay`` sends) gets the wider
backfill window. Defaults as shipped: the harness's wide live window is removed here.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas.events import BACKFILL_HEADER, PageView, encode
from streams.producer import EventProducer
from streams.topics import TopicSpec, create_topics
from streams.worker.commands import committed_totals
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.worker_harness import WorkerProcess, WorkerSetup, wait_until


def _event(occurred_at: datetime) -> bytes:
    return encode(
        PageView(
            schema_version=1,
            event_id=str(uuid.uuid4()),
            occurred_at=occurred_at,
            account_id="acct-window",
            user_id="u1",
            path="/",
        )
    )


def test_events_outside_the_arrival_window_are_dead_lettered(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    raw, dead = f"test.window.raw.{suffix}", f"test.window.dead.{suffix}"
    create_topics(kafka.bootstrap_servers, [TopicSpec(raw, 1, {}), TopicSpec(dead, 1, {})])
    setup = WorkerSetup(kafka.bootstrap_servers, raw, dead, tmp_path, f"g-{suffix}")
    setup.extra_env["SIEVE_EVENT_MAX_BEHIND"] = "P400D"  # the shipped default, spelled out
    now = datetime.now(UTC)
    backfill = [(BACKFILL_HEADER, b"1")]
    sends = [
        (_event(now - timedelta(minutes=5)), None),  # live and recent: accepted
        (_event(now - timedelta(days=30)), None),  # a phone offline for a month: accepted
        (_event(now + timedelta(days=3)), None),  # from the future: too_far_ahead
        (_event(datetime(9999, 12, 31, 23, tzinfo=UTC)), None),  # too_far_ahead
        (_event(now - timedelta(days=800)), None),  # live but ancient: too_far_behind
        (_event(now - timedelta(days=800)), backfill),  # a replayed old log: accepted
        (_event(now + timedelta(days=3)), backfill),  # a backfill is never ahead either
    ]
    with EventProducer(kafka.bootstrap_servers, raw) as producer:
        for value, headers in sends:
            producer.send_raw(b"acct-window", value, headers=headers)
        producer.flush(30)
    worker = WorkerProcess(setup, "worker").start()
    try:
        wait_until(
            lambda: setup.committed_raw() >= len(sends),
            timeout=120,
            what="every record committed",
            workers=[worker],
        )
    finally:
        worker.stop()
    counts, dead_by_code, _identifiable, _ranges = committed_totals(str(setup.data_root), raw)
    assert counts["raw"] == len(sends)
    assert counts["accepted"] == 3
    assert dict(dead_by_code) == {"too_far_ahead": 3, "too_far_behind": 1}
    assert setup.fact_rows().count("*").fetchall() == [(3,)]
