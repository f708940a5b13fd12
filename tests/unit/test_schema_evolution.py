"""Files of an earlier facts schema read into the current one, and published beside current
files (issue 11.5): real Parquet files written with a narrower, older schema."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aggregations.catalog import open_catalog
from aggregations.publish import publish
from schemas.arrow import FACTS, FACTS_VERSION, conform
from schemas.evolution import (
    SchemaEvolutionError,
    evolve,
    evolved_projection,
    read_evolved,
    schema_version,
    widens,
)
from tests.fixtures.facts import DEFAULT_PRIVACY, fact, facts_table, write_committed_facts

HOUR = datetime(2026, 11, 3, 9, tzinfo=UTC)


def _metadata(version: str) -> dict[str, str]:
    return {"sieve.dataset": "facts", "sieve.schema_version": version}


def _older(schema: pa.Schema, drop: str, narrow: str, version: str) -> pa.Schema:
    """``schema`` without the nullable column ``drop`` and with ``narrow`` as int32."""
    fields = [
        pa.field(f.name, pa.int32(), f.nullable) if f.name == narrow else f
        for f in schema
        if f.name != drop
    ]
    return pa.schema(fields, metadata=_metadata(version))


# Facts of an older version: no subject_key yet, bytes still an int32.
OLD_FACTS = _older(FACTS, drop="subject_key", narrow="bytes", version="0")
# The facts of a later version than this code's: a new dimension with a declared default.
NEXT_VERSION = str(int(FACTS_VERSION) + 1)
NEXT_COLUMN = pa.field("next_dimension", pa.string(), metadata={"sieve.default": "unknown"})
NEXT_FACTS = pa.schema([*FACTS, NEXT_COLUMN], metadata=_metadata(NEXT_VERSION))
# Facts of version 2, before the custom event columns.
CUSTOM_COLUMNS = ("event_name", "dimensions", "metrics")
FACTS_2 = pa.schema([f for f in FACTS if f.name not in CUSTOM_COLUMNS], metadata=_metadata("2"))


def _rows(count: int, **fields: Any) -> list[dict[str, Any]]:
    return [
        fact(HOUR, subject_key=f"p{i}", bytes=1000 * i, account_id=f"acct-{i % 3}", **fields)
        for i in range(count)
    ]


def _write(path: Path, table: pa.Table, schema: pa.Schema) -> str:
    pq.write_table(conform(table, schema), path)
    return str(path)


def test_written_facts_carry_their_schema_version(tmp_path: Path) -> None:
    # conform() is what the sink writes through: the version travels in the Parquet schema.
    path = _write(tmp_path / "f.parquet", facts_table(_rows(2)), FACTS)
    assert schema_version(pq.read_schema(path)) == int(FACTS_VERSION)


def test_an_old_file_reads_into_the_current_schema(tmp_path: Path) -> None:
    current = facts_table(_rows(5))
    path = _write(tmp_path / "old.parquet", current.drop_columns(["subject_key"]), OLD_FACTS)
    assert pq.read_schema(path).field("bytes").type == pa.int32()

    read = read_evolved(path, FACTS)

    assert read.schema == FACTS
    assert read.schema.metadata == FACTS.metadata
    assert read["subject_key"].null_count == 5
    assert read["bytes"].to_pylist() == current["bytes"].to_pylist()
    assert read.drop_columns(["subject_key"]).equals(current.drop_columns(["subject_key"]))


def _next(table: pa.Table, values: list[str]) -> pa.Table:
    return table.append_column(NEXT_COLUMN.name, pa.array(values, pa.string()))


def test_a_new_column_reads_its_declared_default_from_old_files(tmp_path: Path) -> None:
    path = _write(tmp_path / "current.parquet", facts_table(_rows(3)), FACTS)
    read = read_evolved(path, NEXT_FACTS)
    assert read.schema == NEXT_FACTS
    assert read[NEXT_COLUMN.name].to_pylist() == ["unknown"] * 3


def test_facts_of_version_2_read_the_custom_event_columns_as_null(tmp_path: Path) -> None:
    current = facts_table(_rows(3))
    path = _write(tmp_path / "v2.parquet", current.drop_columns(list(CUSTOM_COLUMNS)), FACTS_2)
    assert schema_version(pq.read_schema(path)) == 2

    read = read_evolved(path, FACTS)

    assert read.schema == FACTS
    assert all(read[name].null_count == 3 for name in CUSTOM_COLUMNS)
    assert read.drop_columns(list(CUSTOM_COLUMNS)).equals(
        current.drop_columns(list(CUSTOM_COLUMNS))
    )
    # DuckDB over a version 2 file and a current one: the maps come through, typed.
    custom = current.set_column(
        FACTS.get_field_index("metrics"),
        FACTS.field("metrics"),
        pa.array([[("seconds", 4.0)], None, None], FACTS.field("metrics").type),
    )
    new = _write(tmp_path / "v3.parquet", custom, FACTS)
    both = duckdb.connect().read_parquet([path, new], union_by_name=True)
    projected = both.project(evolved_projection(both.columns, FACTS, both.types))
    assert projected.columns == FACTS.names
    assert str(projected.types[FACTS.names.index("metrics")]) == "MAP(VARCHAR, DOUBLE)"
    metrics = projected.project("metrics['seconds']").fetchall()
    assert sorted(metrics, key=str) == [(4.0,), (None,), (None,), (None,), (None,), (None,)]


def test_columns_are_reordered_and_units_and_strings_widened() -> None:
    later = pa.schema(
        [
            pa.field("key_id", pa.large_string(), nullable=False),
            pa.field("occurred_hour", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    )
    old = pa.table(
        {
            "occurred_hour": pa.array([HOUR], pa.timestamp("s", tz="UTC")),
            "key_id": pa.array(["k1"], pa.string()),
        }
    )
    read = evolve(old, later)
    assert read.schema == later
    assert read.to_pylist() == [{"key_id": "k1", "occurred_hour": HOUR}]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (pa.int32(), pa.int64(), True),
        (pa.uint32(), pa.int64(), True),
        (pa.float32(), pa.float64(), True),
        (pa.timestamp("s", tz="UTC"), pa.timestamp("ns", tz="UTC"), True),
        (pa.string(), pa.large_string(), True),
        (pa.dictionary(pa.int32(), pa.string()), pa.string(), True),
        (pa.int64(), pa.int32(), False),
        (pa.int64(), pa.uint64(), False),
        (pa.uint32(), pa.int32(), False),
        (pa.float64(), pa.float32(), False),
        (pa.int32(), pa.float64(), False),
        (pa.timestamp("ns", tz="UTC"), pa.timestamp("s", tz="UTC"), False),
        (pa.timestamp("s"), pa.timestamp("s", tz="UTC"), False),
        (pa.large_string(), pa.string(), False),
        (pa.string(), pa.int64(), False),
    ],
)
def test_widening_rules(old: pa.DataType, new: pa.DataType, expected: bool) -> None:
    assert widens(old, new) is expected


def test_a_column_the_current_schema_does_not_know_is_an_error_naming_it(tmp_path: Path) -> None:
    same_version = NEXT_FACTS.with_metadata(_metadata(FACTS_VERSION))
    path = _write(tmp_path / "x.parquet", _next(facts_table(_rows(1)), ["direct"]), same_version)
    with pytest.raises(SchemaEvolutionError, match="'next_dimension' is not in the current facts"):
        read_evolved(path, FACTS)
    # Written by a newer Sieve: the version says so before any column does.
    newer = _write(tmp_path / "next.parquet", _next(facts_table(_rows(1)), ["direct"]), NEXT_FACTS)
    with pytest.raises(
        SchemaEvolutionError,
        match=f"version {NEXT_VERSION}, newer than this Sieve's {FACTS_VERSION}",
    ):
        read_evolved(newer, FACTS)


def test_a_coarser_timestamp_unit_reads_only_when_every_value_is_exact() -> None:
    # Parquet stores timestamp[s] as milliseconds: current facts files read back as [ms].
    schema = pa.schema([pa.field("occurred_hour", pa.timestamp("s", tz="UTC"))])
    exact = pa.table({"occurred_hour": pa.array([HOUR], pa.timestamp("ms", tz="UTC"))})
    assert evolve(exact, schema)["occurred_hour"].to_pylist() == [HOUR]
    finer = pa.table(
        {
            "occurred_hour": pa.array(
                [HOUR + timedelta(milliseconds=5)], pa.timestamp("ms", tz="UTC")
            )
        }
    )
    with pytest.raises(SchemaEvolutionError, match="'occurred_hour' holds instants finer"):
        evolve(finer, schema)


def test_a_narrowing_is_an_error_naming_the_column() -> None:
    narrower = pa.schema([pa.field("bytes", pa.int32())])
    with pytest.raises(SchemaEvolutionError, match="'bytes' is int64 in the file and int32"):
        evolve(pa.table({"bytes": pa.array([1], pa.int64())}), narrower)


def test_a_file_of_a_newer_version_is_an_error() -> None:
    newer = pa.table({"key_id": ["k1"]}).replace_schema_metadata(_metadata("9"))
    with pytest.raises(SchemaEvolutionError, match="version 9, newer than"):
        evolve(newer, FACTS)


def test_a_required_column_without_default_cannot_come_from_old_files() -> None:
    required = pa.schema([pa.field("key_id", pa.string(), nullable=False)])
    with pytest.raises(SchemaEvolutionError, match="'key_id' is required"):
        evolve(pa.table({}), required)
    with pytest.raises(SchemaEvolutionError, match="'key_id' holds nulls"):
        evolve(pa.table({"key_id": pa.array([None], pa.string())}), required)


def _usage(root: Path) -> list[tuple[Any, ...]]:
    connection = open_catalog(str(root), role="billing")
    try:
        return connection.sql("SELECT * FROM metering_hourly ORDER BY ALL").fetchall()
    finally:
        connection.close()


def test_old_and_current_files_publish_together(tmp_path: Path) -> None:
    """Old files (no subject_key, int32 bytes) beside current ones publish as the same rows
    with a null subject_key would: DuckDB's union by name reads the missing column as null
    and widens the int32."""
    old_rows, new_rows = _rows(40), _rows(60, type="upload")
    closer = [fact(HOUR + timedelta(days=1), account_id="acct-closer")]
    mixed, reference = tmp_path / "mixed", tmp_path / "reference"
    old = facts_table(old_rows)
    write_committed_facts(
        mixed, old.drop_columns(["subject_key"]), first_offset=0, schema=OLD_FACTS
    )
    nulled = [{**row, "subject_key": None} for row in old_rows]
    write_committed_facts(reference, facts_table(nulled), first_offset=0)
    for root in (mixed, reference):
        write_committed_facts(root, facts_table(new_rows + closer), first_offset=40)
        publish(str(root), HOUR + timedelta(days=3), timedelta(hours=1), DEFAULT_PRIVACY)
    old_file = pq.read_schema(next((mixed / "facts").rglob("*+0-39.parquet")))
    assert "subject_key" not in old_file.names
    assert old_file.field("bytes").type == pa.int32()

    usage = _usage(mixed)
    assert usage == _usage(reference)
    assert len(usage) == 3  # the three accounts of HOUR, with requests and uploads


def test_duckdb_projection_adds_defaults_and_columns_no_file_has(tmp_path: Path) -> None:
    old = _write(tmp_path / "old.parquet", facts_table(_rows(2)), FACTS)
    new = _write(tmp_path / "new.parquet", _next(facts_table(_rows(1)), ["search"]), NEXT_FACTS)
    connection = duckdb.connect()

    # Union by name alone: the old file's rows read the new column as NULL.
    both = connection.read_parquet([old, new], union_by_name=True)
    values = both.project('"next_dimension"').fetchall()
    assert sorted(values, key=str) == [("search",), (None,), (None,)]

    projected = both.project(evolved_projection(both.columns, NEXT_FACTS))
    assert projected.columns == NEXT_FACTS.names
    assert sorted(r[0] for r in projected.project('"next_dimension"').fetchall()) == [
        "search",
        "unknown",
        "unknown",
    ]
    # Every file old: the column is in no file, and still reads its default.
    only_old = connection.read_parquet([old], union_by_name=True)
    assert "next_dimension" not in only_old.columns
    projected = only_old.project(evolved_projection(only_old.columns, NEXT_FACTS))
    assert projected.project('"next_dimension"').fetchall() == [("unknown",), ("unknown",)]
    assert projected.types[NEXT_FACTS.names.index("bytes")] == "BIGINT"
    with pytest.raises(SchemaEvolutionError, match="'next_dimension'"):
        evolved_projection(both.columns, FACTS)


def test_duckdb_projection_with_types_casts_only_what_differs(tmp_path: Path) -> None:
    current = facts_table(_rows(2))
    old = _write(tmp_path / "old.parquet", current.drop_columns(["subject_key"]), OLD_FACTS)
    relation = duckdb.connect().read_parquet([old], union_by_name=True)
    assert relation.types[relation.columns.index("bytes")] == "INTEGER"
    projection = evolved_projection(relation.columns, FACTS, relation.types)
    assert '"account_id", ' in projection  # already VARCHAR: passed through bare
    assert 'CAST("bytes" AS BIGINT)' in projection
    projected = relation.project(projection)
    assert projected.types[FACTS.names.index("bytes")] == "BIGINT"
    assert projected.types[FACTS.names.index("occurred_hour")] == "TIMESTAMP WITH TIME ZONE"
    assert projected.to_arrow_table().drop_columns(["subject_key"]).to_pylist() == (
        current.drop_columns(["subject_key"]).to_pylist()
    )
