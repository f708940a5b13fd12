"""Erasure against the real broker: the person's dead letters end as tombstones."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.privacy.retention import load_policy
from streams.subject.access import DeadLetterTopic, export_subject
from streams.subject.erasure import erase_subject
from streams.topics import dead_letter_topic_spec
from tests.fixtures.identifiable import new_encryption, record, stored_ids, write_identifiable
from tests.fixtures.kafka import KafkaBroker, TopicFactory

pytestmark = pytest.mark.integration

FS = pafs.LocalFileSystem()
POLICY = load_policy()
READ_TIMEOUT_S = 30.0


def _event(account: str, user: str, offset: int) -> bytes:
    # Rejected for its IP address: what a real dead letter of a person looks like.
    return json.dumps(
        {
            "schema_version": 1,
            "type": "login",
            "event_id": f"e-{offset}",
            "account_id": account,
            "user_id": user,
            "occurred_at": "2024-03-20T08:00:00Z",
            "ip": "999.1.1.1",
        }
    ).encode()


# key -> (partition, value); keys as the worker makes them: <topic>+<partition>+<offset>.
LETTERS: dict[bytes, tuple[int, bytes]] = {
    b"sieve.raw+0+1": (0, _event("acct-1", "user-1", 1)),
    b"sieve.raw+1+2": (1, b'{"account_id":"acct-1","user_id":"user-1","occurred_at":'),  # cut
    b"sieve.raw+0+3": (0, _event("acct-1", "user-2", 3)),  # a colleague
    b"sieve.raw+1+4": (1, _event("acct-10", "user-1", 4)),  # a namesake in another account
    b"sieve.raw+1+5": (1, b"\xff\xfe not JSON at all"),
}
AFFECTED = {b"sieve.raw+0+1", b"sieve.raw+1+2"}


def _produce(bootstrap: str, topic: str) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for key, (partition, value) in LETTERS.items():
            headers = [("sieve.error.code", b"invalid_ip"), ("sieve.source.topic", b"sieve.raw")]
            producer.send(topic, key=key, value=value, partition=partition, headers=headers)
        # A replay after a crash re-sends one letter under the same key.
        producer.send(topic, key=b"sieve.raw+0+1", value=LETTERS[b"sieve.raw+0+1"][1], partition=0)
        producer.flush(timeout=READ_TIMEOUT_S)
    finally:
        producer.close()


def _latest_by_key(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """Every record of the topic in order; the latest value of each key (None: tombstone)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        latest: dict[bytes, bytes | None] = {}
        pending = set(tps)
        while pending:
            for records in consumer.poll(timeout_ms=1000).values():
                for rec in records:
                    latest[rec.key] = rec.value
            pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
        return latest
    finally:
        consumer.close()


def test_erasure_tombstones_the_persons_dead_letters(
    kafka: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    spec = dead_letter_topic_spec("unused", 2, 168)
    topic = topic_factory(partitions=2, configs=spec.configs)
    _produce(kafka.bootstrap_servers, topic)
    source = DeadLetterTopic(kafka.bootstrap_servers, topic, timeout_seconds=READ_TIMEOUT_S)
    enc = new_encryption()
    write_identifiable(tmp_path, [record("mine-1"), record("colleague-2", user_id="user-2")], enc)

    before = export_subject(FS, str(tmp_path), enc, "acct-1", "user-1", dead_letters=source)
    assert before.dead_letters is not None
    assert {letter.key for letter in before.dead_letters} == AFFECTED

    report = erase_subject(FS, str(tmp_path), enc, POLICY, "acct-1", "user-1", dead_letters=source)
    assert report.dead_letters_tombstoned == 2
    assert report.rows_removed == {"traffic": 1}
    assert stored_ids(tmp_path, enc) == {"colleague-2"}

    latest = _latest_by_key(kafka.bootstrap_servers, topic)
    for key in AFFECTED:
        assert latest[key] is None, key  # a tombstone: compaction removes the letter
    for key in LETTERS.keys() - AFFECTED:
        assert latest[key] == LETTERS[key][1], key  # everyone else's letters untouched

    # Idempotent, and what is left no longer names the person.
    again = erase_subject(FS, str(tmp_path), enc, POLICY, "acct-1", "user-1", dead_letters=source)
    assert again.dead_letters_tombstoned == 0
    after = export_subject(FS, str(tmp_path), enc, "acct-1", "user-1", dead_letters=source)
    assert after.dead_letters == [] and after.rows.num_rows == 0


def test_a_dead_letter_nested_985_deep_is_exported_and_erased(
    kafka: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    # Issue 14, item 7: json.loads raised RecursionError on it, crashing export and erase.
    spec = dead_letter_topic_spec("unused", 1, 168)
    topic = topic_factory(partitions=1, configs=spec.configs)
    deep = ("[" * 985 + '"acct-1", "user-1"' + "]" * 985).encode()
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    try:
        producer.send(topic, key=b"sieve.raw+0+9", value=deep, partition=0)
        producer.send(topic, key=b"sieve.raw+0+10", value=LETTERS[b"sieve.raw+0+3"][1], partition=0)
        producer.flush(timeout=READ_TIMEOUT_S)
    finally:
        producer.close()
    source = DeadLetterTopic(kafka.bootstrap_servers, topic, timeout_seconds=READ_TIMEOUT_S)
    enc = new_encryption()

    export = export_subject(FS, str(tmp_path), enc, "acct-1", "user-1", dead_letters=source)
    assert export.dead_letters is not None
    assert [letter.key for letter in export.dead_letters] == [b"sieve.raw+0+9"]
    report = erase_subject(FS, str(tmp_path), enc, POLICY, "acct-1", "user-1", dead_letters=source)
    assert report.dead_letters_tombstoned == 1
    latest = _latest_by_key(kafka.bootstrap_servers, topic)
    assert latest[b"sieve.raw+0+9"] is None
    assert latest[b"sieve.raw+0+10"] == LETTERS[b"sieve.raw+0+3"][1]
