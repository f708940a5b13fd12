"""EventProducer against the real broker, read back by two independent clients."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from schemas.events import MAX_EVENT_BYTES, Event, Login, PageView, Request, encode
from streams.errors import InvalidEventError
from streams.generate.sinks import TopicSink
from streams.producer import EventProducer
from streams.replay import BACKFILL_HEADERS
from tests.fixtures.kafka import KafkaBroker, TopicFactory

pytestmark = pytest.mark.integration

READ_TIMEOUT_S = 30.0
ACCOUNTS = [f"acct-{n}" for n in range(5)]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

Record = tuple[bytes | None, bytes]


def _events(per_account: int) -> list[Event]:
    """Accounts interleaved, so per-account order is not just send order by chance."""
    events: list[Event] = []
    for n in range(per_account):
        for account in ACCOUNTS:
            event_id, at = f"{account}-{n}", T0 + timedelta(seconds=n)
            event: Event
            if n % 3 == 0:
                event = Login(
                    schema_version=1, event_id=event_id, occurred_at=at, account_id=account,
                    user_id="u1",
                )  # fmt: skip
            elif n % 3 == 1:
                event = PageView(
                    schema_version=1, event_id=event_id, occurred_at=at, account_id=account,
                    path=f"/docs/{n}", ip="2001:db8::1",
                )  # fmt: skip
            else:
                event = Request(
                    schema_version=1, event_id=event_id, occurred_at=at, account_id=account,
                    path="/api/items", status=201, response_bytes=n,
                )  # fmt: skip
            events.append(event)
    return events


def _read_with_group(bootstrap: str, topic: str, count: int, group: str) -> list[Record]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    records: list[Record] = []
    try:
        deadline = time.monotonic() + READ_TIMEOUT_S
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend((r.key, r.value) for r in batch)
        consumer.commit()
    finally:
        consumer.close()
    return records


async def _read_with_aiokafka(bootstrap: str, topic: str, count: int) -> list[Record]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Record] = []
    try:
        deadline = time.monotonic() + READ_TIMEOUT_S
        while len(records) < count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend((r.key, r.value) for r in batch)
    finally:
        await consumer.stop()
    return records


def _by_account(records: list[Record]) -> dict[bytes | None, list[bytes]]:
    grouped: dict[bytes | None, list[bytes]] = defaultdict(list)
    for key, value in records:
        grouped[key].append(value)
    return dict(grouped)


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def test_events_round_trip_byte_for_byte_in_account_order(
    kafka: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(3)
    events = _events(per_account=40)
    with EventProducer(kafka.bootstrap_servers, topic, client_id="roundtrip") as producer:
        futures = [producer.send(event) for event in events]
        producer.flush(timeout=30)
    metadata = [future.get(timeout=10) for future in futures]

    sent: list[Record] = [(e.account_id.encode("utf-8"), encode(e)) for e in events]
    expected = _by_account(sent)
    # Keyed by account: each account's events all went to one partition...
    partitions_of: dict[str, set[int]] = defaultdict(set)
    for event, meta in zip(events, metadata, strict=True):
        partitions_of[event.account_id].add(meta.partition)
    assert all(len(parts) == 1 for parts in partitions_of.values())

    group = f"test-group-{uuid.uuid4().hex[:8]}"
    in_group = _read_with_group(kafka.bootstrap_servers, topic, len(sent), group)
    with_aiokafka = asyncio.run(_read_with_aiokafka(kafka.bootstrap_servers, topic, len(sent)))

    # ...and both clients read exactly what was sent, each account in send order.
    for records in (in_group, with_aiokafka):
        assert len(records) == len(sent)
        assert _by_account(records) == expected

    # The group really consumed as a group: its committed offsets are the end offsets.
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        committed = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    assert {tp.partition: meta.offset for tp, meta in committed.items()} == _end_offsets(
        kafka.bootstrap_servers, topic
    )


def _valid_event(event_id: str) -> PageView:
    return PageView(
        schema_version=1, event_id=event_id, occurred_at=T0, account_id="acct-x", path="/"
    )


@pytest.mark.parametrize(
    ("invalid", "where"),
    [
        pytest.param(
            PageView(
                schema_version=1,
                event_id="big",
                occurred_at=T0,
                account_id="acct-x",
                path="/",
                referrer="r" * MAX_EVENT_BYTES,
            ),
            "$",  # the size check comes first: "the event is ... bytes; the limit is ..."
            id="oversized",
        ),
        pytest.param(
            PageView(schema_version=1, event_id="", occurred_at=T0, account_id="a", path="/"),
            "$.event_id",
            id="empty-event-id",
        ),
        pytest.param(
            PageView(
                schema_version=1,
                event_id="naive",
                occurred_at=datetime(2024, 5, 1, 12, 0),  # noqa: DTZ001 - the point of the test
                account_id="acct-x",
                path="/",
            ),
            "$.occurred_at",
            id="naive-time",
        ),
        pytest.param(
            PageView(
                schema_version=1,
                event_id="ip",
                occurred_at=T0,
                account_id="acct-x",
                path="/",
                ip="300.1.1.1",
            ),
            "$.ip",
            id="bad-ip",
        ),
    ],
)
def test_invalid_event_raises_and_sends_nothing(
    kafka: KafkaBroker, topic_factory: TopicFactory, invalid: Event, where: str
) -> None:
    topic = topic_factory(1)
    with EventProducer(kafka.bootstrap_servers, topic) as producer:
        with pytest.raises(InvalidEventError) as caught:
            producer.send(invalid)
        assert {path for path, _ in caught.value.problems} == {where}
        producer.flush(timeout=30)
        assert _end_offsets(kafka.bootstrap_servers, topic) == {0: 0}

        # The producer is still usable, and the next record is the only one on the topic.
        producer.send(_valid_event("after")).get(timeout=30)
    assert _end_offsets(kafka.bootstrap_servers, topic) == {0: 1}


def test_send_raw_delivers_bytes_timestamp_and_headers_as_given(
    kafka: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(1)
    malformed = b'{"type": "page_view", "schema_version": 1, "event_id": '  # cut short
    timestamp_ms = 1_714_564_800_123
    with EventProducer(kafka.bootstrap_servers, topic) as producer:
        producer.send_raw(None, malformed, timestamp_ms=timestamp_ms).get(timeout=30)
        producer.send_raw(b"acct-raw", b"\xff\xfe not utf-8").get(timeout=30)
    # What sieve replay sends: the sink passes each record's backfill header on.
    sink = TopicSink(kafka.bootstrap_servers, topic, "roundtrip-sink")
    sink.send(b"acct-old", b"{}", BACKFILL_HEADERS)
    sink.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    received: list[Any] = []  # kafka-python's ConsumerRecord (untyped)
    try:
        deadline = time.monotonic() + READ_TIMEOUT_S
        while len(received) < 3 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                received.extend(batch)
    finally:
        consumer.close()
    assert [(r.key, r.value) for r in received] == [
        (None, malformed),
        (b"acct-raw", b"\xff\xfe not utf-8"),
        (b"acct-old", b"{}"),
    ]
    assert received[0].timestamp == timestamp_ms
    assert [list(r.headers) for r in received] == [[], [], [("sieve.backfill", b"1")]]
