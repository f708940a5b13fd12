"""File access for the aggregations: committed facts, published files (through
:mod:`streams.storage`, which opens the data root and writes every file atomically).

The data root is a local path or a pyarrow filesystem URI. Facts are read only from files
listed by commit markers (:func:`schemas.commits.iter_markers`), never by globbing
``facts/``, so a range a crashed worker left half written is never counted. The worker
writes one file per range and UTC date under ``facts/date=<d>/``, so a day's facts are the
committed files of its folder (:func:`facts_day`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from schemas.arrow import FACTS
from schemas.commits import iter_markers
from schemas.datasets import FACTS_DATASET
from schemas.evolution import evolved_projection
from streams.storage import DataRoot, open_data_root

FACTS_DIR: Final = FACTS_DATASET.folder
_FACTS_DAY: Final = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})/")


# The aggregations' name for the one data-root type (streams.storage), so that their
# modules read as before.
Root = DataRoot


def resolve_root(data_root: str) -> Root:
    """A local path (relative paths are made absolute) or a URI such as ``s3://bucket/x``."""
    return open_data_root(data_root)


# --- committed facts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CommittedRange:
    """One committed offset range and the facts files it wrote (relative paths)."""

    topic: str
    partition: int
    first: int
    last: int
    facts: tuple[str, ...]


def committed_ranges(root: Root) -> list[CommittedRange]:
    """Every committed range of the data root, with its facts files."""
    return [
        CommittedRange(
            marker.topic,
            marker.partition,
            marker.first_offset,
            marker.last_offset,
            tuple(path for path in marker.files if FACTS_DATASET.holds(path)),
        )
        for marker in iter_markers(root.fs, root.path)
    ]


class FactsLayoutError(ValueError):
    """A committed facts file outside ``facts/date=<YYYY-MM-DD>/``."""


def facts_day(relative: str) -> date:
    """The UTC date of a committed facts file, from its folder (the worker's layout)."""
    match = _FACTS_DAY.search(relative)
    if match is None:
        raise FactsLayoutError(
            f"committed facts file {relative} is not under facts/date=<YYYY-MM-DD>/: publish"
            " reads a day's facts from its folder"
        )
    return date.fromisoformat(match.group(1))


@dataclass(frozen=True)
class FileFacts:
    """What a facts file's Parquet footer says: its rows and latest event hour."""

    rows: int
    max_hour: datetime | None


def file_facts(root: Root, relative: str) -> FileFacts:
    """Rows and the latest ``occurred_hour`` of a facts file, from its footer alone (the
    column statistics every Parquet writer here keeps); the column is read if they lack."""
    metadata = pq.read_metadata(root.join(relative), filesystem=root.fs)
    if metadata.num_rows == 0:
        return FileFacts(0, None)
    column = metadata.schema.to_arrow_schema().get_field_index("occurred_hour")
    highest: Any = None
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            table = pq.read_table(
                root.join(relative), columns=["occurred_hour"], filesystem=root.fs
            )
            return FileFacts(metadata.num_rows, max(table["occurred_hour"].to_pylist()))
        highest = stats.max if highest is None else max(highest, stats.max)
    return FileFacts(
        metadata.num_rows, pa.scalar(highest, FACTS.field("occurred_hour").type).as_py()
    )


def register_facts(
    connection: duckdb.DuckDBPyConnection, root: Root, relatives: Iterable[str], name: str
) -> None:
    """A view ``name`` over the given facts files (none: an empty view of the facts schema).

    Files of every earlier facts version read as the current one (``schemas.evolution``: a
    column added since is null or its declared default, even when no file has it yet;
    widened types are cast); a local root is scanned by DuckDB itself, any other through a
    pyarrow dataset.
    """
    paths = [root.join(relative) for relative in relatives]
    if not paths:
        connection.register(f"{name}_empty", FACTS.empty_table())
        connection.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {name}_empty")  # noqa: S608
        return
    if root.is_local:
        relation = connection.read_parquet(paths, union_by_name=True, hive_partitioning=False)
    else:
        dataset = pads.dataset(paths, schema=FACTS, filesystem=root.fs, format="parquet")
        relation = connection.from_arrow(dataset)
    relation = relation.project(evolved_projection(relation.columns, FACTS, relation.types))
    relation.create_view(name, replace=True)


# --- published files ---------------------------------------------------------------------------


def list_parquet(root: Root, relative_dir: str) -> list[str]:
    """Full paths of the data files under a published folder (recursively, sorted)."""
    return [
        root.join(relative)
        for relative in root.list(relative_dir)
        if relative.endswith(".parquet") and not relative.rsplit("/", 1)[-1].startswith("_")
    ]


def list_files(root: Root, relative_dir: str) -> list[str]:
    """Relative paths of every file under a folder (temporary files included), sorted."""
    return root.list(relative_dir, temporaries=True)


def exists(root: Root, relative: str) -> bool:
    return root.exists(relative)


def read_bytes(root: Root, relative: str) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    return root.read_bytes(relative)


def delete(root: Root, relative: str) -> None:
    """Remove a file; a file already gone is not an error (deletes are retried after a crash)."""
    root.delete(relative)


def write_parquet_atomic(root: Root, relative: str, table: pa.Table) -> None:
    """Write to a temporary name, sync, then rename over ``relative`` (streams.storage).

    Readers see either the previous file or the complete new one, never a partial file.
    The temporary name is random; the final name and content are the caller's (deterministic).
    """
    root.write_parquet(relative, table)


def write_bytes_atomic(root: Root, relative: str, data: bytes) -> None:
    """:func:`write_parquet_atomic` for bytes."""
    root.write_bytes(relative, data)


def copy_file_atomic(root: Root, source: str, relative: str) -> None:
    """Copy ``source`` to ``relative`` byte for byte, through a temporary name and a rename."""
    data = read_bytes(root, source)
    if data is None:
        raise FileNotFoundError(root.join(source))
    write_bytes_atomic(root, relative, data)


def ensure_schema_file(root: Root, relative_dir: str, schema: pa.Schema) -> None:
    """Keep a zero-row ``_schema.parquet`` in a published folder.

    DuckDB refuses to create a view over a glob or list that matches no file; this file makes
    the catalog's views bind (with the right column types) before the first publish. It adds
    no row to any sum.
    """
    relative = f"{relative_dir}/_schema.parquet"
    if not exists(root, relative):
        write_parquet_atomic(root, relative, schema.empty_table())
