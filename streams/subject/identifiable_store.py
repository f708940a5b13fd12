"""Encrypted identifiable files: list them, read one, replace or delete one.

Files live at ``identifiable/retention_class=<c>/region=<r>/date=<YYYY-MM-DD>/<stem>.parquet``
(declared in :mod:`schemas.datasets`, with every dataset whose retention is per person: this
module walks each of them); the hive path tells the class, region and event date of every
row without decrypting anything, which is what lets the retention sweep prune.

Listing walks ``identifiable/`` instead of going through the commit markers: a file of a
range a crashed worker has not committed yet is still data Sieve holds, and an erasure must
reach it. Nothing under ``identifiable/`` is skipped unseen (:class:`Listing`):

* **files**: every file that is not a temporary file, whatever its name (a stray copy can
  hold rows as well as a ``.parquet`` file can; one that cannot be read is an error naming
  it);
* **leftovers**: temporary files of the subject tools, ``<file>.tmp-subject-<uuid>``. Only a
  sweep or erasure writes them, under the data root's maintenance lock
  (:mod:`streams.subject.commands`), so one found by a run that holds the lock belongs to a
  run that was killed: :func:`remove_leftovers` deletes them before anything is searched.
  Without the lock (an object store, or a caller of the functions below) deleting another
  run's temporary file is still safe: that run's rename fails, it reads the file again and
  redoes its rewrite (:class:`FileChangedError`), so it only costs a retry;
* **in flight**: the worker's temporary files, ``<file>.tmp-<uuid>``: a range being written
  right now (renamed within seconds) or the leftover of a killed worker, which that
  partition's recovery deletes. They are never deleted here (a live worker's write would
  fail), but they are read: an export includes their rows, an erasure reports any that
  holds the person's rows (or cannot be read yet) as not erased.

Replacing a file writes ``<path>.tmp-subject-<uuid>``, syncs it, then renames it over the
same path, encrypted with the active key (so every rewrite also moves an old file onto the
current key). After a crash each file is either the old or the new version, never half of
one; the leftover temporary file holds a subset of the original's rows, and the next sweep
or erasure removes it before it searches (a worker's recovery of that partition does too:
the name carries the range's prefix).

Before the rename (or delete) the file is checked to still be the one that was read (size and
modification time). Two maintenance runs that interleave (a sweep and an erasure) would
otherwise let one put back rows the other just removed; on a change :func:`rewrite_file`
reads the file again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from cryptography.exceptions import InvalidTag

from schemas.arrow import IDENTIFIABLE, conform
from schemas.datasets import DATE_KEY, PERSONAL_DATASETS, Dataset, dataset_of
from streams.encryption import ParquetEncryption
from streams.errors import SieveError
from streams.storage import TMP_INFIX, walk_files, write_parquet_atomic

# The sink's row-group size: a rewritten file reads like a freshly written one.
_ROW_GROUP_ROWS: Final = 128 * 1024
_ATTEMPTS: Final = 3
# The subject tools' temporary files: ``<file>.tmp-subject-<uuid>``. Distinct from the
# worker's ``<file>.tmp-<uuid>``, so a leftover of a killed sweep or erasure can be told
# from a worker's write in progress.
SUBJECT_TMP_INFIX: Final = f"{TMP_INFIX}subject-"


class UnreadableFileError(SieveError):
    """An identifiable file cannot be decrypted or read; the message names the file."""

    exit_code = 2

    def __init__(self, relative_path: str, cause: BaseException) -> None:
        self.relative_path = relative_path
        # InvalidTag (a wrong key) has no message of its own.
        detail = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        super().__init__(
            f"cannot read identifiable file {relative_path} ({detail}); is the encryption key"
            " that wrote it still in the keyring?"
        )


class FileChangedError(SieveError):
    """An identifiable file changed between reading and replacing it; read it again."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"{path} changed while it was being rewritten (another sweep or erasure running?);"
            " run the command again"
        )


