"""Erasure and export reach every copy: temporary files, deep nesting, any dead letter.

Issue 14, item 7: a killed erase or sweep left a ``.tmp-`` copy that later erasures and
exports skipped; a dead letter nested 985 levels deep crashed erase and export.
"""

from __future__ import annotations

import io
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.privacy.retention import load_policy
from streams.subject.access import (
    dead_letter_document,
    dead_letter_of,
    export_subject,
    iter_subject_tables,
    mentions,
    write_export,
)
from streams.subject.erasure import erase_subject
from streams.subject.identifiable_store import Subject, list_files
from streams.subject.retention_sweep import sweep
from tests.fixtures.identifiable import new_encryption, record, write_identifiable

FS = pafs.LocalFileSystem()
POLICY = load_policy()
T = datetime(2024, 3, 20, 8, tzinfo=UTC)
ENC = new_encryption()
PERSON = Subject("acct-1", "user-1")


def _mine_and_theirs(root: Path) -> Path:
    (path,) = write_identifiable(
        root,
        [
            record("mine-1", occurred_at=T),
            record("mine-2", occurred_at=T + timedelta(hours=1)),
            record("theirs", user_id="user-2", occurred_at=T),
        ],
        ENC,
    )
    return path


def _copy_without(root: Path, path: Path, name: str, *without: str) -> Path:
    """A temporary file as a killed rewrite leaves it: the file's rows minus some, encrypted."""
    rows = [record(e, occurred_at=T) for e in ("mine-1", "mine-2") if e not in without]
    rows += [record("theirs", user_id="user-2", occurred_at=T)]
    scratch = root / "scratch"
    (written,) = write_identifiable(scratch, rows, ENC)
    copy = path.with_name(path.name + name)
    written.rename(copy)
    return copy


def _person_rows_anywhere(root: Path) -> int:
    """The person's rows in every file under identifiable/, temporary ones included."""
    import pyarrow.parquet as pq

    found = 0
    for path in (root / "identifiable").rglob("*"):
        if path.is_file():
            rows = pq.ParquetFile(
                str(path), decryption_properties=ENC.decryption_properties()
            ).read()
            mine = [
                a == "acct-1" and u == "user-1"
                for a, u in zip(
                    rows["account_id"].to_pylist(), rows["user_id"].to_pylist(), strict=True
                )
            ]
            found += sum(mine)
    return found


# --- leftovers of killed sweeps and erasures -------------------------------------------------


def test_an_erasure_removes_a_killed_sweeps_copy_that_holds_the_person(tmp_path: Path) -> None:
    path = _mine_and_theirs(tmp_path)
    # A sweep killed before its rename: a copy holding everyone's unexpired rows.
    copy = _copy_without(tmp_path, path, ".tmp-subject-5e1f")
    assert _person_rows_anywhere(tmp_path) == 4

    report = erase_subject(FS, str(tmp_path), ENC, POLICY, "acct-1", "user-1")
    assert report.leftovers_removed == 1 and report.complete
    assert not copy.exists()
    assert _person_rows_anywhere(tmp_path) == 0
    assert export_subject(FS, str(tmp_path), ENC, "acct-1", "user-1").rows.num_rows == 0


def test_an_erasure_of_someone_else_killed_leaves_a_copy_the_next_one_removes(
    tmp_path: Path,
) -> None:
    path = _mine_and_theirs(tmp_path)
    # Erasing user-2 was killed before its rename: the copy still holds user-1's rows.
    _copy_without(tmp_path, path, ".tmp-subject-aa01")
    dry = erase_subject(FS, str(tmp_path), ENC, POLICY, "acct-1", "user-1", dry_run=True)
    assert dry.leftovers_removed == 1  # found; a dry run removes nothing
    assert _person_rows_anywhere(tmp_path) == 4
    erase_subject(FS, str(tmp_path), ENC, POLICY, "acct-1", "user-1")
    assert _person_rows_anywhere(tmp_path) == 0
    assert [p.name for p in (tmp_path / "identifiable").rglob("*") if p.is_file()] == [path.name]


def test_an_export_counts_leftover_copies_and_does_not_export_them_twice(tmp_path: Path) -> None:
    path = _mine_and_theirs(tmp_path)
    _copy_without(tmp_path, path, ".tmp-subject-77")
    tables = iter_subject_tables(FS, str(tmp_path), ENC, PERSON)
    out = io.StringIO()
    summary = write_export(tables, None, PERSON, out)
    assert summary.rows == 2  # mine-1 and mine-2, once each
    assert json.loads(out.getvalue().splitlines()[-1])["leftover_copies"] == 1


# --- a worker's files in flight ----------------------------------------------------------------


def test_a_workers_file_in_flight_is_read_never_deleted_and_blocks_a_complete_erasure(
    tmp_path: Path,
) -> None:
    path = _mine_and_theirs(tmp_path)
    in_flight = _copy_without(tmp_path, path, ".tmp-0123456789abcdef")
    before = in_flight.read_bytes()

    export = export_subject(FS, str(tmp_path), ENC, "acct-1", "user-1")
    assert export.rows.num_rows == 4  # the uncommitted copy is data held too

    report = erase_subject(FS, str(tmp_path), ENC, POLICY, "acct-1", "user-1")
    assert not report.complete
    assert report.in_flight_not_erased == (str(in_flight.relative_to(tmp_path)),)
    assert in_flight.read_bytes() == before  # a worker's write is never touched

    # The worker's recovery removes it (or renames it into place); then the erasure completes.
    in_flight.unlink()
    assert erase_subject(FS, str(tmp_path), ENC, POLICY, "acct-1", "user-1").complete


