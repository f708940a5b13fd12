"""File access for the aggregations: the data root, committed facts, atomic Parquet writes.

The data root is a local path or a pyarrow filesystem URI. Facts are read only from files
listed by commit markers (:func:`schemas.commits.committed_files`), never by globbing
``facts/``, so a range a crashed worker left half written is never counted.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.arrow import FACTS, conform
from schemas.commits import committed_files

FILE_INDEX: str = "file_index"


@dataclass(frozen=True)
class Root:
    """A resolved data root: the filesystem and the root path inside it."""

    fs: pafs.FileSystem
    path: str

    def join(self, relative: str) -> str:
        return f"{self.path.rstrip('/')}/{relative}"

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)


def resolve_root(data_root: str) -> Root:
    """A local path (relative paths are made absolute) or a URI such as ``s3://bucket/x``."""
    if "://" in data_root:
        fs, path = pafs.FileSystem.from_uri(data_root)
        return Root(fs, path)
    return Root(pafs.LocalFileSystem(), os.path.abspath(data_root))


@dataclass(frozen=True)
class Facts:
    """Every committed fact, plus ``file_index`` (int32) pointing into ``files``."""

    table: pa.Table
    files: tuple[str, ...]


def facts_schema_with_file() -> pa.Schema:
    return FACTS.append(pa.field(FILE_INDEX, pa.int32(), nullable=False))


def load_facts(root: Root) -> Facts:
    """Read every committed facts file (explicit schema; a file missing a column is an error)."""
    files = tuple(sorted(set(committed_files(root.fs, root.path, "facts"))))
    tables = []
    for index, relative in enumerate(files):
        table = conform(pq.read_table(root.join(relative), filesystem=root.fs), FACTS)
        tables.append(
            table.append_column(
                pa.field(FILE_INDEX, pa.int32(), nullable=False),
                pa.array([index] * table.num_rows, pa.int32()),
            )
        )
    schema = facts_schema_with_file()
    if not tables:
        return Facts(schema.empty_table(), files)
    return Facts(pa.concat_tables(tables).cast(schema), files)


def select_files(facts: Facts, indices: set[int]) -> pa.Table:
    """The facts that came from the given files."""
    mask = pc.is_in(facts.table[FILE_INDEX], pa.array(sorted(indices), pa.int32()))
    return facts.table.filter(mask)


def list_parquet(root: Root, relative_dir: str) -> list[str]:
    """Full paths of the data files under a published folder (recursively, sorted)."""
    selector = pafs.FileSelector(root.join(relative_dir), recursive=True, allow_not_found=True)
    return sorted(
        info.path
        for info in root.fs.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.base_name.endswith(".parquet")
        and not info.base_name.startswith("_")
    )


def read_published(root: Root, relative_dir: str, schema: pa.Schema) -> pa.Table:
    """Every row published under a folder, cast to its schema (empty table if none)."""
    tables = [
        conform(pq.read_table(path, filesystem=root.fs), schema)
        for path in list_parquet(root, relative_dir)
    ]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def write_parquet_atomic(root: Root, relative: str, table: pa.Table) -> None:
    """Write to a temporary name, flush (fsync when local), then rename over ``relative``.

    Readers see either the previous file or the complete new one, never a partial file.
    The temporary name is random; the final name and content are the caller's (deterministic).
    """
    final = root.join(relative)
    root.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
    temporary = f"{final}.tmp-{uuid.uuid4().hex}"
    if root.is_local:
        with open(temporary, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
    else:
        with root.fs.open_output_stream(temporary) as stream:
            pq.write_table(table, stream)
    root.fs.move(temporary, final)


def copy_file_atomic(root: Root, source: str, relative: str) -> None:
    """Copy ``source`` to ``relative`` byte for byte, through a temporary name and a rename."""
    final = root.join(relative)
    root.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
    temporary = f"{final}.tmp-{uuid.uuid4().hex}"
    with root.fs.open_input_stream(root.join(source)) as stream:
        data = stream.read()
    if root.is_local:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    else:
        with root.fs.open_output_stream(temporary) as out:
            out.write(data)
    root.fs.move(temporary, final)


def ensure_schema_file(root: Root, relative_dir: str, schema: pa.Schema) -> None:
    """Keep a zero-row ``_schema.parquet`` in a published folder.

    DuckDB refuses to create a view over a glob that matches no file; this file makes the
    catalog's views bind (with the right column types) before the first publish. It adds no
    row to any sum.
    """
    relative = f"{relative_dir}/_schema.parquet"
    info = root.fs.get_file_info(root.join(relative))
    if info.type != pafs.FileType.File:
        write_parquet_atomic(root, relative, schema.empty_table())
