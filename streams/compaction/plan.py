"""What a compaction covers and writes, decided from the markers alone (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final

from schemas.commits import CommitMarker, CoveredRange, OutputCounts, RangeCounts
from schemas.datasets import DATE_KEY, dataset_of

COMPACTED_PREFIX: Final = "compacted+"
# The worker's dedup logs (streams.worker.state.range_log.LOG_DIR); compaction is core and
# imports no worker module.
_LOG_PREFIX: Final = "_dedup/"

Interval = tuple[int, int]


def file_day(relative: str) -> date | None:
    """The ``date`` partition of a file of a declared dataset (its declared layout); None
    for a dedup log, or a dataset partitioned by no date."""
    dataset = dataset_of(relative)
    values = None if dataset is None else dataset.partition_of(relative)
    day = None if values is None else values.get(DATE_KEY)
    return None if day is None else date.fromisoformat(day)


def marker_days(marker: CommitMarker) -> set[date]:
    return {day for path in marker.files if (day := file_day(path)) is not None}


def closed_through(
    watermark: datetime | None, grace: timedelta, late_slots: int, late_interval: timedelta
) -> date | None:
    """The latest day whose every analytics slot is due under ``watermark`` (the published
    one): slot ``s`` of day ``d`` is due once the watermark passes ``d + 1 day + grace +
    s * late_interval`` (aggregations.dp.budget). None: no day yet."""
    if watermark is None:
        return None
    latest = watermark - grace - late_slots * late_interval - timedelta(days=1)
    day = latest.date()
    # The day starts at midnight: ``latest`` past midnight of ``day`` means ``day`` is due.
    return day


def _cursor_class(intervals: Sequence[Interval], first: int, last: int) -> int | None:
    """Index of the cursor interval holding [first, last], -1 outside all, None partly in."""
    for index, (low, high) in enumerate(intervals):
        if low <= first and last <= high:
            return index
        if first <= high and low <= last:
            return None
    return -1


def spans(
    live: Sequence[CommitMarker],
    last_closed: date,
    held: Collection[date],
    published: Sequence[Interval],
    mergeable: bool,
) -> list[list[CommitMarker]]:
    """Runs of one partition's live markers (offset order) that a compaction may replace.

    A marker qualifies when it is not the newest, every day it has files for is closed
    (``<= last_closed`` and not ``held``: a refused or waiting analytics day) and the
    cursor holds it whole or not at all; a run is contiguous in offsets and in one cursor
    class. A run is worth it with two markers or more, or a compaction marker that still
    carries range files to merge (``mergeable``: this run can merge identifiable files).
    """
    runs: list[list[CommitMarker]] = []
    current: list[CommitMarker] = []
    current_class: int | None = None

    def close() -> None:
        if len(current) > 1 or (current and _has_range_files(current[0], mergeable)):
            runs.append(list(current))
        current.clear()

    for marker in live[:-1]:
        days = marker_days(marker)
        klass = _cursor_class(published, marker.first_offset, marker.last_offset)
        fits = klass is not None and all(d <= last_closed and d not in held for d in days)
        if not fits:
            close()
            continue
        if current and (
            marker.first_offset != current[-1].last_offset + 1 or klass != current_class
        ):
            close()
        current.append(marker)
        current_class = klass
    close()
    return runs


def _has_range_files(marker: CommitMarker, mergeable: bool) -> bool:
    folders: dict[str, int] = {}
    for path in marker.files:
        # The cheap test first: a compaction marker lists mostly merged files, one per
        # folder and day, and this runs on every publish, even one with nothing new.
        if not is_compacted(path) and is_merged(path, mergeable):
            folder = path.rsplit("/", 1)[0]
            folders[folder] = folders.get(folder, 0) + 1
    return marker.compaction > 0 and any(count > 1 for count in folders.values())


def is_compacted(relative: str) -> bool:
    return relative.rsplit("/", 1)[-1].startswith(COMPACTED_PREFIX)


def is_merged(relative: str, identifiable: bool) -> bool:
    """Whether a compaction merges this kind of file: a file of a declared dataset
    (schemas.datasets), an encrypted one only with the keyring (``identifiable``); dedup
    logs never: they stay one per range, as the state rebuild reads them."""
    dataset = dataset_of(relative)
    return dataset is not None and (identifiable or not dataset.encrypted)


@dataclass(frozen=True)
class Compaction:
    """One compaction: the markers it replaces, its marker, and the merged files to write
    (relative path -> the files merged into it, in offset order)."""

    replaced: tuple[CommitMarker, ...]
    marker: CommitMarker
    merged: dict[str, tuple[str, ...]]


def merged_name(topic: str, partition: int, first: int, last: int, sequence: int) -> str:
    return f"{COMPACTED_PREFIX}{topic}+{partition}+{first}-{last}-c{sequence}.parquet"


def plan_compaction(
    span: Sequence[CommitMarker], sequence: int, identifiable: bool, sieve_version: str
) -> Compaction:
    """The compaction of ``span`` (contiguous live markers of one partition) as the
    partition's ``sequence``-th: each folder's range files merged into one, the rest kept."""
    first, last = span[0], span[-1]
    name = merged_name(first.topic, first.partition, first.first_offset, last.last_offset, sequence)
    merged: dict[str, list[str]] = {}
    kept: list[str] = []
    for marker in span:
        for path in marker.files:
            if is_merged(path, identifiable) and not is_compacted(path):
                merged.setdefault(path.rsplit("/", 1)[0], []).append(path)
            else:
                kept.append(path)
    for folder, paths in list(merged.items()):
        if len(paths) == 1 and not _encrypted(paths[0]):
            # Alone in its folder: merged, it would be the same rows under another name (an
            # encrypted one is written again, under the active key). It stays as it is; a
            # later compaction merges it with the folder's next ranges.
            kept.append(paths[0])
            del merged[folder]
    targets = {f"{folder}/{name}": tuple(paths) for folder, paths in merged.items()}
    marker = CommitMarker(
        topic=first.topic,
        partition=first.partition,
        first_offset=first.first_offset,
        last_offset=last.last_offset,
        files=sorted([*kept, *targets]),
        counts=sum_counts(m.counts for m in span),
        watermark=next((m.watermark for m in reversed(span) if m.watermark), None),
        consent_changes=[],
        sieve_version=sieve_version,
        generation=max(m.generation for m in span),
        member_id="",
        compaction=sequence,
        ranges=[r for m in span for r in covered_ranges(m)],
    )
    return Compaction(tuple(span), marker, targets)


def _encrypted(relative: str) -> bool:
    dataset = dataset_of(relative)
    return dataset is not None and dataset.encrypted


def covered_ranges(marker: CommitMarker) -> list[CoveredRange]:
    if marker.compaction:
        return list(marker.ranges)
    log = next((path for path in marker.files if path.startswith(_LOG_PREFIX)), "")
    return [
        CoveredRange(
            first_offset=marker.first_offset,
            last_offset=marker.last_offset,
            generation=marker.generation,
            dedup_log=log,
            watermark=marker.watermark,
            consent_changes=marker.consent_changes,
        )
    ]


def collapse(ranges: Sequence[CoveredRange], gone: Collection[str]) -> list[CoveredRange]:
    """Consecutive ranges whose dedup logs are ``gone`` (deleted past the dedup horizon) as
    one: the state rebuild reads only their consent changes, in order, so the marker grows
    with the ranges still within the horizon, not with all history."""
    out: list[CoveredRange] = []
    for r in ranges:
        without = not r.dedup_log or r.dedup_log in gone
        previous = out[-1] if out else None
        if without and previous is not None and not previous.dedup_log:
            out[-1] = CoveredRange(
                first_offset=previous.first_offset,
                last_offset=r.last_offset,
                generation=max(previous.generation, r.generation),
                dedup_log="",
                watermark=r.watermark or previous.watermark,
                consent_changes=[*previous.consent_changes, *r.consent_changes],
                count=previous.count + r.count,
            )
        elif without:
            out.append(
                CoveredRange(
                    r.first_offset,
                    r.last_offset,
                    r.generation,
                    "",
                    r.watermark,
                    r.consent_changes,
                    r.count,
                )
            )
        else:
            out.append(r)
    return out


def sum_counts(counts: Iterable[RangeCounts]) -> RangeCounts:
    raw = accepted = duplicates = written = 0
    dead: dict[str, int] = {}
    rows: dict[str, int] = {}
    by: dict[str, dict[str, int]] = {}
    for c in counts:
        raw += c.raw
        accepted += c.accepted
        duplicates += c.duplicates
        written += c.bytes_written
        for reason, n in c.dead_lettered.items():
            dead[reason] = dead.get(reason, 0) + n
        for name, output in c.outputs.items():
            rows[name] = rows.get(name, 0) + output.rows
            into = by.setdefault(name, {})
            for value, n in output.by.items():
                into[value] = into.get(value, 0) + n
    return RangeCounts(
        raw,
        accepted,
        duplicates,
        dict(sorted(dead.items())),
        outputs={name: OutputCounts(n, dict(sorted(by[name].items()))) for name, n in rows.items()},
        bytes_written=written,
    )