def test_an_unreadable_file_in_flight_may_hold_anyone(tmp_path: Path) -> None:
    path = _mine_and_theirs(tmp_path)
    half = path.with_name(path.name + ".tmp-feed")
    half.write_bytes(path.read_bytes()[:100])  # a write in progress: no footer yet
    report = erase_subject(FS, str(tmp_path), ENC, POLICY, "acct-9", "nobody")
    assert report.in_flight_not_erased == (str(half.relative_to(tmp_path)),)
    tables = iter_subject_tables(FS, str(tmp_path), ENC, PERSON)
    assert sum(t.num_rows for t in tables) == 2
    assert tables.in_flight_unreadable == [str(half.relative_to(tmp_path))]


def test_a_stray_file_is_searched_not_skipped(tmp_path: Path) -> None:
    path = _mine_and_theirs(tmp_path)
    stray = path.with_name("backup-copy.bin")
    stray.write_bytes(path.read_bytes())
    assert [f.relative_path.rsplit("/", 1)[1] for f in list_files(FS, str(tmp_path)).files] == [
        "backup-copy.bin",
        path.name,
    ]
    erase_subject(FS, str(tmp_path), ENC, POLICY, "acct-1", "user-1")
    assert _person_rows_anywhere(tmp_path) == 0


def test_a_sweep_and_erasure_list_a_worker_leftover_but_leave_it(tmp_path: Path) -> None:
    path = _mine_and_theirs(tmp_path)
    worker_tmp = path.with_name(path.name + ".tmp-abc")
    worker_tmp.write_bytes(b"partial")
    listing = list_files(FS, str(tmp_path))
    assert [f.retention_class for f in listing.in_flight] == ["traffic"]  # from its final name
    report = sweep(FS, str(tmp_path), POLICY, ENC, T + timedelta(days=400), {})
    assert report.in_flight_files == 1 and worker_tmp.read_bytes() == b"partial"


# --- deep nesting --------------------------------------------------------------------------------


def _nested(depth: int, inner: str = '"acct-1", "user-1"') -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()


@pytest.mark.parametrize("depth", [985, 1_000, sys.getrecursionlimit() * 3, 100_000])
def test_a_deeply_nested_dead_letter_is_searched_without_raising(depth: int) -> None:
    value = _nested(depth)
    # Too deep to parse: searched as raw bytes, where both ids are whole tokens.
    assert mentions(value, (), PERSON) is True
    assert mentions(value, (), PERSON, broad=True) is True
    assert mentions(_nested(depth, '"acct-1"'), (), PERSON) is False
    letter = dead_letter_of(0, 1, 1_710_000_000_000, b"k", value, [("h", None)])
    assert letter is not None
    assert dead_letter_document(letter)["value"] == value.decode()


def test_deeply_nested_properties_are_exported_as_their_text(tmp_path: Path) -> None:
    deep = {"a": json.loads(_nested(900, "1"))}  # parses; too deep to write back as JSON lines
    rows = [record("deep", occurred_at=T, properties={"x": 1})]
    rows[0]["properties"] = json.dumps(deep)
    write_identifiable(tmp_path, rows, ENC)
    out = io.StringIO()

    def at_depth(levels: int) -> None:
        # Called from deep inside a stack, as under a busy CLI; must not raise anyway.
        if levels:
            return at_depth(levels - 1)
        write_export(iter_subject_tables(FS, str(tmp_path), ENC, PERSON), None, PERSON, out)
        return None

    at_depth(50)
    (line, _summary) = out.getvalue().splitlines()
    exported = json.loads(line)["properties"]
    assert exported == rows[0]["properties"] or exported == deep


# --- fuzz: the dead-letter reader takes anything ---------------------------------------------

_HEADER_VALUES = st.one_of(st.none(), st.binary(max_size=64))
_HEADERS = st.lists(st.tuples(st.text(max_size=16), _HEADER_VALUES), max_size=5)
_VALUES = st.one_of(
    st.binary(max_size=512),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=30,
    ).map(lambda document: json.dumps(document).encode()),
    st.integers(1, 5_000).map(_nested),
)


@given(
    value=_VALUES,
    headers=_HEADERS,
    key=st.binary(max_size=64),
    timestamp_ms=st.one_of(st.integers(-(2**63), 2**63 - 1), st.just(-1)),
    account=st.text(min_size=1, max_size=12),
    user=st.one_of(st.none(), st.text(min_size=1, max_size=12)),
)
def test_any_dead_letter_is_read_searched_and_exported_without_raising(
    value: bytes,
    headers: list[tuple[str, bytes | None]],
    key: bytes,
    timestamp_ms: int,
    account: str,
    user: str | None,
) -> None:
    letter = dead_letter_of(3, 42, timestamp_ms, key, value, headers)
    assert letter is not None
    assert len(letter.headers) == len(headers)
    subject = Subject(account, user)
    narrow = mentions(letter.value, letter.headers, subject)
    broad = mentions(letter.value, letter.headers, subject, broad=True)
    assert broad or not narrow  # an export never holds a letter the erasure would leave
    out = io.StringIO()
    write_export(iter([pa.table({"x": []})]), [letter], subject, out)
    (line, _summary) = out.getvalue().splitlines()
    document = json.loads(line)
    assert document["kind"] == "dead_letter" and document["offset"] == 42
    assert len(document["headers"]) == len(headers)


def test_a_tombstone_is_no_letter() -> None:
    assert dead_letter_of(0, 0, 0, b"k", None, None) is None
