"""The worker's datasets, declared once (schemas/datasets.py), and the code that iterates over
the declarations instead of naming datasets (issue 11, item 2)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from pathlib import Path

import msgspec
import pyarrow as pa
import pytest

from aggregations import publish
from aggregations.schemas import ANALYTICS_DATASET, PUBLISHED_DATASETS
from aggregations.storage import resolve_root
from schemas import datasets
from schemas.arrow import IDENTIFIABLE
from schemas.commits import OutputCounts, decode_marker, read_markers
from schemas.datasets import (
    DEAD_LETTERS,
    FACTS_DATASET,
    IDENTIFIABLE_DATASET,
    PERSONAL_DATASETS,
    WORKER_DATASETS,
    Dataset,
    dataset_of,
)
from schemas.decode import Rejection
from streams.compaction.plan import file_day, is_merged
from streams.privacy.keyring import Keyring
from streams.privacy.split import TABLE_BUILDERS
from streams.settings import Settings
from streams.subject import identifiable_store
from streams.subject.erasure import erase_subject
from streams.subject.identifiable_store import Subject, list_files, read_rows, subject_mask
from streams.topics import dead_letter_topic_spec
from streams.worker import deadletter, sink
from streams.worker.deadletter import dead_letter
from streams.worker.pipeline import PartitionPipeline, RawRecord
from streams.worker.sink import RangeWriter
from tests.fixtures.facts import fact, facts_table
from tests.fixtures.identifiable import FS, POLICY, new_encryption, record, write_identifiable
from tests.fixtures.pipeline_context import default_context
from tests.fixtures.raw_events import raw_event

DAY = datetime(2026, 10, 30, 9, tzinfo=UTC)


def test_each_declaration_names_its_schema_and_version() -> None:
    for dataset in (*WORKER_DATASETS, *PUBLISHED_DATASETS):
        metadata = dataset.schema.metadata
        assert metadata[b"sieve.dataset"].decode() == dataset.name
        assert dataset.version == metadata[b"sieve.schema_version"].decode()
        assert dataset.date_column in dataset.schema.names
        for key in dataset.partition_keys:
            assert key == "date" or key in dataset.schema.names
    assert [d.name for d in WORKER_DATASETS] == ["identifiable", "facts"]
    assert PERSONAL_DATASETS == (IDENTIFIABLE_DATASET,)
    assert IDENTIFIABLE_DATASET.encrypted and not FACTS_DATASET.encrypted


def test_a_file_path_reads_back_as_its_partition() -> None:
    values = {"retention_class": "traffic", "region": "eu", "date": "2026-10-30"}
    path = IDENTIFIABLE_DATASET.file_path(values, "raw+0+0-9")
    assert (
        path == "identifiable/retention_class=traffic/region=eu/date=2026-10-30/raw+0+0-9.parquet"
    )
    assert IDENTIFIABLE_DATASET.partition_of(path) == values
    assert dataset_of(path) is IDENTIFIABLE_DATASET
    assert dataset_of("facts/date=2026-10-30/x.parquet") is FACTS_DATASET
    assert dataset_of("_dedup/raw/0/x.parquet") is None
    for stray in (
        "identifiable/region=eu/retention_class=traffic/date=2026-10-30/f.parquet",
        "identifiable/retention_class=traffic/region=eu/date=2026-13-01/f.parquet",
        "identifiable/retention_class=traffic/region=eu/f.parquet",
        "facts/date=2026-10-30/f.parquet",
    ):
        assert IDENTIFIABLE_DATASET.partition_of(stray) is None, stray


def _tables() -> dict[str, pa.Table]:
    identifiable = pa.Table.from_pylist(
        [record("e-1", occurred_at=DAY), record("e-2", occurred_at=DAY, type="payment")],
        schema=IDENTIFIABLE,
    )
    facts = facts_table([fact(DAY.replace(minute=0)), fact(DAY.replace(day=31, minute=0))])
    return {"identifiable": identifiable, "facts": facts}


def test_the_sink_plans_a_file_per_declared_partition() -> None:
    planned = sink.plan_outputs("raw", 0, 0, 9, _tables())
    assert [(p.relative_path, p.table.num_rows, p.encrypted) for p in planned] == [
        (
            "identifiable/retention_class=billing/region=eu/date=2026-10-30/raw+0+0-9.parquet",
            1,
            True,
        ),
        (
            "identifiable/retention_class=traffic/region=eu/date=2026-10-30/raw+0+0-9.parquet",
            1,
            True,
        ),
        ("facts/date=2026-10-30/raw+0+0-9.parquet", 1, False),
        ("facts/date=2026-10-31/raw+0+0-9.parquet", 1, False),
    ]


def _declare(monkeypatch: pytest.MonkeyPatch, *extra: Dataset) -> None:
    """Add declarations, as a new dataset in schemas/datasets.py would."""
    every = (*WORKER_DATASETS, *extra)
    monkeypatch.setattr(datasets, "WORKER_DATASETS", every)
    monkeypatch.setattr(
        identifiable_store, "PERSONAL_DATASETS", tuple(d for d in every if d.personal)
    )


def test_a_new_declaration_is_planned_without_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    by_type = dataclasses.replace(
        FACTS_DATASET,
        name="facts_by_type",
        folder="facts_by_type",
        partition_keys=("type", "date"),
    )
    _declare(monkeypatch, by_type)
    tables = _tables()
    planned = sink.plan_outputs("raw", 0, 0, 9, {**tables, "facts_by_type": tables["facts"]})
    assert [p.relative_path for p in planned if p.relative_path.startswith("facts_by_type/")] == [
        "facts_by_type/type=request/date=2026-10-30/raw+0+0-9.parquet",
        "facts_by_type/type=request/date=2026-10-31/raw+0+0-9.parquet",
    ]


def test_compaction_merges_every_declared_dataset_and_decrypts_only_with_the_keyring(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    facts_by_type = dataclasses.replace(FACTS_DATASET, name="facts_by_type", folder="facts_by_type")
    _declare(monkeypatch, facts_by_type)
    assert is_merged("facts_by_type/date=2026-10-30/raw+0+0-9.parquet", identifiable=False)
    assert is_merged("facts/date=2026-10-30/raw+0+0-9.parquet", identifiable=False)
    path = "identifiable/retention_class=traffic/region=eu/date=2026-10-30/raw+0+0-9.parquet"
    assert not is_merged(path, identifiable=False)
    assert is_merged(path, identifiable=True)
    assert not is_merged("_dedup/raw/0/raw+0+0-9.parquet", identifiable=True)


def test_an_erasure_reaches_every_personal_dataset_without_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = dataclasses.replace(
        IDENTIFIABLE_DATASET, name="identifiable_copy", folder="identifiable_copy"
    )
    _declare(monkeypatch, copy)
    enc = new_encryption()
    rows = [record("t-1"), record("t-2", account_id="acct-2")]
    write_identifiable(tmp_path, rows, enc)
    write_identifiable(tmp_path / "elsewhere", rows, enc)
    (tmp_path / "elsewhere" / "identifiable").rename(tmp_path / "identifiable_copy")

    listed = list_files(FS, str(tmp_path)).files
    assert sorted(f.relative_path.split("/", 1)[0] for f in listed) == [
        "identifiable",
        "identifiable_copy",
    ]
    assert {(f.retention_class, f.region) for f in listed} == {("traffic", "eu")}
    erase_subject(FS, str(tmp_path), enc, POLICY, "acct-1")
    for file in list_files(FS, str(tmp_path)).files:
        assert read_rows(FS, file, enc)["event_id"].to_pylist() == ["t-2"], file.relative_path


def test_publish_lays_out_every_published_declaration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    releases = dataclasses.replace(ANALYTICS_DATASET, name="releases", folder="published/releases")
    monkeypatch.setattr(publish, "PUBLISHED_DATASETS", (*PUBLISHED_DATASETS, releases))
    root = resolve_root(str(tmp_path))
    assert not publish.layout_complete(root)
    publish.ensure_layout(root)
    assert publish.layout_complete(root)
    assert sorted(root.list("published")) == [
        "published/analytics/_schema.parquet",
        "published/metering/_schema.parquet",
        "published/releases/_schema.parquet",
    ]


def _event(event_id: str, kind: str, **fields: object) -> bytes:
    return raw_event(event_id, kind, **{"user_id": "user-1", **fields})


def test_a_new_declaration_flows_through_the_buffer_the_writer_and_the_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_type = dataclasses.replace(
        FACTS_DATASET,
        name="facts_by_type",
        folder="facts_by_type",
        partition_keys=("type", "date"),
        count_by="type",
    )
    _declare(monkeypatch, by_type)
    # Its table builder, registered where the split's builders are (the facts' rows again).
    monkeypatch.setitem(TABLE_BUILDERS, "facts_by_type", TABLE_BUILDERS["facts"])
    kinds = ["page_view", "request", "page_view", "login"]
    # The login carries an IP address: its own record and a traffic record holding the IP.
    values = [_event(f"e{i}", kind) for i, kind in enumerate(kinds[:-1])]
    values.append(_event("e3", "login", ip="192.0.2.1"))
    pipeline = PartitionPipeline("raw", 0, default_context(Keyring.generate()))
    arrival = 1_793_361_600_000  # 2026-10-30T12:00Z
    assert pipeline.process([RawRecord(i, arrival, v) for i, v in enumerate(values)]) == []
    # What roll_max_records counts: accepted events, whatever the datasets' rows.
    assert pipeline.buffered_rows == len(kinds)
    pending = pipeline.take_range()
    assert pending is not None
    assert pending.tables["identifiable"].num_rows > len(kinds)

    assert list(pending.tables) == ["identifiable", "facts", "facts_by_type"]
    assert pending.tables["facts_by_type"].num_rows == len(kinds)
    assert pending.counts.outputs["facts_by_type"] == OutputCounts(
        len(kinds), {"page_view": 2, "request": 1, "login": 1}
    )
    marker = RangeWriter(FS, str(tmp_path), new_encryption(), "test").commit_range(
        "raw", 0, pending
    )
    assert sorted(p for p in marker.files if p.startswith("facts_by_type/")) == [
        f"facts_by_type/type={kind}/date=2026-10-30/raw+0+0-3.parquet"
        for kind in ("login", "page_view", "request")
    ]
    (read,) = read_markers(FS, str(tmp_path))
    assert read.counts == marker.counts
    assert read.counts.rows("facts_by_type") == read.counts.rows("facts") == len(kinds)
    assert read.counts.rows_by("identifiable") == pending.counts.rows_by("identifiable") != {}


class _CountsBeforeDeclarations(msgspec.Struct, frozen=True):
    """RangeCounts as markers carried it before the datasets were declared (sieve <= 0.x):
    records by retention class and fact rows under their own keys."""

    raw: int
    accepted: int
    duplicates: int
    dead_lettered: dict[str, int]
    identifiable: dict[str, int]
    facts: int
    bytes_written: int
    properties_dropped: int = 0


class _MarkerBeforeDeclarations(msgspec.Struct, frozen=True):
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    files: list[str]
    counts: _CountsBeforeDeclarations
    watermark: str | None
    consent_changes: list[tuple[str, str]]
    sieve_version: str
    generation: int = 0


def test_a_marker_written_before_the_declarations_reads_as_counts_per_dataset() -> None:
    old = _MarkerBeforeDeclarations(
        topic="raw",
        partition=0,
        first_offset=0,
        last_offset=9,
        files=["facts/date=2026-10-30/raw+0+0-9.parquet"],
        counts=_CountsBeforeDeclarations(
            10, 8, 1, {"invalid_json": 1}, {"traffic": 5, "billing": 2}, 8, 123, 3
        ),
        watermark=None,
        consent_changes=[],
        sieve_version="0.9",
    )
    counts = decode_marker(msgspec.json.encode(old)).counts
    assert counts.outputs == {
        "identifiable": OutputCounts(7, {"traffic": 5, "billing": 2}),
        "facts": OutputCounts(8),
    }
    assert (counts.raw, counts.accepted, counts.duplicates) == (10, 8, 1)
    assert (counts.bytes_written, counts.properties_dropped) == (123, 3)
    assert counts.dead_lettered == {"invalid_json": 1}
    # Written again (a compaction's marker), it carries today's keys only.
    assert set(msgspec.json.decode(msgspec.json.encode(counts))) == {
        "raw",
        "accepted",
        "duplicates",
        "dead_lettered",
        "outputs",
        "bytes_written",
        "properties_dropped",
    }


def test_the_dead_letter_topic_is_declared_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def letter() -> list[str]:
        made = dead_letter(
            Rejection(0, "invalid_json", "$", "not JSON"),
            value=b"{",
            original_headers=[("trace", b"1")],
            topic="raw",
            partition=2,
            offset=7,
            worker_version="v",
        )
        return [name for name, _ in made.headers]

    assert letter() == [*DEAD_LETTERS.headers, "trace"]
    renamed = dataclasses.replace(
        DEAD_LETTERS, headers=tuple(h.replace("sieve.", "sieve.v2.") for h in DEAD_LETTERS.headers)
    )
    monkeypatch.setattr(deadletter, "DEAD_LETTERS", renamed)
    assert letter()[:-1] == list(renamed.headers)

    settings = Settings.model_construct()
    assert settings.dead_letter_topic == DEAD_LETTERS.default_topic
    assert settings.dead_letter_retention_hours == DEAD_LETTERS.default_retention_hours
    spec = dead_letter_topic_spec(
        settings.dead_letter_topic, 3, DEAD_LETTERS.default_retention_hours
    )
    assert spec.configs["cleanup.policy"] == DEAD_LETTERS.cleanup_policy
    assert spec.configs["retention.ms"] == str(DEAD_LETTERS.default_retention_hours * 3_600_000)


def test_the_subject_tools_read_the_declared_columns() -> None:
    for dataset in PERSONAL_DATASETS:
        assert dataset.subject_columns is not None and dataset.expiry_column is not None
        assert {*dataset.subject_columns, dataset.expiry_column} <= set(dataset.schema.names)
    with pytest.raises(ValueError, match="subject and expiry"):
        dataclasses.replace(IDENTIFIABLE_DATASET, name="careless", subject_columns=None)
    rows = pa.table({"who": ["acct-1", "acct-2"], "user": ["u", None]})
    renamed = dataclasses.replace(IDENTIFIABLE_DATASET, subject_columns=("who", "user"))
    assert subject_mask(rows, Subject("acct-1"), renamed).to_pylist() == [True, False]
    assert subject_mask(rows, Subject("acct-2", "u"), renamed).to_pylist() == [False, False]


def test_compaction_reads_a_file_day_from_the_declared_layout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    by_type = dataclasses.replace(
        FACTS_DATASET, name="by_type", folder="by_type", partition_keys=("type", "date")
    )
    undated = dataclasses.replace(
        FACTS_DATASET, name="undated", folder="undated", partition_keys=("type",)
    )
    _declare(monkeypatch, by_type, undated)
    assert file_day("by_type/type=request/date=2026-10-30/raw+0+0-9.parquet") == date(2026, 10, 30)
    assert file_day("facts/date=2026-10-31/compacted+raw+0+0-9-c1.parquet") == date(2026, 10, 31)
    assert file_day("undated/type=request/raw+0+0-9.parquet") is None
    # Not the dataset's layout: the path says nothing (only the sink writes these folders).
    assert file_day("facts/region=eu/date=2026-10-30/raw+0+0-9.parquet") is None
    assert file_day("_dedup/raw/0/raw+0+0-9.parquet") is None
