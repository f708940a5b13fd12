"""Fencing on the file side: overlapping markers are decided for the newest generation, by
recovery and by every reader, and recovery leaves only what live markers list.

The overlap shapes come from issue 14 (a worker evicted during a broker pause wrote p1
``4958-7930`` after its successor's ``4958-4962``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import msgspec
import pyarrow.fs as pafs
from hypothesis import given
from hypothesis import strategies as st

from schemas.commits import (
    CommitMarker,
    RangeCounts,
    committed_files,
    decode_marker,
    encode_marker,
    iter_markers,
    marker_path,
    path_of,
    read_markers,
    resolve_markers,
)
from streams.worker.sink import recover_partition, resume_point

TOPIC = "raw"
COUNTS = RangeCounts(raw=0, accepted=0, duplicates=0, dead_lettered={})


def _marker(first: int, last: int, generation: int, partition: int = 1) -> CommitMarker:
    stem = f"{TOPIC}+{partition}+{first}-{last}" + (f"-g{generation}" if generation else "")
    return CommitMarker(
        topic=TOPIC,
        partition=partition,
        first_offset=first,
        last_offset=last,
        files=[f"facts/date=2026-10-30/{stem}.parquet"],
        counts=COUNTS,
        watermark=None,
        consent_changes=[],
        sieve_version="test",
        generation=generation,
        member_id=f"member-{generation}",
    )


def _ranges(markers: list[CommitMarker]) -> list[tuple[int, int, int]]:
    return [(m.first_offset, m.last_offset, m.generation) for m in markers]


def test_an_evicted_writers_late_marker_loses_to_its_successors() -> None:
    successor = [_marker(4958, 4962, 7), _marker(4963, 8000, 7)]
    zombie = _marker(4958, 7930, 6)
    earlier = _marker(0, 4957, 6)

    live, superseded = resolve_markers([zombie, *successor, earlier])

    assert _ranges(live) == [(0, 4957, 6), (4958, 4962, 7), (4963, 8000, 7)]
    assert superseded == [zombie]


def test_markers_that_do_not_overlap_all_count_whatever_their_generation() -> None:
    markers = [_marker(0, 9, 3), _marker(10, 19, 1), _marker(20, 29, 2), _marker(0, 5, 1, 2)]
    live, superseded = resolve_markers(markers)
    assert superseded == []
    assert sorted(_ranges(live)) == sorted(_ranges(markers))


intervals = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, 15), st.integers(0, 5)), max_size=25
)


@given(intervals)
def test_live_markers_never_overlap_and_each_superseded_one_lost_to_a_newer_or_equal(
    drawn: list[tuple[int, int, int]],
) -> None:
    markers = [_marker(first, first + length, generation) for first, length, generation in drawn]
    live, superseded = resolve_markers(markers)

    assert len(live) + len(superseded) == len(markers)
    for a, b in itertools.pairwise(live):
        assert a.last_offset < b.first_offset
    for lost in superseded:
        winners = [
            m
            for m in live
            if m.first_offset <= lost.last_offset and lost.first_offset <= m.last_offset
        ]
        assert winners and max(m.generation for m in winners) >= lost.generation
    assert resolve_markers(live) == (live, [])  # resolving again changes nothing


def _write(root: Path, marker: CommitMarker, data_files: bool = True) -> None:
    path = root / path_of(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_marker(marker))
    if data_files:
        for relative in marker.files:
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(b"rows")


def test_readers_see_only_live_markers(tmp_path: Path) -> None:
    zombie = _marker(100, 300, 4)
    for marker in (_marker(0, 99, 4), _marker(100, 150, 5), zombie):
        _write(tmp_path, marker)
    filesystem = pafs.LocalFileSystem()

    assert _ranges(list(iter_markers(filesystem, str(tmp_path), TOPIC))) == [
        (0, 99, 4),
        (100, 150, 5),
    ]
    assert zombie.files[0] not in committed_files(filesystem, str(tmp_path), "facts")
    assert len(read_markers(filesystem, str(tmp_path), TOPIC, 1)) == 3


def test_recovery_removes_superseded_markers_and_every_unlisted_file(tmp_path: Path) -> None:
    live = [_marker(0, 99, 4), _marker(100, 150, 5)]
    zombie = _marker(100, 300, 4)
    for marker in (*live, zombie):
        _write(tmp_path, marker)
    day = tmp_path / "facts" / "date=2026-10-30"
    # An evicted writer's range that never got a marker, *below* the last live marker (the
    # old recovery kept those), a temporary file, and another partition's file.
    orphan = day / f"{TOPIC}+1+40-60-g3.parquet"
    temporary = day / f"{TOPIC}+1+151-200-g5.parquet.tmp-abc"
    staged_marker = tmp_path / (marker_path(TOPIC, 1, 151, 200, 5) + ".tmp-abc")
    other = day / f"{TOPIC}+2+0-10-g5.parquet"
    for path in (orphan, temporary, staged_marker, other):
        path.write_bytes(b"rows")

    recovered = recover_partition(pafs.LocalFileSystem(), str(tmp_path), TOPIC, 1)

    assert recovered.next_offset == 151
    assert _ranges(recovered.markers) == _ranges(live)
    assert not (tmp_path / path_of(zombie)).exists()
    assert not (tmp_path / zombie.files[0]).exists()
    for gone in (orphan, temporary, staged_marker):
        assert not gone.exists(), gone
    for kept in [tmp_path / f for m in live for f in m.files] + [other]:
        assert kept.exists(), kept


def test_a_partition_resumes_at_the_first_gap_the_log_still_holds() -> None:
    assert resume_point([]) == (None, [])
    tiled = [_marker(0, 9, 1), _marker(10, 19, 2)]
    assert resume_point(tiled) == (20, tiled)
    assert resume_point(tiled, log_start=0) == (20, tiled)
    gapped = [_marker(0, 9, 1), _marker(20, 29, 3)]
    assert resume_point(gapped, log_start=0) == (10, gapped[:1])
    # Retention deleted the gap: nothing to process again there.
    assert resume_point(gapped, log_start=20) == (30, gapped)
    # The first live marker is where the partition started (an operator's position).
    assert resume_point([_marker(10, 19, 2)], log_start=0) == (20, [_marker(10, 19, 2)])
    # Every live marker is older than the log start: resume where the log starts.
    assert resume_point(tiled, log_start=50) == (50, tiled)


def test_a_marker_written_before_fencing_still_reads_as_generation_zero(tmp_path: Path) -> None:
    legacy = {
        "topic": TOPIC,
        "partition": 0,
        "first_offset": 0,
        "last_offset": 9,
        "files": [],
        "counts": msgspec.to_builtins(COUNTS),
        "watermark": None,
        "consent_changes": [],
        "sieve_version": "0.1.0",
    }
    marker = decode_marker(msgspec.json.encode(legacy))
    assert (marker.generation, marker.member_id) == (0, "")
    assert marker_path(TOPIC, 0, 0, 9) == f"_commits/{TOPIC}/0/{0:020d}-{9:020d}.json"
    _write(tmp_path, marker)
    assert list(iter_markers(pafs.LocalFileSystem(), str(tmp_path), TOPIC)) == [marker]
