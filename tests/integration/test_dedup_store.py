"""Dedup on the real broker: arrival decides, and the store survives a SIGKILL mid-write.

1. Events whose event time is 1 to 5 days older than their partition's newest event are
   resent 1 to 3 s later (a producer's retry) and 25 s later, with the horizon shrunk to
   20 s (``SIEVE_DEDUP_HORIZON=PT20S``) so that real time drives arrival. The expected
   decisions come from the broker's own timestamps (the raw topic uses LogAppendTime), read
   back with a separate consumer and put through the rule as the docs state it; metering
   must equal the usage of exactly the events the rule accepts, per account and hour.
2. A worker is SIGKILLed inside a write of its dedup store; a restarted worker writes
   every event once.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import msgspec
from kafka import KafkaConsumer, TopicPartition

from aggregations.publish import publish
from schemas.events import Event, Request, Upload, encode
from streams.generate.sinks import TopicSink
from streams.topics import TopicSpec, create_topics, raw_topic_spec
from tests.fixtures.facts import DEFAULT_PRIVACY
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.metering_truth import (
    assert_rows_equal,
    closed,
    hourly,
    last_closed_hour,
    usage,
)
from tests.fixtures.worker_harness import (
    WorkerProcess,
    WorkerSetup,
    assert_exactly_once,
    drained,
    prepared,
    wait_until,
)

HORIZON_S: Final = 20
SOON_S: Final = 2.0  # a producer's retry: well inside the horizon
LATE_S: Final = 25.0  # past the horizon: accepted again, as the docs say
NEWEST: Final = datetime(2026, 11, 20, 12, tzinfo=UTC)
ACCOUNTS: Final = [f"acct-{i}" for i in range(8)]


def _event(account: str, days_late: float, number: int) -> Event:
    occurred = NEWEST - timedelta(days=days_late)
    common = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "occurred_at": occurred,
        "account_id": account,
        "user_id": f"user-{number % 5}",
        "ip": "192.0.2.33",
    }
    if number % 3 == 0:
        return Upload(**common, bytes=1_000 + number)  # type: ignore[arg-type]
    return Request(**common, path="/late", response_bytes=number)  # type: ignore[arg-type]


def _send(bootstrap_servers: str, topic: str, events: list[Event]) -> None:
    sink = TopicSink(bootstrap_servers, topic, client_id="test-dedup-arrival")
    for event in events:
        sink.send(event.account_id.encode(), encode(event))
    sink.close()  # every record acknowledged: the broker has stamped its arrival


def _read_back(
    bootstrap_servers: str, topic: str, sent: dict[str, Event], count: int
) -> list[tuple[int, int, str, Event]]:
    """(partition, broker timestamp ms, event id, event) of every raw record, in log order."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(partitions)
    records = []
    deadline = time.monotonic() + 60
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            for record in batch:
                assert record.timestamp_type == 1, "the raw topic must stamp LogAppendTime"
                event_id = msgspec.json.decode(record.value)["event_id"]
                records.append((record.partition, record.offset, record.timestamp, event_id))
    consumer.close()
    assert len(records) == count
    records.sort(key=lambda r: (r[0], r[1]))
    return [(p, ts, e, sent[e]) for p, _, ts, e in records]


def _rule(records: list[tuple[int, int, str, Event]], horizon_ms: int) -> list[bool]:
    """The docs' rule, per partition in log order: accepted unless the same event id was
    accepted within the horizon before, arrival being the running max of timestamps."""
    accepted: dict[tuple[int, str], int] = {}
    clocks: dict[int, int] = {}
    out = []
    for partition, timestamp, event_id, _ in records:
        clock = clocks[partition] = max(clocks.get(partition, -1), timestamp)
        previous = accepted.get((partition, event_id))
        if previous is not None and previous >= clock - horizon_ms:
            out.append(False)
        else:
            accepted[(partition, event_id)] = clock
            out.append(True)
    return out


