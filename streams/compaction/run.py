"""Compaction on a data root: sweep what a killed one left, then compact (module docstring
of :mod:`streams.compaction`). Call it holding the publish lock (and, when it merges
identifiable files, the maintenance lock of the subject tools): :mod:`.command` does."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from typing import Final

import msgspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.commits import (
    COMMITS_DIR,
    CommitMarker,
    encode_marker,
    path_of,
    read_markers,
    resolve_markers,
)
from schemas.datasets import dataset_of
from streams.compaction.plan import (
    Compaction,
    Interval,
    closed_through,
    collapse,
    is_compacted,
    plan_compaction,
    spans,
)
from streams.encryption import ParquetEncryption
from streams.storage import (
    TMP_INFIX,
    remove_quietly,
    write_atomic,
    write_concurrently,
    write_parquet_atomic,
)

INTENT_DIR: Final = "_compaction"
_ROW_GROUP_ROWS: Final = 128 * 1024


@dataclass
class CompactionReport:
    compactions: int = 0  # compaction markers written
    ranges_replaced: int = 0  # markers they replaced
    files_merged: int = 0  # files merged into others (and removed)
    files_written: int = 0
    swept: int = 0  # files and markers a killed compaction (or fencing) left, removed
    partitions: list[tuple[str, int]] = field(default_factory=list)


def compact(
    filesystem: pafs.FileSystem,
    root: str,
    *,
    last_closed: date,
    held: Collection[date],
    cursor: Mapping[str, Mapping[int, Sequence[Interval]]],
    encryption: ParquetEncryption | None,
    sieve_version: str,
) -> CompactionReport:
    """Compact every partition of every topic under ``root`` (see :func:`.plan.spans` for
    what qualifies). ``encryption``: merge identifiable files too (else they are carried)."""
    found = partitions(filesystem, root)
    reports = [CompactionReport() for _ in found]
    work = [
        partial(
            compact_partition,
            filesystem,
            root,
            topic,
            partition,
            last_closed=last_closed,
            held=held,
            published=cursor.get(topic, {}).get(partition, []),
            encryption=encryption,
            sieve_version=sieve_version,
            report=report,
        )
        for (topic, partition), report in zip(found, reports, strict=True)
    ]
    if encryption is None:
        # Partitions share no marker, intent or file: each is compacted in its own order,
        # side by side, so that their reads, writes and syncs overlap. Not with the keyring:
        # its encryption objects are not shared between threads.
        write_concurrently(work)
    else:
        for compaction in work:
            compaction()
    return merged_report(reports)


def merged_report(reports: Sequence[CompactionReport]) -> CompactionReport:
    """The partitions' reports as one (in partition order)."""
    total = CompactionReport()
    for report in reports:
        total.compactions += report.compactions
        total.ranges_replaced += report.ranges_replaced
        total.files_merged += report.files_merged
        total.files_written += report.files_written
        total.swept += report.swept
        total.partitions.extend(report.partitions)
    return total


def compact_published(
    filesystem: pafs.FileSystem,
    root: str,
    *,
    watermark: datetime | None,
    held: Collection[date],
    cursor: Mapping[str, Mapping[int, Sequence[Interval]]],
    grace: timedelta,
    late_batches: int,
    late_interval: timedelta,
    encryption: ParquetEncryption | None,
    sieve_version: str,
) -> CompactionReport | None:
    """Compact what the published state allows (publish's manifest: its ``watermark``, its
    refused and waiting days ``held``, its ``cursor``); None before any publish.

    Call it holding the publish lock. A day is closed once every analytics slot of it is due
    under the published watermark and it is not held; a marker is compacted only whole
    inside or outside the cursor.
    """
    last = closed_through(watermark, grace, late_batches, late_interval)
    if last is None:
        return None
    return compact(
        filesystem,
        root,
        last_closed=last,
        held=held,
        cursor=cursor,
        encryption=encryption,
        sieve_version=sieve_version,
    )


def partitions(filesystem: pafs.FileSystem, root: str) -> list[tuple[str, int]]:
    """Every (topic, partition) with a marker folder (two directory listings, no marker read)."""
    found = []
    selector = pafs.FileSelector(f"{root}/{COMMITS_DIR}", allow_not_found=True)
    for topic in filesystem.get_file_info(selector):
        if topic.type != pafs.FileType.Directory:
            continue
        for part in filesystem.get_file_info(pafs.FileSelector(topic.path)):
            if part.type == pafs.FileType.Directory and part.base_name.isdigit():
                found.append((topic.base_name, int(part.base_name)))
    return sorted(found)