@dataclass(frozen=True, slots=True)
class Subject:
    """One person: a user of an account, or the account itself (``user_id`` None = all of it)."""

    account_id: str
    user_id: str | None = None

    def __str__(self) -> str:
        return self.account_id if self.user_id is None else f"{self.account_id}/{self.user_id}"


@dataclass(frozen=True, slots=True)
class IdentifiableFile:
    """One identifiable file and what its path says about its rows."""

    path: str  # in the filesystem
    relative_path: str  # to the data root
    dataset: Dataset  # the declared dataset it belongs to (its folder)
    # From the hive path; None when the path does not follow the layout (then only the rows
    # themselves can tell).
    retention_class: str | None
    region: str | None
    date: date | None
    size: int
    mtime_ns: int | None


@dataclass(frozen=True, slots=True)
class Listing:
    """Everything under ``identifiable/``, in three kinds (see the module docstring)."""

    files: list[IdentifiableFile]  # every file that is not a temporary file
    leftovers: list[str]  # paths of ``*.tmp-subject-*`` files (killed sweeps and erasures)
    in_flight: list[IdentifiableFile]  # the worker's ``*.tmp-*`` files


@dataclass(frozen=True, slots=True)
class ExpiryBounds:
    """What the (encrypted) footer statistics say about a file's ``expires_at`` column."""

    rows: int
    nulls: int
    earliest: datetime | None  # of the non-null values
    latest: datetime | None


Outcome = Literal["unchanged", "rewritten", "deleted", "vanished"]


@dataclass(frozen=True, slots=True)
class FileRewrite:
    """What :func:`rewrite_file` did (or, in a dry run, would have done) to one file."""

    file: IdentifiableFile
    rows: pa.Table  # as read, before removal
    removed: pa.BooleanArray  # aligned with ``rows``
    outcome: Outcome

    @property
    def removed_rows(self) -> pa.Table:
        return self.rows.filter(self.removed)


def list_files(filesystem: pafs.FileSystem, root: str) -> Listing:
    """Every file under the folder of each personal dataset (schemas.datasets: today
    ``identifiable/``), sorted by path within each kind."""
    files: list[IdentifiableFile] = []
    leftovers: list[str] = []
    in_flight: list[IdentifiableFile] = []
    for info in walk_files(filesystem, [f"{root}/{d.folder}" for d in PERSONAL_DATASETS]):
        if SUBJECT_TMP_INFIX in info.base_name:
            leftovers.append(info.path)
            continue
        relative = info.path[len(root) + 1 :]
        if TMP_INFIX in info.base_name:
            in_flight.append(_described(info, relative, relative.split(TMP_INFIX, 1)[0]))
        else:
            files.append(_described(info, relative, relative))
    files.sort(key=lambda file: file.relative_path)
    in_flight.sort(key=lambda file: file.relative_path)
    return Listing(files=files, leftovers=sorted(leftovers), in_flight=in_flight)


def remove_leftovers(filesystem: pafs.FileSystem, listing: Listing) -> int:
    """Delete the subject tools' leftover temporary files of ``listing``; return how many.

    Call it holding the data root's maintenance lock (then every such file belongs to a run
    that was killed); see the module docstring for why it is safe without.
    """
    removed = 0
    for path in listing.leftovers:
        try:
            filesystem.delete_file(path)
        except FileNotFoundError:
            continue  # renamed or removed meanwhile by the run that wrote it
        removed += 1
    return removed


def _described(info: pafs.FileInfo, relative: str, layout_path: str) -> IdentifiableFile:
    # ``layout_path``: the path the hive layout is read from (a temporary file's final name).
    dataset = dataset_of(layout_path)
    if dataset is None:  # list_files walks the declared folders only
        raise ValueError(f"{relative} is in no declared dataset")
    values = dataset.partition_of(layout_path) or {}
    day = values.get(DATE_KEY)
    return IdentifiableFile(
        path=info.path,
        relative_path=relative,
        dataset=dataset,
        retention_class=values.get("retention_class"),
        region=values.get("region"),
        date=None if day is None else date.fromisoformat(day),
        size=int(info.size or 0),
        mtime_ns=info.mtime_ns,
    )