def test_resends_within_the_arrival_horizon_are_caught_whatever_the_event_time(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    raw, dead = f"test.dedup.raw.{suffix}", f"test.dedup.dead.{suffix}"
    create_topics(kafka.bootstrap_servers, [raw_topic_spec(raw, 3, 24), TopicSpec(dead, 1, {})])
    setup = WorkerSetup(kafka.bootstrap_servers, raw, dead, tmp_path, f"g-{suffix}")
    setup.extra_env.update(SIEVE_DEDUP_HORIZON=f"PT{HORIZON_S}S")

    newest = [_event(account, 0, 0) for account in ACCOUNTS]
    late = [_event(a, 1 + (n % 9) / 2, n) for a in ACCOUNTS for n in range(1, 31)]  # 1-5 days
    soon = late[0::3] + late[2::3]  # resent a retry later ...
    again = late[1::3] + late[2::3]  # ... and past the horizon (late[2::3] both times)
    started = time.monotonic()
    _send(kafka.bootstrap_servers, raw, newest + late)
    # Real time drives arrival here: the broker stamps each record as it comes.
    time.sleep(SOON_S)
    _send(kafka.bootstrap_servers, raw, soon)
    time.sleep(max(0.0, started + LATE_S - time.monotonic()))
    _send(kafka.bootstrap_servers, raw, again)
    total = len(newest) + len(late) + len(soon) + len(again)

    sent = {event.event_id: event for event in newest + late}
    records = _read_back(kafka.bootstrap_servers, raw, sent, total)
    expected = _rule(records, HORIZON_S * 1000)
    first_arrival = {}
    for partition, timestamp, event_id, _ in records:
        first_arrival.setdefault((partition, event_id), timestamp)
    gaps = {
        (p, e): ts - first_arrival[(p, e)]
        for (p, ts, e, _), ok in zip(records, expected, strict=True)
        if not ok
    }
    # The scenario as intended: every retry 1-3 s after its original is a duplicate, and
    # every resend 25 s after it is not (whatever the late event's age).
    soon_ids, again_ids = {e.event_id for e in soon}, {e.event_id for e in again}
    caught = Counter(e for (_, e), gap in gaps.items())
    assert set(caught) == soon_ids
    assert all(1_000 <= gap <= HORIZON_S * 1000 for gap in gaps.values())
    repeats = [(e.event_id, ok) for (_, _, _, e), ok in zip(records, expected, strict=True)]
    assert sum(ok for eid, ok in repeats if eid in again_ids) == 2 * len(again_ids)
    late_ids = {event.event_id for event in late}
    partitions_with_late = {p for p, _, e, _ in records if e in late_ids}
    assert len(partitions_with_late) >= 2

    worker = WorkerProcess(setup, "worker").start()
    try:
        wait_until(drained(setup, total), 180, f"{total} records committed", workers=[worker])
    finally:
        worker.stop()
    totals = setup.totals()
    assert totals["raw"] == total
    assert totals["accepted"] == sum(expected) == len(newest) + len(late) + len(again)
    assert totals["duplicates"] == total - sum(expected) == len(soon)
    assert totals["dead_lettered"] == 0

    # Metering equals the usage of exactly what the rule accepts (an event resent past the
    # horizon is counted twice: the docs say that is not caught).
    accepted_events = [event for (_, _, _, event), ok in zip(records, expected, strict=True) if ok]
    report = publish(
        str(setup.data_root),
        now=NEWEST + timedelta(days=1),
        grace=timedelta(hours=1),
        privacy=DEFAULT_PRIVACY,
    )
    truth = closed(usage(accepted_events, "hour"), last_closed_hour(report))
    assert len(truth) > 50
    assert_rows_equal(closed(hourly(setup.data_root), last_closed_hour(report)), truth)


def test_a_worker_killed_inside_a_dedup_store_write_loses_and_repeats_nothing(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    count = 30_000
    setup, truth = prepared(kafka, tmp_path, count, partitions=2, seed=21)
    setup.extra_env.update(SIEVE_BATCH_MAX_RECORDS="2000", SIEVE_ROLL_MAX_RECORDS="5000")
    crashing = WorkerProcess(
        setup, "crashing", command=[sys.executable, "-m", "tests.fixtures.crashing_worker"]
    )
    crashing.setup.extra_env["SIEVE_TEST_KILL_IN_STORE_WRITE"] = "3"
    crashing.start()
    assert crashing.process is not None
    crashing.process.wait(timeout=180)
    assert crashing.process.returncode == -9, crashing.log_tail()
    del setup.extra_env["SIEVE_TEST_KILL_IN_STORE_WRITE"]
    committed_before = setup.totals()["ranges"]
    assert committed_before >= 3, "the kill came before the third range was committed"

    worker = WorkerProcess(setup, "worker").start()
    try:
        wait_until(drained(setup, count), 300, f"{count} records committed", workers=[worker])
    finally:
        worker.stop()
    assert_exactly_once(setup, Counter(truth.by_kind), count)
    # The restarted worker found its stores behind the markers and brought them up.
    log = worker.log_path.read_text(errors="replace")
    assert "state caught up" in log or "state rebuilt" in log, worker.log_tail()
