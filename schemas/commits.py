"""Commit markers: the record that one offset range of one input partition is fully written.

A range's output files count only once its marker exists (docs/architecture.md, "Exactly
once"). Readers of the datasets (aggregations, the retention sweep) list committed files
through :func:`committed_files`, never by globbing data folders, so they never see a range
that a crashed worker left half written.

Fencing (docs/architecture.md, "Fencing"): every marker carries the consumer-group
generation its writer owned the partition in. A worker evicted from the group can have its
last range's offset commit accepted just before the eviction and write that marker after
the next owner started over; such a range overlaps the new owner's. :func:`resolve_markers`
decides every overlap for the newest generation, and :func:`iter_markers` (so every reader)
sees only the live markers it keeps.

Compaction (:mod:`streams.compaction`): a *compaction marker* replaces a contiguous run of
live markers of one partition with one marker over their whole span, listing the merged
files (and the dedup logs, carried over); its ``compaction`` sequence (1, 2, ...) orders it
above every range marker and every earlier compaction of the partition, so readers see the
compaction marker and not the ranges it replaced (never both, never neither). ``ranges``
keeps what the worker's state rebuild needs of each replaced range (its dedup log, consent
changes and watermark): :func:`expand_marker`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator
from itertools import groupby, pairwise
from typing import Final

import msgspec
import pyarrow.fs as pafs

COMMITS_DIR: Final = "_commits"
_LISTINGS: Final = 5  # a listing that raced a compaction is taken again (read_markers)
# <first>-<last>.json (generation 0: written before fencing, or by tests),
# <first>-<last>-g<generation>.json, or a compaction's <first>-<last>[-g<generation>]-c<n>.json.
_MARKER_NAME = re.compile(r"^(\d{20})-(\d{20})(?:-g(\d+))?(?:-c(\d+))?\.json$")


class OutputCounts(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The rows a range wrote into one dataset (schemas.datasets)."""

    rows: int
    # Rows by the value of the dataset's ``count_by`` column (identifiable: by retention
    # class); empty for a dataset that declares none.
    by: dict[str, int] = msgspec.field(default_factory=dict)


