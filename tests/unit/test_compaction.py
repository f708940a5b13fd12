"""Compaction (issue 10.3): merged files and markers, every reader's view unchanged, what a
compaction may cover, and how its marker ranks against fencing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import msgspec
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from schemas.commits import (
    CommitMarker,
    OutputCounts,
    RangeCounts,
    committed_files,
    read_markers,
    resolve_markers,
)
from streams.compaction.plan import plan_compaction, spans
from streams.encryption import ParquetEncryption
from streams.privacy.keyring import Keyring, write_new_keyring
from tests.fixtures.compaction_data import TOPIC, views, write_history
from tests.fixtures.compaction_data import compact_all as _compact
from tests.fixtures.facts import fact, facts_table, write_committed_facts


@pytest.fixture
def encryption(tmp_path: Path) -> ParquetEncryption:
    write_new_keyring(tmp_path / "keys.json")
    return ParquetEncryption(*Keyring.load(tmp_path / "keys.json").encryption_keys())


def _files(root: Path, dataset: str) -> list[Path]:
    return sorted(p for p in (root / dataset).rglob("*") if p.is_file())


def test_compaction_changes_no_view_and_leaves_a_few_files(
    tmp_path: Path, encryption: ParquetEncryption
) -> None:
    root = tmp_path / "data"
    write_history(root, encryption, ranges=8)
    truth = views(root, encryption)
    facts_before = len(_files(root, "facts"))

    report = _compact(root, encryption)

    assert views(root, encryption) == truth
    assert report.compactions == 2  # one per partition
    assert report.ranges_replaced == 14  # all but each partition's newest
    markers = read_markers(pafs.LocalFileSystem(), str(root))
    assert len(markers) == 4  # nothing superseded stays behind
    assert len(_files(root, "facts")) < facts_before
    # Every identifiable file still opens only with the keyring.
    for path in _files(root, "identifiable"):
        with pytest.raises(OSError, match="encrypted"):
            pq.read_table(path)


def test_a_second_compaction_merges_the_markers_again(
    tmp_path: Path, encryption: ParquetEncryption
) -> None:
    root = tmp_path / "data"
    write_history(root, encryption, ranges=4)
    _compact(root, encryption)
    write_history(tmp_path / "more", encryption, ranges=8)  # the same stream, further on
    # The ranges after the first four, as the worker would have committed them since.
    for path in sorted((tmp_path / "more").rglob("*")):
        relative = path.relative_to(tmp_path / "more")
        if path.is_file() and not (root / relative).exists() and "+0-" not in path.name:
            first = _first_offset(path.name)
            if first is not None and first >= 4 * 30:
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                (root / relative).write_bytes(path.read_bytes())
    truth = views(root, encryption)

    report = _compact(root, encryption)

    assert views(root, encryption) == truth
    markers = read_markers(pafs.LocalFileSystem(), str(root))
    live, superseded = resolve_markers(markers)
    assert superseded == []
    # Per partition: one compaction marker (the second, absorbing the first) and the newest.
    assert [(m.partition, m.compaction) for m in live] == [(0, 2), (0, 0), (1, 2), (1, 0)]
    # Per partition: the first compaction, the range it left (then the newest), and the
    # new ranges but the newest.
    assert report.ranges_replaced == 2 * (1 + 1 + 3)


def _first_offset(name: str) -> int | None:
    if name.endswith(".json"):
        return int(name.split("-", 1)[0])
    parts = name.split("+")
    if len(parts) < 3 or parts[0] == "compacted":
        return None
    return int(parts[2].split("-", 1)[0])


def test_facts_only_compaction_keeps_identifiable_files_as_they_are(
    tmp_path: Path, encryption: ParquetEncryption
) -> None:
    root = tmp_path / "data"
    write_history(root, encryption, ranges=6)
    truth = views(root, encryption)
    identifiable = _files(root, "identifiable")

    _compact(root, None)

    assert views(root, encryption) == truth
    assert _files(root, "identifiable") == identifiable
    # A later run with the keyring merges them (the compaction marker still carries them).
    _compact(root, encryption)
    assert views(root, encryption) == truth
    assert len(_files(root, "identifiable")) < len(identifiable)


def test_open_days_are_not_compacted(tmp_path: Path, encryption: ParquetEncryption) -> None:
    root = tmp_path / "data"
    write_history(root, encryption, ranges=6, days=3)
    # Only the first day is closed; every range holds a late fact of it, so only the ranges
    # of the first day alone qualify.
    report = _compact(root, encryption, last=date(2024, 3, 1))
    live, _ = resolve_markers(read_markers(pafs.LocalFileSystem(), str(root)))
    for marker in live:
        if marker.compaction:
            assert all("date=2024-03-01" in path for path in marker.files if "date=" in path)
    assert report.compactions == 2


# --- what a compaction may cover (pure) --------------------------------------------------------


def _marker(first: int, last: int, day: str = "2024-03-01", **fields: object) -> CommitMarker:
    values: dict[str, object] = {
        "topic": TOPIC,
        "partition": 0,
        "first_offset": first,
        "last_offset": last,
        "files": [f"facts/date={day}/{TOPIC}+0+{first}-{last}.parquet"],
        "counts": RangeCounts(1, 1, 0, {}, {"facts": OutputCounts(1)}),
        "watermark": None,
        "consent_changes": [],
        "sieve_version": "test",
        **fields,
    }
    return CommitMarker(**values)  # type: ignore[arg-type]


def _spans(live: list[CommitMarker], published: list[tuple[int, int]]) -> list[list[int]]:
    found = spans(live, date(2024, 3, 1), (), published, mergeable=False)
    return [[m.first_offset for m in span] for span in found]


def test_the_newest_marker_is_never_compacted() -> None:
    live = [_marker(0, 9), _marker(10, 19), _marker(20, 29)]
    assert _spans(live, []) == [[0, 10]]


def test_a_span_is_wholly_inside_or_outside_one_cursor_interval() -> None:
    live = [_marker(i * 10, i * 10 + 9) for i in range(7)]
    # Published through 29: the ranges up to it compact together, the later ones apart.
    assert _spans(live, [(0, 29)]) == [[0, 10, 20], [30, 40, 50]]
    # A range the cursor holds in part (never from the worker, but a compaction must not
    # make it worse) is left alone.
    assert _spans(live, [(0, 34)]) == [[0, 10, 20], [40, 50]]


def test_gaps_open_days_and_held_days_break_spans() -> None:
    live = [
        _marker(0, 9),
        _marker(10, 19),
        _marker(30, 39),  # a gap before (fencing)
        _marker(40, 49),
        _marker(50, 59, day="2024-03-02"),  # not closed
        _marker(60, 69),
        _marker(70, 79),
        _marker(80, 89),
    ]
    assert _spans(live, []) == [[0, 10], [30, 40], [60, 70]]
    held = spans(live, date(2024, 3, 1), {date(2024, 3, 1)}, [], mergeable=False)
    assert held == []


def test_a_compaction_marker_outranks_the_ranges_it_covers_whatever_their_generation() -> None:
    ranges = [_marker(0, 9, generation=3), _marker(10, 19, generation=4)]
    compaction = _marker(0, 19, generation=4, compaction=1)
    # An evicted writer's late range overlapping the compaction (generation 5) cannot
    # supersede it: a compaction covers no partition's newest range (the only one such a
    # range can meet); keeping it whole loses nothing, superseding it would drop it all.
    zombie = _marker(15, 24, generation=5)
    live, superseded = resolve_markers([*ranges, compaction, zombie])
    assert live == [compaction]
    assert sorted(m.first_offset for m in superseded) == [0, 10, 15]
    # A later compaction outranks an earlier one.
    wider = _marker(0, 29, generation=4, compaction=2)
    live, _ = resolve_markers([compaction, wider, _marker(20, 29)])
    assert live == [wider]


def test_ranges_whose_dedup_logs_are_gone_collapse_into_one() -> None:
    from schemas.commits import CoveredRange
    from streams.compaction.plan import collapse

    ranges = [
        CoveredRange(i * 10, i * 10 + 9, 0, f"_dedup/t/0/{i}.parquet", None, [(f"c{i}", "opt_out")])
        for i in range(5)
    ]
    gone = {"_dedup/t/0/0.parquet", "_dedup/t/0/1.parquet", "_dedup/t/0/2.parquet"}
    collapsed = collapse(ranges, gone)
    # The first three as one (their consent changes in order), the two within the horizon.
    assert [(r.first_offset, r.last_offset, r.dedup_log, r.count) for r in collapsed] == [
        (0, 29, "", 3),
        (30, 39, "_dedup/t/0/3.parquet", 1),
        (40, 49, "_dedup/t/0/4.parquet", 1),
    ]
    assert collapsed[0].consent_changes == [("c0", "opt_out"), ("c1", "opt_out"), ("c2", "opt_out")]


def test_a_file_alone_in_its_folder_is_kept_as_it_is_then_merged_with_the_next() -> None:
    alone = _marker(0, 9)
    alone = msgspec.structs.replace(
        alone, files=[*alone.files, f"facts/date=2024-02-29/{TOPIC}+0+0-9.parquet"]
    )
    span = [alone, _marker(10, 19)]
    plan = plan_compaction(span, 1, identifiable=False, sieve_version="test")
    # 2024-03-01 has a file of each range: merged; 2024-02-29 one: carried by its name.
    assert list(plan.merged.values()) == [
        (
            f"facts/date=2024-03-01/{TOPIC}+0+0-9.parquet",
            f"facts/date=2024-03-01/{TOPIC}+0+10-19.parquet",
        )
    ]
    assert f"facts/date=2024-02-29/{TOPIC}+0+0-9.parquet" in plan.marker.files
    # The next compaction merges it with the folder's next range, and keeps the merged file.
    later = _marker(20, 29, day="2024-02-29")
    again = plan_compaction([plan.marker, later], 2, identifiable=False, sieve_version="test")
    assert list(again.merged.values()) == [
        (
            f"facts/date=2024-02-29/{TOPIC}+0+0-9.parquet",
            f"facts/date=2024-02-29/{TOPIC}+0+20-29.parquet",
        )
    ]
    assert set(plan.merged) <= set(again.marker.files)
    # An encrypted file alone is written again all the same (under the active key).
    personal = "identifiable/retention_class=r/region=eu/date=2024-03-01/x+0+0-9.parquet"
    lone = msgspec.structs.replace(_marker(0, 9), files=[personal])
    assert list(
        plan_compaction([lone, _marker(10, 19, day="2024-03-02")], 1, True, "t").merged.values()
    ) == [(personal,)]


def test_a_compaction_of_lone_files_writes_no_file_and_changes_no_view(tmp_path: Path) -> None:
    root = tmp_path / "data"
    # One range a day, each day's facts in one range: every folder holds one file.
    for number in range(3):
        day = datetime(2024, 3, 1 + number, tzinfo=UTC)
        rows = [fact(day + timedelta(hours=h), event_key=f"{number}-{h}") for h in range(3)]
        write_committed_facts(root, facts_table(rows), first_offset=3 * number, topic=TOPIC)
    filesystem = pafs.LocalFileSystem()
    before = {path: (root / path).read_bytes() for path in committed_files(filesystem, str(root))}

    report = _compact(root, None)

    assert (report.compactions, report.ranges_replaced, report.files_written) == (1, 2, 0)
    after = committed_files(filesystem, str(root))
    assert sorted(after) == sorted(before)  # the same files, none written again
    assert all((root / path).read_bytes() == data for path, data in before.items())
    assert [m.compaction for m in read_markers(filesystem, str(root))] == [1, 0]
    assert not list(root.rglob("*.tmp-*")) and not (root / "_compaction").exists()
