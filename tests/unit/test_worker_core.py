"""The worker's Kafka-free core: the partition pipeline, ranges, recovery.

The central property: a partition processed with a crash and a restore in the middle
produces the same outputs as one processed without interruption, however the records
were batched (what makes replays after a crash exactly once).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.commits import OutputCounts, RangeCounts, iter_markers
from streams.encryption import ParquetEncryption
from streams.privacy.keyring import Keyring
from streams.storage import open_data_root
from streams.worker.metrics import WorkerMetrics
from streams.worker.pipeline import PartitionPipeline, PipelineContext, RawRecord
from streams.worker.service import ConsumerOptions, range_is_due
from streams.worker.sink import RangeWriter, recover_partition
from streams.worker.state.folder import StateFolder
from tests.fixtures.pipeline_context import default_context
from tests.fixtures.pipeline_truth import TRAFFIC_ARRIVAL_MS, traffic_config

HOUR = 3600
TOPIC = "raw"


# --- pipeline, ranges and recovery ----------------------------------------------------------


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture(scope="module")
def context(keyring: Keyring) -> PipelineContext:
    return default_context(keyring)


@pytest.fixture(scope="module")
def records() -> list[RawRecord]:
    from streams.generate.model import TrafficModel

    config = traffic_config(3_000, seed=5, duplicate_share=0.05, malformed_share=0.01)
    return [
        RawRecord(offset, TRAFFIC_ARRIVAL_MS + offset, record.value)
        for offset, record in enumerate(TrafficModel(config))
    ]


def _writer(root: Path, keyring: Keyring) -> tuple[RangeWriter, str]:
    opened = open_data_root(str(root), create=True)
    filesystem, base = opened.fs, opened.path
    keys, active = keyring.encryption_keys()
    return RangeWriter(filesystem, base, ParquetEncryption(keys, active), "test"), base


def _commit(
    pipeline: PartitionPipeline, writer: RangeWriter, metrics: WorkerMetrics, *, apply: bool
) -> None:
    pending = pipeline.take_range()
    assert pending is not None
    marker = writer.commit_range(TOPIC, 0, pending)
    metrics.add(marker.counts)
    if apply:
        pipeline.range_committed(pending, marker)


# How the state store fares at each simulated crash: written after every marker and reopened
# ("apply"), never written so recovery catches up from the dedup logs ("catch up"), or lost
# with the machine so recovery rebuilds it from them ("rebuild").
STORE_FATES = ("apply", "catch up", "rebuild")


def _run(
    root: Path,
    keyring: Keyring,
    context: PipelineContext,
    records: list[RawRecord],
    cuts: list[int],
    fate: str = "apply",
) -> WorkerMetrics:
    """Process ``records`` in batches cut at ``cuts``; at each cut, commit, 'crash' and restore."""
    writer, base = _writer(root, keyring)
    filesystem = open_data_root(str(root), create=True).fs
    metrics = WorkerMetrics()
    start = 0
    for end in [*cuts, len(records)]:
        recovered = recover_partition(filesystem, base, TOPIC, 0)
        assert recovered.next_offset == (start if start else None)
        if fate == "rebuild":
            context = dataclasses.replace(context, state=StateFolder())
        pipeline = PartitionPipeline(TOPIC, 0, context)
        pipeline.restore(filesystem, base, recovered.markers)
        for batch_start in range(start, end, 700):
            pipeline.process(records[batch_start : min(end, batch_start + 700)])
        _commit(pipeline, writer, metrics, apply=fate == "apply")
        start = end
    return metrics


def _facts(root: Path) -> pa.Table:
    table = pq.read_table(root / "facts")
    return table.select([c for c in table.column_names if c != "date"]).sort_by("event_key")


@pytest.mark.parametrize("fate", STORE_FATES)
def test_restored_pipeline_writes_what_an_uninterrupted_one_writes(
    tmp_path: Path, keyring: Keyring, context: PipelineContext, records: list[RawRecord], fate: str
) -> None:
    straight = _run(tmp_path / "straight", keyring, context, records, cuts=[])
    crashed = _run(tmp_path / "crashed", keyring, context, records, [500, 1_900, 2_100], fate)
    for name in ("raw", "accepted", "duplicates", "facts"):
        assert getattr(straight, name) == getattr(crashed, name), name
    assert straight.dead_lettered == crashed.dead_lettered
    assert straight.identifiable == crashed.identifiable
    assert straight.raw == straight.accepted + straight.duplicates + sum(
        straight.dead_lettered.values()
    )
    assert straight.duplicates > 0 and sum(straight.dead_lettered.values()) > 0
    assert _facts(tmp_path / "straight").equals(_facts(tmp_path / "crashed"))


def test_replaying_a_range_writes_identical_fact_files(
    tmp_path: Path, keyring: Keyring, context: PipelineContext, records: list[RawRecord]
) -> None:
    _run(tmp_path / "a", keyring, context, records[:1000], cuts=[])
    _run(tmp_path / "b", keyring, context, records[:1000], cuts=[])
    files_a = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "facts").rglob("*.parquet")
    )
    files_b = sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b" / "facts").rglob("*.parquet")
    )
    assert files_a == files_b and files_a
    for path in files_a:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()


def test_recovery_removes_temporary_and_uncommitted_files(
    tmp_path: Path, keyring: Keyring, context: PipelineContext, records: list[RawRecord]
) -> None:
    _run(tmp_path, keyring, context, records[:800], cuts=[])
    opened = open_data_root(str(tmp_path), create=True)
    filesystem, base = opened.fs, opened.path
    # What a crash leaves: a temporary file and a range written but never marked committed.
    day = next((tmp_path / "facts").iterdir())
    temporary = day / f"{TOPIC}+0+800-900.parquet.tmp-abc"
    uncommitted = day / f"{TOPIC}+0+800-999.parquet"
    other_partition = day / f"{TOPIC}+1+0-10.parquet"
    for path in (temporary, uncommitted, other_partition):
        path.write_bytes(b"partial")
    recovered = recover_partition(filesystem, base, TOPIC, 0)
    assert recovered.next_offset == 800
    assert not temporary.exists() and not uncommitted.exists()
    assert other_partition.exists(), "recovery of partition 0 must not touch partition 1"
    assert [m.last_offset for m in iter_markers(filesystem, base, TOPIC, 0)] == [799]


def test_identifiable_files_are_encrypted(
    tmp_path: Path, keyring: Keyring, context: PipelineContext, records: list[RawRecord]
) -> None:
    _run(tmp_path, keyring, context, records[:500], cuts=[])
    files = list((tmp_path / "identifiable").rglob("*.parquet"))
    assert files
    with pytest.raises(OSError, match=r"encrypted|decryption"):
        pq.read_table(files[0])
    assert os.path.getsize(files[0]) > 0


def test_metrics_render_every_counter() -> None:
    metrics = WorkerMetrics()
    metrics.add(
        RangeCounts(
            raw=10,
            accepted=7,
            duplicates=2,
            dead_lettered={"invalid_json": 1},
            outputs={"identifiable": OutputCounts(5, {"traffic": 5}), "facts": OutputCounts(7)},
            bytes_written=100,
        )
    )
    text = metrics.render()
    assert "sieve_raw_records_total 10" in text
    assert 'sieve_dead_lettered_total{reason="invalid_json"} 1' in text
    assert 'sieve_identifiable_records_total{retention_class="traffic"} 5' in text


# --- when a range is cut ---------------------------------------------------------------------


def _roll_options(**overrides: Any) -> ConsumerOptions:
    """Options of a worker that rolls at 200k records or 5 s (the settings' defaults)."""
    defaults: dict[str, Any] = {
        "bootstrap_servers": "unused",
        "topic": TOPIC,
        "dead_letter_topic": "dead",
        "group_id": "g",
        "batch_max_records": 10_000,
        "roll_max_records": 200_000,
        "roll_interval_seconds": 5.0,
    }
    return ConsumerOptions(**(defaults | overrides))


def test_a_range_is_cut_when_big_old_or_caught_up_with_a_batch() -> None:
    options = _roll_options()

    def due(rows: int, records: int, age: float, caught_up: bool, burst: bool = False) -> bool:
        return range_is_due(
            options,
            buffered_rows=rows,
            buffered_records=records,
            age_seconds=age,
            caught_up=caught_up,
            after_burst=burst,
        )

    assert due(200_000, 210_000, 0.1, caught_up=False)  # big enough
    assert due(10, 10, 5.0, caught_up=False)  # old enough
    assert due(9_000, 10_000, 0.1, caught_up=True)  # a burst ended
    # The tail of a burst, however small: its partition was in a full fetch.
    assert due(300, 300, 0.1, caught_up=True, burst=True)
    assert not due(300, 300, 0.1, caught_up=False, burst=True)  # the burst goes on
    # A trickle waits for the timer, caught up or not: no file per fetch.
    assert not due(9_999, 9_999, 4.9, caught_up=True)
    assert not due(199_999, 210_000, 4.9, caught_up=False)


def test_a_range_is_cut_when_its_buffer_reaches_its_bytes_whatever_its_rows() -> None:
    options = _roll_options(roll_max_bytes=1 << 20)

    def due(rows: int, size: int) -> bool:
        return range_is_due(
            options,
            buffered_rows=rows,
            buffered_records=rows,
            buffered_bytes=size,
            age_seconds=0.1,
            caught_up=False,
        )

    assert due(1_000, 1 << 20)  # few rows, wide ones
    assert not due(1_000, (1 << 20) - 1)


def test_the_buffer_counts_the_bytes_of_the_range_it_hands_over(
    context: PipelineContext, records: list[RawRecord]
) -> None:
    pipeline = PartitionPipeline(TOPIC, 0, dataclasses.replace(context, state=StateFolder()))
    pipeline.process(records[:1_000])
    after_one = pipeline.buffered_bytes
    pipeline.process(records[1_000:2_000])
    buffered = pipeline.buffered_bytes
    pending = pipeline.take_range()
    assert pending is not None
    # What the cut is decided on is what the range holds in memory.
    assert 0 < after_one < buffered == sum(table.nbytes for table in pending.tables.values())
    assert pipeline.buffered_bytes == 0
    pipeline.close()