# omit_defaults: a range without dropped properties writes no ``properties_dropped`` key.
class RangeCounts(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What became of each raw message of the range: raw = accepted + duplicates + dead-lettered,
    and the rows it wrote into each declared dataset."""

    raw: int
    accepted: int
    duplicates: int
    dead_lettered: dict[str, int]  # by reason code
    # By dataset name, every dataset the worker declares (schemas.datasets.WORKER_DATASETS)
    # when the range was written. Optional on the wire: markers written before the
    # declarations carry ``identifiable`` and ``facts`` instead (decode_marker reads them in).
    outputs: dict[str, OutputCounts] = msgspec.field(default_factory=dict)
    bytes_written: int = 0
    # Properties of custom events the policy does not let through (undeclared or declared
    # dropped), kept nowhere: the collector drops them first, so these came another way.
    properties_dropped: int = 0
    # The two keys of a marker written before the declarations (records by retention class,
    # fact rows); never written now. Read through :func:`upgrade_counts` only.
    legacy_identifiable: dict[str, int] = msgspec.field(default_factory=dict, name="identifiable")
    legacy_facts: int = msgspec.field(default=0, name="facts")

    def rows(self, dataset: str) -> int:
        """The rows the range wrote into ``dataset`` (0: none, or not declared then)."""
        counts = self.outputs.get(dataset)
        return 0 if counts is None else counts.rows

    def rows_by(self, dataset: str) -> dict[str, int]:
        """``dataset``'s rows by the value of its ``count_by`` column."""
        counts = self.outputs.get(dataset)
        return {} if counts is None else counts.by


# The names the two datasets of a marker written before the declarations had (and have).
_LEGACY_IDENTIFIABLE: Final = "identifiable"
_LEGACY_FACTS: Final = "facts"


def upgrade_counts(counts: RangeCounts) -> RangeCounts:
    """``counts`` with a marker's pre-declaration keys read into ``outputs`` (as is when it
    has ``outputs``): readers see one shape, whichever version wrote the marker.

    A marker written since the declarations lists every declared dataset in ``outputs``,
    an empty range too; one without any was written before them and carried both old keys.
    """
    if counts.outputs:
        return counts
    by_class = counts.legacy_identifiable
    return msgspec.structs.replace(
        counts,
        outputs={
            _LEGACY_IDENTIFIABLE: OutputCounts(sum(by_class.values()), dict(by_class)),
            _LEGACY_FACTS: OutputCounts(counts.legacy_facts),
        },
        legacy_identifiable={},
        legacy_facts=0,
    )


class CoveredRange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a compaction marker keeps of one range it replaced (or of several consecutive
    ones whose dedup logs were gone: ``dedup_log`` empty, their consent changes in order)."""

    first_offset: int
    last_offset: int
    generation: int
    dedup_log: str  # relative path, "" when none
    watermark: str | None
    consent_changes: list[tuple[str, str]]
    count: int = 1  # the worker ranges it stands for


class CommitMarker(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One committed offset range [first_offset, last_offset] of topic/partition."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    files: list[str]  # paths relative to the data root
    counts: RangeCounts
    # Max event hour (ISO 8601, UTC) of accepted events in the partition after this range.
    watermark: str | None
    # Consent state changes of the range: [pseudonymous consent key, "opt_out"|"opt_in"|...].
    consent_changes: list[tuple[str, str]]
    sieve_version: str
    # The consumer-group generation (and member) that owned the partition when the range's
    # offsets were committed; 0 for markers written without a group (tests) or before fencing.
    generation: int = 0
    member_id: str = ""
    # A compaction marker: its sequence in the partition (0: a range marker) and the ranges
    # it replaced, in offset order.
    compaction: int = 0
    ranges: list[CoveredRange] = msgspec.field(default_factory=list)


def range_count(marker: CommitMarker) -> int:
    """The worker ranges a marker stands for (a compaction marker: those it replaced)."""
    return sum(r.count for r in marker.ranges) if marker.compaction else 1


def expand_marker(marker: CommitMarker) -> list[CommitMarker]:
    """A compaction marker as the range markers it replaced, each listing its dedup log only
    (what the worker's state rebuild reads); a range marker as itself."""
    if not marker.compaction:
        return [marker]
    empty = RangeCounts(0, 0, 0, {})
    return [
        CommitMarker(
            topic=marker.topic,
            partition=marker.partition,
            first_offset=r.first_offset,
            last_offset=r.last_offset,
            files=[r.dedup_log] if r.dedup_log else [],
            counts=empty,
            watermark=r.watermark,
            consent_changes=r.consent_changes,
            sieve_version=marker.sieve_version,
            generation=r.generation,
        )
        for r in marker.ranges
    ]


def output_stem(
    topic: str, partition: int, first_offset: int, last_offset: int, generation: int = 0
) -> str:
    """The file stem every output of a range carries: ``<topic>+<partition>+<first>-<last>``,
    then ``-g<generation>`` when written in a group generation (two writers of one range,
    an evicted one and its successor, never share a file name)."""
    stem = f"{topic}+{partition}+{first_offset}-{last_offset}"
    return f"{stem}-g{generation}" if generation else stem


_STEM = re.compile(r"^(?:compacted\+)?([^+/]+)\+(\d+)\+(\d+)-(\d+)(?:-[gc]\d+)*\.parquet$")


def file_offsets(relative: str) -> tuple[str, int, int, int] | None:
    """``(topic, partition, first, last)``: the offsets a range's or a compaction's output
    file holds rows of, from its name (:func:`output_stem`, streams.compaction); None for
    any other name."""
    match = _STEM.match(relative.rsplit("/", 1)[-1])
    if match is None:
        return None
    topic, partition, first, last = match.groups()
    return topic, int(partition), int(first), int(last)


def marker_path(
    topic: str,
    partition: int,
    first_offset: int,
    last_offset: int,
    generation: int = 0,
    compaction: int = 0,
) -> str:
    name = f"{first_offset:020d}-{last_offset:020d}" + (f"-g{generation}" if generation else "")
    name += f"-c{compaction}" if compaction else ""
    return f"{COMMITS_DIR}/{topic}/{partition}/{name}.json"


def path_of(marker: CommitMarker) -> str:
    """Where ``marker`` lives, relative to the data root."""
    return marker_path(
        marker.topic,
        marker.partition,
        marker.first_offset,
        marker.last_offset,
        marker.generation,
        marker.compaction,
    )


def encode_marker(marker: CommitMarker) -> bytes:
    return msgspec.json.encode(marker)


def decode_marker(data: bytes) -> CommitMarker:
    """A marker of any version, its counts in today's shape (:func:`upgrade_counts`)."""
    marker = msgspec.json.decode(data, type=CommitMarker)
    if marker.counts.outputs:
        return marker
    return msgspec.structs.replace(marker, counts=upgrade_counts(marker.counts))


def resolve_markers(
    markers: Iterable[CommitMarker],
) -> tuple[list[CommitMarker], list[CommitMarker]]:
    """``(live, superseded)``: which markers count, deciding every overlap for the newest
    generation. Pure; both lists in (topic, partition, first offset) order.

    Per partition, markers are taken newest compaction first, then newest generation (then
    by offset, the wider first); a marker is live iff its range overlaps no live marker taken
    before it. One writer owns a partition per generation and writes its ranges one after
    the other, so live markers never overlap, and a late marker of an evicted writer loses
    to its successor's ranges wherever they meet. A compaction covers only live ranges that
    are not the partition's newest (streams.compaction), so no range of a later owner can
    meet it; it ranks first so that it replaces every range it covers, whatever their
    generations. Recovery deletes what is superseded; readers never see it.
    """
    live: list[CommitMarker] = []
    superseded: list[CommitMarker] = []

    def partition_of(marker: CommitMarker) -> tuple[str, int]:
        return marker.topic, marker.partition

    for _, group in groupby(sorted(markers, key=partition_of), key=partition_of):
        in_order = sorted(group, key=lambda m: (m.first_offset, m.last_offset))
        if all(a.last_offset < b.first_offset for a, b in pairwise(in_order)):
            live.extend(in_order)  # no overlap at all: the usual case, decided in one pass
            continue
        kept: list[CommitMarker] = []
        firsts: list[int] = []  # first offsets of ``kept``, sorted, for the overlap search
        by_rank = sorted(
            in_order,
            key=lambda m: (-m.compaction, -m.generation, m.first_offset, -m.last_offset),
        )
        for marker in by_rank:
            # The live marker starting at or before this one's last offset, nearest first,
            # is the only one that can overlap it (live markers do not overlap each other).
            at = bisect.bisect_right(firsts, marker.last_offset)
            if at and kept[at - 1].last_offset >= marker.first_offset:
                superseded.append(marker)
                continue
            firsts.insert(at, marker.first_offset)
            kept.insert(at, marker)
        live.extend(kept)
    superseded.sort(
        key=lambda m: (m.topic, m.partition, m.first_offset, m.generation, m.compaction)
    )
    return live, superseded


def read_markers(
    filesystem: pafs.FileSystem, root: str, topic: str | None = None, partition: int | None = None
) -> list[CommitMarker]:
    """Every commit marker under ``root`` (optionally of one topic / partition), live or
    superseded, in (topic, partition, first offset) order. Readers want :func:`iter_markers`."""
    base = f"{root.rstrip('/')}/{COMMITS_DIR}"
    if topic is not None:
        base += f"/{topic}"
        if partition is not None:
            base += f"/{partition}"
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    for _ in range(_LISTINGS):
        infos = [
            info
            for info in filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File and _MARKER_NAME.match(info.base_name)
        ]
        markers = []
        vanished = False
        for info in infos:
            try:
                with filesystem.open_input_stream(info.path) as stream:
                    markers.append(decode_marker(stream.read()))
            except FileNotFoundError:
                vanished = True
        # A marker is removed only once superseded: by a fencing successor (a recovery
        # removes it; skipping it changes nothing) or by a compaction, whose marker was
        # renamed into place before and may be missing from this listing. Listing again
        # sees it: without that, the compacted span would be seen neither old nor new.
        if not vanished:
            break
    markers.sort(key=lambda m: (m.topic, m.partition, m.first_offset, m.generation, m.compaction))
    return markers


def iter_markers(
    filesystem: pafs.FileSystem, root: str, topic: str | None = None, partition: int | None = None
) -> Iterator[CommitMarker]:
    """Every live commit marker under ``root`` (optionally of one topic / partition), in
    (topic, partition, first offset) order: superseded ones (:func:`resolve_markers`) never
    count."""
    live, _ = resolve_markers(read_markers(filesystem, root, topic, partition))
    yield from live


def committed_files(
    filesystem: pafs.FileSystem, root: str, dataset: str | None = None
) -> list[str]:
    """Relative paths of every committed output file, optionally of one dataset (first folder)."""
    files = []
    for marker in iter_markers(filesystem, root):
        for path in marker.files:
            if dataset is None or path.split("/", 1)[0] == dataset:
                files.append(path)
    return files