def compact_partition(
    filesystem: pafs.FileSystem,
    root: str,
    topic: str,
    partition: int,
    *,
    last_closed: date,
    held: Collection[date],
    published: Sequence[Interval],
    encryption: ParquetEncryption | None,
    sieve_version: str,
    report: CompactionReport,
) -> None:
    live = sweep(filesystem, root, topic, partition, report)
    sequence = max((m.compaction for m in live), default=0)
    for span in spans(live, last_closed, held, published, encryption is not None):
        sequence += 1
        plan = plan_compaction(span, sequence, encryption is not None, sieve_version)
        plan = _collapsed(filesystem, root, plan)
        _apply(filesystem, root, plan, encryption, report)
        report.partitions.append((topic, partition))


def sweep(
    filesystem: pafs.FileSystem, root: str, topic: str, partition: int, report: CompactionReport
) -> list[CommitMarker]:
    """Remove what a killed compaction left (its intent's files no live marker lists) and the
    superseded markers with their files no live marker lists; return the live markers."""
    live, superseded = resolve_markers(read_markers(filesystem, root, topic, partition))
    listed = {path for marker in live for path in marker.files}
    intent = _intent_path(root, topic, partition)
    written = _read_intent(filesystem, intent)
    for relative in written:
        if relative not in listed:
            report.swept += _remove(filesystem, f"{root}/{relative}")
        report.swept += _remove_temporaries(filesystem, f"{root}/{relative}")
    for marker in superseded:
        # Files first, the marker last: a kill in between leaves the marker to say what to
        # remove next time. The worker's recovery removes a fenced range's files as well.
        for relative in marker.files:
            if relative not in listed:
                report.swept += _remove(filesystem, f"{root}/{relative}")
        report.swept += _remove(filesystem, f"{root}/{path_of(marker)}")
    if written:
        _remove(filesystem, intent)
    return live


def sweep_identifiable_leftovers(filesystem: pafs.FileSystem, root: str) -> int:
    """Remove the identifiable files a killed compaction left that no live marker lists (the
    merged files it wrote, or the replaced ones it had not removed yet); return how many.

    The subject tools read every file under ``identifiable/``, listed or not: without this an
    export would read those rows twice. They call it holding their maintenance lock, which a
    compaction that merges identifiable files holds too, so an intent found then is a killed
    run's (a compaction keeps its intent until its cleanup is done). Facts files are left to
    the next compaction (a facts-only compaction may be running meanwhile).
    """
    removed = 0
    for topic, partition in partitions(filesystem, root):
        written = _read_intent(filesystem, _intent_path(root, topic, partition))
        if not written:
            continue
        live, superseded = resolve_markers(read_markers(filesystem, root, topic, partition))
        listed = {path for marker in live for path in marker.files}
        stale = [path for marker in superseded for path in marker.files]
        for relative in [*written, *stale]:
            if _personal(relative) and relative not in listed:
                removed += _remove(filesystem, f"{root}/{relative}")
        for relative in written:
            if _personal(relative):
                removed += _remove_temporaries(filesystem, f"{root}/{relative}")
    return removed


def _collapsed(filesystem: pafs.FileSystem, root: str, plan: Compaction) -> Compaction:
    logs = [r.dedup_log for r in plan.marker.ranges if r.dedup_log]
    infos = filesystem.get_file_info([f"{root}/{log}" for log in logs]) if logs else []
    gone = {
        log for log, info in zip(logs, infos, strict=True) if info.type == pafs.FileType.NotFound
    }
    ranges = collapse(plan.marker.ranges, gone)
    if ranges == plan.marker.ranges:
        return plan
    marker = msgspec.structs.replace(
        plan.marker, ranges=ranges, files=[path for path in plan.marker.files if path not in gone]
    )
    return Compaction(plan.replaced, marker, plan.merged)


