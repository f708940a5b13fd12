"""The worker's datasets, declared once (schemas/datasets.py), and the code that iterates over
the declarations instead of naming datasets (issue 11, item 2)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from aggregations import publish
from aggregations.schemas import ANALYTICS_DATASET, PUBLISHED_DATASETS
from aggregations.storage import resolve_root
from schemas import datasets
from schemas.arrow import IDENTIFIABLE
from schemas.datasets import (
    FACTS_DATASET,
    IDENTIFIABLE_DATASET,
    PERSONAL_DATASETS,
    WORKER_DATASETS,
    Dataset,
    dataset_of,
)
from streams.compaction.plan import is_merged
from streams.subject import identifiable_store
from streams.subject.erasure import erase_subject
from streams.subject.identifiable_store import list_files, read_rows
from streams.worker import sink
from tests.fixtures.facts import fact, facts_table
from tests.fixtures.identifiable import FS, POLICY, new_encryption, record, write_identifiable

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


def test_a_new_declaration_is_planned_without_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    by_type = dataclasses.replace(
        FACTS_DATASET,
        name="facts_by_type",
        folder="facts_by_type",
        partition_keys=("type", "date"),
    )
    monkeypatch.setattr(sink, "WORKER_DATASETS", (*WORKER_DATASETS, by_type))
    tables = _tables()
    planned = sink.plan_outputs("raw", 0, 0, 9, {**tables, "facts_by_type": tables["facts"]})
    assert [p.relative_path for p in planned if p.relative_path.startswith("facts_by_type/")] == [
        "facts_by_type/type=request/date=2026-10-30/raw+0+0-9.parquet",
        "facts_by_type/type=request/date=2026-10-31/raw+0+0-9.parquet",
    ]


def _declare(monkeypatch: pytest.MonkeyPatch, *extra: Dataset) -> None:
    """Add declarations, as a new dataset in schemas/datasets.py would."""
    every = (*WORKER_DATASETS, *extra)
    monkeypatch.setattr(datasets, "WORKER_DATASETS", every)
    monkeypatch.setattr(
        identifiable_store, "PERSONAL_DATASETS", tuple(d for d in every if d.personal)
    )


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