def read_rows(
    filesystem: pafs.FileSystem,
    file: IdentifiableFile,
    encryption: ParquetEncryption,
    columns: list[str] | None = None,
) -> pa.Table:
    """The decrypted rows of one file (optionally only some columns)."""
    with _reading(file), filesystem.open_input_file(file.path) as source:
        # ParquetFile, not pq.read_table: the dataset reader would add the hive path's
        # ``date`` as a column, and the file must read back with exactly its own schema.
        parquet = pq.ParquetFile(source, decryption_properties=encryption.decryption_properties())
        return parquet.read(columns=columns)


def read_in_flight(
    filesystem: pafs.FileSystem, file: IdentifiableFile, encryption: ParquetEncryption
) -> pa.Table | None:
    """The rows of a worker's temporary file, or None when it cannot be read (yet).

    A write in progress has no footer until it is closed; a file renamed or deleted since it
    was listed is empty (its rows are in the final file, or were never committed).
    """
    try:
        return read_rows(filesystem, file, encryption)
    except FileNotFoundError:
        return IDENTIFIABLE.empty_table()
    except UnreadableFileError:
        return None


def expiry_bounds(
    filesystem: pafs.FileSystem, file: IdentifiableFile, encryption: ParquetEncryption
) -> ExpiryBounds | None:
    """``expires_at`` bounds from the footer statistics (decrypts the footer only).

    None when a row group carries no usable statistics; the caller then reads the rows.
    """
    with _reading(file), filesystem.open_input_file(file.path) as source:
        parquet = pq.ParquetFile(source, decryption_properties=encryption.decryption_properties())
        metadata = parquet.metadata
    schema = metadata.schema.to_arrow_schema()
    expiry = file.dataset.expiry_column
    if expiry is None or expiry not in schema.names:
        return None
    column = schema.get_field_index(expiry)
    nulls = 0
    earliest: datetime | None = None
    latest: datetime | None = None
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        stats = group.column(column).statistics
        if stats is None or stats.null_count is None:
            return None
        nulls += stats.null_count
        if stats.null_count == group.num_rows:
            continue  # all null: no min/max to read
        if not stats.has_min_max:
            return None
        low, high = _utc(stats.min), _utc(stats.max)
        earliest = low if earliest is None else min(earliest, low)
        latest = high if latest is None else max(latest, high)
    return ExpiryBounds(rows=metadata.num_rows, nulls=nulls, earliest=earliest, latest=latest)


def rewrite_file(
    filesystem: pafs.FileSystem,
    file: IdentifiableFile,
    encryption: ParquetEncryption,
    remove: Callable[[pa.Table], pa.BooleanArray],
    *,
    dry_run: bool = False,
) -> FileRewrite:
    """Read ``file``, drop the rows ``remove`` marks, and put the rest back at the same path.

    No row removed: the file is left alone. All removed: the file is deleted. Otherwise it is
    replaced (temporary file, sync, rename). ``dry_run`` decides without writing. A file that
    changes meanwhile is read again (up to three times, then :class:`FileChangedError`); one
    that disappeared (another run deleted it) is reported ``vanished``.

    After a crash the file is either untouched or fully replaced; running the same removal
    again is a no-op for rows already removed (idempotent).
    """
    current = file
    for _attempt in range(_ATTEMPTS):
        try:
            rows = read_rows(filesystem, current, encryption)
        except FileNotFoundError:
            return _vanished(current)
        removed = _as_mask(remove(rows), rows.num_rows)
        count = pc.sum(removed).as_py() or 0
        if count == 0:
            return FileRewrite(current, rows, removed, "unchanged")
        outcome: Outcome = "deleted" if count == rows.num_rows else "rewritten"
        if dry_run:
            return FileRewrite(current, rows, removed, outcome)
        try:
            if outcome == "deleted":
                delete_file(filesystem, current)
            else:
                _replace(filesystem, current, rows.filter(pc.invert(removed)), encryption)
            return FileRewrite(current, rows, removed, outcome)
        except FileChangedError:
            refreshed = refresh(filesystem, current)
            if refreshed is None:
                return _vanished(current)
            current = refreshed
    raise FileChangedError(file.path)