def _apply(
    filesystem: pafs.FileSystem,
    root: str,
    plan: Compaction,
    encryption: ParquetEncryption | None,
    report: CompactionReport,
) -> None:
    marker = plan.marker
    # The intent names every file this compaction writes, before the first is written: a
    # kill before the marker leaves files nobody lists, and the next sweep finds them here
    # (none to write, none to name: the marker alone replaces the ranges).
    if plan.merged:
        _write_atomic(
            filesystem,
            f"{root}/{_intent_relative(marker.topic, marker.partition)}",
            msgspec.json.encode(sorted(plan.merged)),
        )
    for target, sources in sorted(plan.merged.items()):
        dataset = dataset_of(target)
        if dataset is None:  # plan.is_merged merges declared datasets only
            raise ValueError(f"{target} is in no declared dataset")
        keys = encryption if dataset.encrypted else None
        table = _read_all(filesystem, root, sources, keys, missing_ok=dataset.personal)
        _write_parquet(filesystem, f"{root}/{target}", table, keys)
        report.files_written += 1
    # The commit point: from this rename on, the compaction marker outranks the ranges.
    _write_atomic(filesystem, f"{root}/{path_of(marker)}", encode_marker(marker))
    report.compactions += 1
    report.ranges_replaced += len(plan.replaced)
    keep = set(marker.files)
    for replaced in plan.replaced:
        for relative in replaced.files:
            if relative not in keep:
                report.files_merged += _remove(filesystem, f"{root}/{relative}")
    for replaced in plan.replaced:
        _remove(filesystem, f"{root}/{path_of(replaced)}")
    if plan.merged:
        _remove(filesystem, f"{root}/{_intent_relative(marker.topic, marker.partition)}")


def _read_all(
    filesystem: pafs.FileSystem,
    root: str,
    sources: Sequence[str],
    encryption: ParquetEncryption | None,
    *,
    missing_ok: bool,
) -> pa.Table:
    tables = []
    for relative in sources:
        try:
            with filesystem.open_input_file(f"{root}/{relative}") as source:
                properties = encryption.decryption_properties() if encryption else None
                # ParquetFile: the file's own schema, without hive columns from its path.
                tables.append(pq.ParquetFile(source, decryption_properties=properties).read())
        except FileNotFoundError:
            if not missing_ok:
                raise  # a kept dataset loses files only to a compaction: this is an error
            # A file of a personal dataset the retention sweep removed whole (all its rows
            # expired).
            continue
    if not tables:
        raise FileNotFoundError(f"none of {list(sources)} exists under {root}")
    # Files of an earlier schema version read their missing columns as null (as the readers
    # do); the merged file has the union of the columns.
    return pa.concat_tables(tables, promote_options="default")


def _write_parquet(
    filesystem: pafs.FileSystem, path: str, table: pa.Table, encryption: ParquetEncryption | None
) -> None:
    write_parquet_atomic(
        filesystem,
        path,
        table,
        compression="zstd",
        encryption_properties=encryption.encryption_properties() if encryption else None,
        row_group_size=_ROW_GROUP_ROWS,
    )


def _write_atomic(filesystem: pafs.FileSystem, path: str, data: bytes) -> None:
    write_atomic(filesystem, path, lambda out: out.write(data))


def _remove(filesystem: pafs.FileSystem, path: str) -> int:
    return int(remove_quietly(filesystem, path))


def _remove_temporaries(filesystem: pafs.FileSystem, path: str) -> int:
    folder, name = path.rsplit("/", 1)
    selector = pafs.FileSelector(folder, allow_not_found=True)
    removed = 0
    for info in filesystem.get_file_info(selector):
        # Not a subject tool's ``.tmp-subject-`` copy: that tool removes its own leftovers.
        own = info.base_name.startswith(f"{name}{TMP_INFIX}") and "subject-" not in info.base_name
        if own and is_compacted(info.base_name):
            removed += _remove(filesystem, info.path)
    return removed


def _personal(relative: str) -> bool:
    dataset = dataset_of(relative)
    return dataset is not None and dataset.personal


def _intent_relative(topic: str, partition: int) -> str:
    return f"{INTENT_DIR}/{topic}/{partition}.json"


def _intent_path(root: str, topic: str, partition: int) -> str:
    return f"{root}/{_intent_relative(topic, partition)}"


def _read_intent(filesystem: pafs.FileSystem, path: str) -> list[str]:
    try:
        with filesystem.open_input_stream(path) as stream:
            return msgspec.json.decode(stream.read(), type=list[str])
    except FileNotFoundError:
        return []
