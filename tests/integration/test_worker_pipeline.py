"""One real worker drains a generated topic: counts add up and match the ground truth.

A module-scoped run (generate -> worker -> committed files) is shared by the tests below,
so the broker and the worker start once for all of them.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import pyarrow.parquet as pq
import pytest
from kafka import KafkaConsumer, TopicPartition

from schemas.events import Geo, Logout, PageView
from streams.generate.commands import generate_to_topic
from streams.generate.model import TrafficModel
from streams.generate.records import GroundTruth
from streams.producer import EventProducer
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.pipeline_truth import (
    expected_identifiable,
    read_identifiable,
    traffic_config,
)
from tests.fixtures.worker_harness import (
    WorkerProcess,
    WorkerSetup,
    leftover_temporary_files,
    wait_until,
)

COUNT = 20_000
PLANTED = {
    "ip": "203.0.113.77",
    "ipv6": "2001:db8:77::1",
    "user_agent": "PlantedAgent/9.9 (X11; planted-ua-marker)",
    "user_id": "alice.planted@example.com",
    "session_id": "planted-session-5f1c2e",
    "account_email_path": "/settings/profile/bob.planted@example.org",
}


@dataclass
class PipelineRun:
    setup: WorkerSetup
    truth: GroundTruth
    planted_events: int
    records: list


def _planted_events() -> list:
    at = datetime(2026, 10, 30, 12, 0, tzinfo=UTC)
    common = dict(
        schema_version=1,
        occurred_at=at,
        account_id="acct-planted",
        user_id=PLANTED["user_id"],
        session_id=PLANTED["session_id"],
        user_agent=PLANTED["user_agent"],
        geo=Geo(city="Plantedville"),
    )
    return [
        PageView(
            event_id=str(uuid.uuid4()),
            ip=PLANTED["ip"],
            path=PLANTED["account_email_path"],
            **common,
        ),
        Logout(event_id=str(uuid.uuid4()), ip=PLANTED["ipv6"], session_duration_s=12.5, **common),
    ]


@pytest.fixture(scope="module")
def pipeline_run(
    kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PipelineRun]:
    from streams.topics import TopicSpec, create_topics

    suffix = uuid.uuid4().hex[:8]
    raw, dead = f"test.pipeline.raw.{suffix}", f"test.pipeline.dead.{suffix}"
    create_topics(kafka.bootstrap_servers, [TopicSpec(raw, 3, {}), TopicSpec(dead, 1, {})])
    setup = WorkerSetup(
        kafka.bootstrap_servers, raw, dead, tmp_path_factory.mktemp("pipeline"), f"g-{suffix}"
    )
    config = traffic_config(COUNT, seed=7)
    report = generate_to_topic(config, kafka.bootstrap_servers, raw)
    planted = _planted_events()
    with EventProducer(kafka.bootstrap_servers, raw) as producer:
        for event in planted:
            producer.send(event)
        producer.flush(30)
    worker = WorkerProcess(setup, "worker").start()
    try:
        wait_until(
            lambda: setup.committed_raw() >= COUNT + len(planted),
            timeout=240,
            what=f"{COUNT + len(planted)} raw records committed",
            workers=[worker],
        )
    finally:
        worker.stop()
    yield PipelineRun(setup, report.truth, len(planted), list(TrafficModel(config)))


def test_every_raw_record_is_accepted_deduplicated_or_dead_lettered(
    pipeline_run: PipelineRun,
) -> None:
    totals = pipeline_run.setup.totals()
    truth = pipeline_run.truth
    assert totals["raw"] == COUNT + pipeline_run.planted_events
    assert totals["accepted"] + totals["duplicates"] + totals["dead_lettered"] == totals["raw"]
    assert totals["accepted"] == truth.by_kind["event"] + pipeline_run.planted_events
    assert totals["duplicates"] == truth.by_kind["duplicate"]
    assert totals["dead_lettered"] == truth.by_kind["malformed"]


def test_fact_rows_match_ground_truth_per_type(pipeline_run: PipelineRun) -> None:
    facts = pipeline_run.setup.fact_rows()
    per_type = dict(facts.aggregate("type, count(*)", "type").fetchall())
    expected = {t: n for t, n in pipeline_run.truth.events_by_type.items() if n}
    expected["page_view"] += 1
    expected["logout"] += 1
    assert per_type == expected
    ((rows, distinct),) = facts.aggregate("count(*), count(DISTINCT event_key)").fetchall()
    assert rows == distinct


def test_identifiable_rows_match_the_policy_per_type_and_class(pipeline_run: PipelineRun) -> None:
    table = read_identifiable(pipeline_run.setup.data_root, pipeline_run.setup.keyring_file)
    actual = Counter(
        zip(table["type"].to_pylist(), table["retention_class"].to_pylist(), strict=True)
    )
    expected = expected_identifiable(pipeline_run.records)
    # The planted page view and logout are kept (no opt-out) with a detached traffic record each.
    expected.update({("page_view", "activity"): 1, ("page_view", "traffic"): 1})
    expected.update({("logout", "activity"): 1, ("logout", "traffic"): 1})
    assert actual == expected
    ips_outside_traffic = [
        ip
        for ip, cls in zip(
            table["ip"].to_pylist(), table["retention_class"].to_pylist(), strict=True
        )
        if ip is not None and cls != "traffic"
    ]
    assert ips_outside_traffic == []


def test_every_dead_letter_names_its_reason(kafka: KafkaBroker, pipeline_run: PipelineRun) -> None:
    setup = pipeline_run.setup
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    tp = TopicPartition(setup.dead_letter_topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end = consumer.end_offsets([tp])[tp]
    letters = {}
    while consumer.position(tp) < end:
        for records in consumer.poll(timeout_ms=1000).values():
            for record in records:
                letters[record.key] = (dict(record.headers), record.value)
    consumer.close()
    reasons = Counter(h["sieve.error.code"].decode() for h, _ in letters.values())
    assert reasons == Counter(
        {r: n for r, n in pipeline_run.truth.malformed_by_reason.items() if n}
    )
    for headers, value in letters.values():
        assert headers["sieve.error.reason"]
        # The reason and field never echo the rejected content (dead letters are personal data).
        explanation = headers["sieve.error.reason"] + headers["sieve.error.field"]
        for secret in _string_values(value):
            assert secret.encode() not in explanation, (secret, explanation)
        assert headers["sieve.source.topic"].decode() == setup.raw_topic
        assert int(headers["sieve.source.offset"]) >= 0
        assert headers["sieve.worker.version"]


def _string_values(value: bytes) -> list[str]:
    """Content string values (6+ characters) of a JSON object; nothing if it is not one."""
    try:
        document = json.loads(value)
    except ValueError:
        return []
    if not isinstance(document, dict):
        return []
    # "type" names the event type, which reasons may name; every other value is content.
    return [v for k, v in document.items() if k != "type" and isinstance(v, str) and len(v) >= 6]


def test_no_personal_data_in_fact_files(pipeline_run: PipelineRun) -> None:
    files = sorted((pipeline_run.setup.data_root / "facts").rglob("*.parquet"))
    assert files
    # The account id "acct-planted" is the customer and may appear; nothing about the person may.
    needles = [value.encode() for value in PLANTED.values()] + [b"Plantedville"]
    for path in files:
        raw = path.read_bytes()
        parquet = pq.ParquetFile(path)
        decoded = [
            json.dumps(pq.read_table(path).to_pylist(), default=str),
            str(parquet.metadata.metadata),
            str(parquet.schema_arrow),
        ]
        for group in range(parquet.metadata.num_row_groups):
            row_group = parquet.metadata.row_group(group)
            for column in range(row_group.num_columns):
                stats = row_group.column(column).statistics
                if stats is not None and stats.has_min_max:
                    decoded.append(f"{stats.min!r} {stats.max!r}")
        text = "\n".join(decoded).encode()
        for needle in needles:
            assert needle not in raw, f"{needle!r} in the bytes of {path}"
            assert needle.lower() not in text.lower(), (
                f"{needle!r} in values/stats/metadata of {path}"
            )
    planted_facts = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{pipeline_run.setup.data_root}/facts/**/*.parquet')"
        " WHERE account_id = 'acct-planted'"
    ).fetchall()
    assert planted_facts == [(2,)]


def test_no_temporary_files_and_contiguous_ranges(pipeline_run: PipelineRun) -> None:
    from schemas.commits import iter_markers
    from streams.storage import open_data_root

    setup = pipeline_run.setup
    assert leftover_temporary_files(setup.data_root) == []
    opened = open_data_root(str(setup.data_root), create=True)
    filesystem, root = opened.fs, opened.path
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for marker in iter_markers(filesystem, root, setup.raw_topic):
        by_partition.setdefault(marker.partition, []).append(
            (marker.first_offset, marker.last_offset)
        )
    for ranges in by_partition.values():
        ranges.sort()
        assert ranges[0][0] == 0
        for (_, last), (first, _) in itertools.pairwise(ranges):
            assert first == last + 1
