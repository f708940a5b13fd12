"""Publish across compaction and fencing (issue 10.3): coverage survives compaction, and a
zombie's overlapping marker neither fails a publish nor counts twice."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.fs as pafs
from msgspec.structs import replace

from aggregations.analytics import Privacy
from aggregations.dp.bounding import Bounds
from aggregations.dp.budget import Budget
from aggregations.dp.ledger import read_ledger
from aggregations.publish import publish
from aggregations.storage import resolve_root
from schemas.commits import encode_marker, iter_markers, marker_path, read_markers
from tests.fixtures.compaction_data import metering
from tests.fixtures.facts import fact, facts_table, write_committed_facts

DAY = datetime(2026, 11, 2, tzinfo=UTC)
GRACE = timedelta(hours=1)
PRIVACY = Privacy(
    Budget(epsilon=1.0, delta=1e-6, late_batches=1, late_interval=timedelta(hours=12)),
    Bounds(events_per_unit=4),
)


def _commit(root: Path, first: int, hours: list[int], partition: int = 0, tag: str = "") -> None:
    rows = [
        fact(DAY + timedelta(hours=h), event_key=f"{tag}{partition}-{first + i}", bytes=i)
        for i, h in enumerate(hours)
    ]
    write_committed_facts(root, facts_table(rows), first_offset=first, partition=partition)


def _publish(root: Path, now: datetime, compact: bool = True):  # type: ignore[no-untyped-def]
    return publish(str(root), now, GRACE, PRIVACY, close_through=now, compact=compact)


def test_late_facts_of_a_compacted_day_are_never_released_again(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for number in range(6):
        _commit(root, number * 4, [number, number + 1, number + 2, number + 3])
    # Both slots of the day due (the late one 12 h after its close): released, then the
    # day is closed for good and its ranges are compacted.
    _publish(root, DAY + timedelta(days=1, hours=14))
    markers = read_markers(pafs.LocalFileSystem(), str(root))
    assert [m.compaction for m in markers] == [1, 0]
    facts_released = sum(
        e.facts for es in read_ledger(resolve_root(str(root))).values() for e in es
    )
    assert facts_released == 24
    # A late fact of that day, and the facts of the next day.
    _commit(root, 24, [5, 30])
    plain = tmp_path / "plain"
    shutil.copytree(root, plain)

    report = _publish(root, DAY + timedelta(days=1, hours=15))

    assert report.analytics_batches == 0
    assert report.unreleased_facts == 1  # the late fact: in metering, never in analytics
    ledger = read_ledger(resolve_root(str(root)))
    assert sum(e.facts for es in ledger.values() for e in es) == facts_released
    # The metering is what publishing the same facts uncompacted gives.
    _publish(plain, DAY + timedelta(days=1, hours=15), compact=False)
    assert metering(root) == metering(plain)


def test_a_day_is_compacted_only_after_its_last_analytics_slot(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for number in range(4):
        _commit(root, number * 3, [number, number + 1, number + 2])
    # The day closed and its first slot released; the late slot is 12 h away.
    report = _publish(root, DAY + timedelta(days=1, hours=2))
    assert report.analytics_batches == 1
    assert report.compacted_markers == 0
    assert all(m.compaction == 0 for m in read_markers(pafs.LocalFileSystem(), str(root)))
    # A late fact comes; the late slot releases it (its file was not renamed meanwhile).
    _commit(root, 12, [7])
    report = _publish(root, DAY + timedelta(days=1, hours=14))
    assert report.analytics_batches == 1
    assert report.compacted_markers == 4


def test_a_zombie_marker_over_a_published_range_neither_fails_nor_counts_twice(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    _commit(root, 0, [1, 2, 3, 4])  # offsets 0-3
    # An evicted writer's range [4, 9]: its offset commit was accepted just before the
    # eviction, its marker came late, after its successor resumed at 4; a publish ran first.
    _commit(root, 4, [5, 6, 7, 8, 9, 10], tag="zombie-")
    _publish(root, DAY + timedelta(days=1, hours=2), compact=False)
    # The successor writes [4, 6] then [7, 12] in a newer generation: the same records.
    for first, count in ((4, 3), (7, 6)):
        hours = [h for h in range(first + 1, first + 1 + count)]
        rows = [
            fact(DAY + timedelta(hours=h), event_key=f"0-{first + i}", bytes=first - 4 + i)
            for i, h in enumerate(hours)
        ]
        marker = write_committed_facts(root, facts_table(rows), first_offset=first)
        # Rewritten under its generation's name and marker (the worker's layout).
        (root / marker_path("sieve.raw", 0, first, marker.last_offset)).unlink()
        renamed = []
        for relative in marker.files:
            name = relative.replace(".parquet", "-g2.parquet")
            (root / relative).rename(root / name)
            renamed.append(name)
        marker = replace(marker, files=renamed, generation=2)
        path = root / marker_path("sieve.raw", 0, first, marker.last_offset, 2)
        path.write_bytes(encode_marker(marker))
    live = list(iter_markers(pafs.LocalFileSystem(), str(root)))
    assert [(m.first_offset, m.generation) for m in live] == [(0, 0), (4, 2), (7, 2)]

    report = _publish(root, DAY + timedelta(days=1, hours=3))  # no OverlappingRangeError

    # Metering: exactly the live facts (the zombie's rows counted nowhere).
    values = {
        row[3]: row[5]
        for row in metering(root)["values"]
        if row[4] == "requests" and row[0] == "day"
    }
    assert sum(values.values()) == 4 + 3 + 6
    assert report.analytics_batches == 0
    # Analytics, once the day's late slot is due: the successor's files share offsets with
    # the zombie's, released in the first batch, so they are covered: no record counts in
    # two batches (what lies beyond, offsets 10-12, is never released).
    late = _publish(root, DAY + timedelta(days=1, hours=14), compact=False)
    assert late.analytics_batches == 1
    ledger = read_ledger(resolve_root(str(root)))
    assert [e.facts for es in ledger.values() for e in es] == [4 + 6, 0]
