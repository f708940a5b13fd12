"""A batch is all or nothing: a record that makes a stage raise is dead-lettered, the rest of
its batch is processed as if it had not been there, and nothing changes half way.

The poison values are the ones that broke the worker (issue 14): the decoder or a later
stage may reject them up front; whatever still raises is isolated by bisection. Either way
every good event is accepted, the poison is dead-lettered with a reason, and the counts
tile (raw = accepted + duplicates + dead-lettered).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest

from streams.encryption import ParquetEncryption
from streams.enrich.useragent import UserAgentInfo, UserAgentParser
from streams.privacy.keyring import Keyring
from streams.storage import open_data_root
from streams.worker.deadletter import PROCESSING_ERROR, DeadLetter
from streams.worker.metrics import WorkerMetrics
from streams.worker.pipeline import PartitionPipeline, PipelineContext, RawRecord
from streams.worker.sink import RangeWriter, recover_partition
from tests.fixtures.pipeline_context import default_context
from tests.fixtures.pipeline_truth import TRAFFIC_ARRIVAL_MS, traffic_config

HOUR = 3600
TOPIC = "raw"
POISON_UA = "PoisonAgent/6.6"
GOOD = {
    "schema_version": 1,
    "type": "page_view",
    "occurred_at": "2026-10-30T12:00:00Z",
    "account_id": "acct-poison",
    "path": "/",
}


def _nested(depth: int) -> bytes:
    event = json.dumps({**GOOD, "event_id": "nested"})
    return (event[:-1] + ', "path": ' + "[" * depth + "]" * depth + "}").encode()


POISON_VALUES = {
    "nested_1000": _nested(1000),
    "year_1_offset_plus_23_59": json.dumps(
        {**GOOD, "event_id": "early", "occurred_at": "0001-01-01T00:00:00+23:59"}
    ).encode(),
    "year_9999_offset_minus_23_59": json.dumps(
        {**GOOD, "event_id": "late", "occurred_at": "9999-12-31T23:59:59-23:59"}
    ).encode(),
}


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture(scope="module")
def context(keyring: Keyring) -> PipelineContext:
    return default_context(keyring)


@pytest.fixture(scope="module")
def good_values() -> tuple[list[bytes], Counter[str]]:
    """Generated traffic without malformed records, and how many of each kind it holds."""
    from streams.generate.model import TrafficModel

    config = traffic_config(1_200, seed=21, duplicate_share=0.05, malformed_share=0.0)
    generated = list(TrafficModel(config))
    return [r.value for r in generated], Counter(r.kind for r in generated)


def _records(values: Sequence[bytes]) -> list[RawRecord]:
    return [RawRecord(i, TRAFFIC_ARRIVAL_MS + i, value) for i, value in enumerate(values)]


def _mixed(good: list[bytes], poison: list[bytes]) -> list[bytes]:
    """``poison`` spread through ``good`` (first, middle, last and in between)."""
    values = list(good)
    step = max(1, len(values) // max(1, len(poison) - 1))
    for n, value in enumerate(poison):
        values.insert(min(len(values), n * step + n), value)
    return values


def _process(pipeline: PartitionPipeline, records: list[RawRecord], batch: int) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    for start in range(0, len(records), batch):
        letters += pipeline.process(records[start : start + batch])
    return letters


def _sorted_facts(tables: Sequence[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables).sort_by([("event_key", "ascending")])


@pytest.mark.parametrize("batch", [10_000, 97])
def test_poison_values_are_dead_lettered_and_every_good_event_is_accepted(
    context: PipelineContext,
    good_values: tuple[list[bytes], Counter[str]],
    batch: int,
) -> None:
    good, kinds = good_values
    poison = list(POISON_VALUES.values())
    records = _records(_mixed(good, poison))
    pipeline = PartitionPipeline(TOPIC, 0, context)

    letters = _process(pipeline, records, batch)
    pending = pipeline.take_range()

    assert pending is not None
    counts = pending.counts
    assert counts.raw == len(records)
    assert counts.accepted == kinds["event"]
    assert counts.duplicates == kinds["duplicate"]
    assert sum(counts.dead_lettered.values()) == len(poison) == len(letters)
    assert counts.raw == counts.accepted + counts.duplicates + sum(counts.dead_lettered.values())
    assert pending.tables["facts"].num_rows == kinds["event"]
    assert sorted(letter.value for letter in letters) == sorted(poison)
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["sieve.error.code"] and headers["sieve.error.reason"]
    assert pipeline.next_offset == len(records)


def test_a_partition_with_poison_committed_is_not_stuck_after_a_restart(
    tmp_path: Path,
    keyring: Keyring,
    context: PipelineContext,
    good_values: tuple[list[bytes], Counter[str]],
) -> None:
    good, _ = good_values
    poison = list(POISON_VALUES.values())
    resent = good[-50:]  # sent again after the restart: caught as duplicates of the first range
    records = _records(_mixed(good, poison) + _mixed(resent, poison))
    opened = open_data_root(str(tmp_path), create=True)
    filesystem, base = opened.fs, opened.path
    keys, active = keyring.encryption_keys()
    writer = RangeWriter(filesystem, base, ParquetEncryption(keys, active), "test")
    metrics = WorkerMetrics()
    cut = len(good) + len(poison)

    first = PartitionPipeline(TOPIC, 0, context)
    first.process(records[:cut])
    pending = first.take_range()
    assert pending is not None
    metrics.add(writer.commit_range(TOPIC, 0, pending).counts)

    # A restarted worker resumes after the committed range, with the state it implies.
    recovered = recover_partition(filesystem, base, TOPIC, 0)
    assert recovered.next_offset == cut
    restarted = PartitionPipeline(TOPIC, 0, context, next_offset=recovered.next_offset)
    restarted.restore(filesystem, base, recovered.markers)
    letters = restarted.process(records[cut:])
    pending = restarted.take_range()
    assert pending is not None
    metrics.add(writer.commit_range(TOPIC, 0, pending).counts)

    assert restarted.next_offset == len(records)
    assert len(letters) == len(poison)
    dead = sum(metrics.dead_lettered.values())
    assert metrics.raw == len(records) == metrics.accepted + metrics.duplicates + dead
    assert dead == 2 * len(poison)
    # What one uninterrupted pipeline accepts of the good records alone.
    straight = PartitionPipeline(TOPIC, 0, context)
    straight.process(_records(good + resent))
    expected = straight.take_range()
    assert expected is not None
    assert (metrics.accepted, metrics.duplicates) == (
        expected.counts.accepted,
        expected.counts.duplicates,
    )
    assert metrics.duplicates > 0


class _RaisingParser:
    """A user-agent parser that raises on one user agent (a stage bug on one record)."""

    def __init__(self, error: type[BaseException] = OverflowError) -> None:
        self._real = UserAgentParser()
        self._error = error
        self.calls = 0

    def parse_many(self, user_agents: Sequence[str | None]) -> list[UserAgentInfo]:
        self.calls += 1
        if POISON_UA in user_agents:
            raise self._error("the parser cannot take this one: " + POISON_UA)
        return self._real.parse_many(user_agents)


def _with_agent(event_id: str, agent: str) -> bytes:
    return json.dumps({**GOOD, "event_id": event_id, "user_agent": agent}).encode()


@pytest.mark.parametrize("batch", [10_000, 64, 7])
def test_a_stage_raising_on_one_record_dead_letters_that_record_only(
    context: PipelineContext,
    good_values: tuple[list[bytes], Counter[str]],
    batch: int,
) -> None:
    good, kinds = good_values
    poison = [_with_agent(f"poison-{n}", POISON_UA) for n in range(3)]
    mixed = _records(_mixed(good, poison))
    raising = replace(context, user_agents=_RaisingParser())  # type: ignore[arg-type]

    pipeline = PartitionPipeline(TOPIC, 0, raising)
    letters = _process(pipeline, mixed, batch)
    pending = pipeline.take_range()

    # What the same records make without the poison: the outputs must be the same rows.
    clean = PartitionPipeline(TOPIC, 0, context)
    clean.process(_records(good))
    expected = clean.take_range()

    assert pending is not None and expected is not None
    assert [letter.value for letter in letters] == poison
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["sieve.error.code"] == PROCESSING_ERROR.encode()
        reason = headers["sieve.error.reason"].decode()
        assert "user_agent" in reason and "OverflowError" in reason
        assert POISON_UA not in reason  # never the value, nor the exception's message
    assert pending.counts.dead_lettered == {PROCESSING_ERROR: len(poison)}
    assert pending.counts.accepted == expected.counts.accepted == kinds["event"]
    assert pending.counts.duplicates == expected.counts.duplicates
    assert pending.counts.outputs == expected.counts.outputs
    columns = [c for c in expected.tables["facts"].column_names if c != "offset"]
    assert (
        _sorted_facts([pending.tables["facts"]])
        .select(columns)
        .equals(_sorted_facts([expected.tables["facts"]]).select(columns))
    )


def test_a_duplicate_of_a_good_event_across_a_bisected_batch_is_still_caught(
    context: PipelineContext,
) -> None:
    first = _with_agent("same-id", "Mozilla/5.0")
    values = [first, _with_agent("poison", POISON_UA), first, first]
    pipeline = PartitionPipeline(TOPIC, 0, replace(context, user_agents=_RaisingParser()))  # type: ignore[arg-type]

    pipeline.process(_records(values))
    pending = pipeline.take_range()

    assert pending is not None
    assert (pending.counts.accepted, pending.counts.duplicates) == (1, 2)
    assert pending.counts.dead_lettered == {PROCESSING_ERROR: 1}


def test_a_batch_that_cannot_complete_changes_nothing(
    context: PipelineContext, good_values: tuple[list[bytes], Counter[str]]
) -> None:
    good, _ = good_values
    records = _records([*good[:300], _with_agent("poison", POISON_UA)])
    pipeline = PartitionPipeline(
        TOPIC,
        0,
        replace(context, user_agents=_RaisingParser(MemoryError)),  # type: ignore[arg-type]
    )
    pipeline.process(records[:200])
    before = (pipeline.next_offset, pipeline.buffered_records, pipeline.buffered_rows)

    with pytest.raises(MemoryError):
        pipeline.process(records[200:])

    assert (pipeline.next_offset, pipeline.buffered_records, pipeline.buffered_rows) == before
    pending = pipeline.take_range()
    assert pending is not None
    assert (pending.first_offset, pending.last_offset, pending.counts.raw) == (0, 199, 200)


def test_a_pipeline_that_failed_while_applying_a_batch_hands_out_no_range(
    context: PipelineContext, good_values: tuple[list[bytes], Counter[str]]
) -> None:
    good, _ = good_values
    pipeline = PartitionPipeline(TOPIC, 0, context)
    pipeline.process(_records(good[:100]))

    def failing_record(pending: object) -> None:
        raise OSError("the dedup store went away")

    pipeline._dedup.record = failing_record  # type: ignore[method-assign]
    with pytest.raises(OSError):
        pipeline.process(_records(good[:200])[100:])

    assert pipeline.broken
    assert pipeline.take_range() is None  # on_stop must not write half a batch
    with pytest.raises(RuntimeError, match="failed earlier"):
        pipeline.process(_records(good[:300])[200:])