def delete_file(filesystem: pafs.FileSystem, file: IdentifiableFile) -> None:
    """Delete ``file`` if it is still the version that was listed (else FileChangedError)."""
    _check_unchanged(filesystem, file)
    filesystem.delete_file(file.path)


def refresh(filesystem: pafs.FileSystem, file: IdentifiableFile) -> IdentifiableFile | None:
    """``file`` with its current size and modification time; None if it no longer exists."""
    info = filesystem.get_file_info(file.path)
    if info.type != pafs.FileType.File:
        return None
    return IdentifiableFile(
        path=file.path,
        relative_path=file.relative_path,
        dataset=file.dataset,
        retention_class=file.retention_class,
        region=file.region,
        date=file.date,
        size=int(info.size or 0),
        mtime_ns=info.mtime_ns,
    )


def subject_mask(rows: pa.Table, subject: Subject, dataset: Dataset) -> pa.BooleanArray:
    """Rows of ``dataset`` about ``subject``: its account's rows, or only its user's when it
    names one (the dataset's declared subject columns)."""
    if dataset.subject_columns is None:
        raise ValueError(f"dataset {dataset.name!r} declares no subject columns")
    account, user = dataset.subject_columns
    mask = pc.equal(rows[account], subject.account_id)
    if subject.user_id is not None:
        mask = pc.and_(mask, pc.equal(rows[user], subject.user_id))
    # A null user id compared with a user id is null: "not this person", never "unknown".
    return _as_mask(pc.fill_null(mask, False), rows.num_rows)


@contextmanager
def _reading(file: IdentifiableFile) -> Iterator[None]:
    """Turn a failed read or decryption into one error that names the file."""
    try:
        yield
    except FileNotFoundError:
        raise  # gone since it was listed: callers decide (another run deleted it)
    except (OSError, KeyError, ValueError, InvalidTag) as error:
        raise UnreadableFileError(file.relative_path, error) from error


def _vanished(file: IdentifiableFile) -> FileRewrite:
    return FileRewrite(file, IDENTIFIABLE.empty_table(), pa.array([], pa.bool_()), "vanished")


def _replace(
    filesystem: pafs.FileSystem,
    file: IdentifiableFile,
    rows: pa.Table,
    encryption: ParquetEncryption,
) -> None:
    try:
        write_parquet_atomic(
            filesystem,
            file.path,
            conform(rows, _schema(file)),
            # Never a second copy of identifiable rows behind: a failed replace removes its
            # temporary file, which carries its own infix (module docstring).
            infix=SUBJECT_TMP_INFIX,
            # The file must still be the one read (module docstring).
            before_rename=lambda: _check_unchanged(filesystem, file),
            compression="zstd",
            encryption_properties=encryption.encryption_properties(),
            # The footer is encrypted; the sweep reads expires_at bounds from it.
            write_statistics=True,
            row_group_size=_ROW_GROUP_ROWS,
        )
    except FileNotFoundError:
        # A worker's partition recovery deletes temporary files of its partition (ours
        # carry the same name prefix) and uncommitted originals: start over from the file's
        # current state.
        raise FileChangedError(file.path) from None


def _schema(file: IdentifiableFile) -> pa.Schema:
    dataset = dataset_of(file.relative_path.split(TMP_INFIX, 1)[0])
    return IDENTIFIABLE if dataset is None else dataset.schema


def _check_unchanged(filesystem: pafs.FileSystem, file: IdentifiableFile) -> None:
    info = filesystem.get_file_info(file.path)
    if info.type != pafs.FileType.File or info.size != file.size or info.mtime_ns != file.mtime_ns:
        raise FileChangedError(file.path)


def _as_mask(values: pa.Array | pa.ChunkedArray, length: int) -> pa.BooleanArray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.bool_())
    if len(values) != length or values.type != pa.bool_():
        raise ValueError(
            f"a removal mask must be {length} booleans, got {len(values)} {values.type}"
        )
    return pc.fill_null(values, False)


def _utc(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"expires_at statistics are not timestamps: {value!r}")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
