"""The data root and the files in it: opening it, listing, reading, and atomic writes.

Every file Sieve writes is written here, and every data root is opened here
(:func:`open_data_root`): the worker's ranges and markers, compaction, the subject tools'
rewrites, publish's outputs. One place, so that the one rule they all rely on holds
everywhere: a file appears whole or not at all.

Readers of a data root (publish, the subject tools, recovery) must never see half a file,
and a crash must leave either the previous file or the new one. Renaming after the write
gives that against a killed process; syncing the file before the rename, and its folder
after, gives it against a machine crash too. Object stores (any other pyarrow filesystem)
write a whole object at once and have no such notion, so there the sync steps do nothing.

Temporary names are ``<final><infix><uuid>``, the infix ``.tmp-`` (:data:`TMP_INFIX`) or one
that starts with it (the subject tools' ``.tmp-subject-``): recovery, compaction and the
subject tools recognise (and clean up) them by it, and listings leave them out.

Helpers that take a filesystem and a full path serve the code that walks a root as
``(filesystem, path)`` pairs (the worker, compaction, the subject tools); :class:`DataRoot`
is the same with paths relative to the root.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TMP_INFIX: Final = ".tmp-"
# Writes of one group in flight at once (write_concurrently): enough for the journal to
# commit their syncs together, few enough not to matter on a small machine.
_CONCURRENT_WRITES: Final = 8

_T = TypeVar("_T")


def temporary_name(final: str, infix: str = TMP_INFIX) -> str:
    """A fresh temporary name beside ``final`` (same folder, so the rename stays in it)."""
    return f"{final}{infix}{uuid.uuid4().hex}"


def is_temporary(name: str) -> bool:
    """Whether a file name (or path) is a temporary one of any writer here."""
    return TMP_INFIX in name.rsplit("/", 1)[-1]


def sync_file(filesystem: pafs.FileSystem, path: str) -> None:
    """fsync ``path`` on a local filesystem; nothing elsewhere."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        _fsync(path, os.O_RDONLY)


def sync_folder(filesystem: pafs.FileSystem, path: str) -> None:
    """fsync the folder holding ``path`` on a local filesystem, so a rename in it is durable."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        _fsync(os.path.dirname(path) or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def remove_quietly(filesystem: pafs.FileSystem, path: str) -> bool:
    """Delete ``path``; False when it did not exist (deletes are retried after a crash)."""
    try:
        filesystem.delete_file(path)
    except FileNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class StagedFile:
    """A file written and synced under its temporary name, waiting for its rename."""

    filesystem: pafs.FileSystem
    temporary: str
    final: str

    def move_into_place(self, *, durable: bool = True) -> None:
        """Rename it to its final name (replacing any file there). ``durable``: sync the
        folder too, so the rename survives a machine crash; without it, only a rename."""
        self.filesystem.move(self.temporary, self.final)
        if durable:
            sync_folder(self.filesystem, self.final)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.filesystem.delete_file(self.temporary)


def stage_file(
    filesystem: pafs.FileSystem,
    final: str,
    write: Callable[[Any], object],
    *,
    infix: str = TMP_INFIX,
) -> StagedFile:
    """Write ``write(stream)`` to a temporary name beside ``final`` and sync it.

    The first step of :func:`write_atomic`, for a caller that renames later (the worker's
    commit marker waits for the Kafka commit). Its folder is created if missing. If anything
    fails, the temporary file is removed.
    """
    filesystem.create_dir(final.rsplit("/", 1)[0], recursive=True)
    temporary = temporary_name(final, infix)
    try:
        with filesystem.open_output_stream(temporary) as stream:
            write(stream)
        sync_file(filesystem, temporary)
    except BaseException:
        with contextlib.suppress(OSError):
            filesystem.delete_file(temporary)
        raise
    return StagedFile(filesystem, temporary, final)


def write_atomic(
    filesystem: pafs.FileSystem,
    final: str,
    write: Callable[[Any], object],
    *,
    infix: str = TMP_INFIX,
    durable: bool = True,
    before_rename: Callable[[], object] | None = None,
) -> None:
    """Make ``final`` hold what ``write(stream)`` writes, atomically (module docstring).

    ``stream`` is a pyarrow output stream (``pq.write_table(table, stream)``,
    ``stream.write(data)``). ``before_rename`` runs between the sync and the rename (a check
    that the file replaced is still the one read); ``durable=False`` skips the folder sync
    (:meth:`StagedFile.move_into_place`). If anything fails, the temporary file is removed
    and ``final`` is untouched.
    """
    staged = stage_file(filesystem, final, write, infix=infix)
    try:
        if before_rename is not None:
            before_rename()
        staged.move_into_place(durable=False)
    except BaseException:
        staged.discard()
        raise
    if durable:
        sync_folder(filesystem, final)


def write_parquet_atomic(
    filesystem: pafs.FileSystem,
    final: str,
    table: pa.Table,
    *,
    infix: str = TMP_INFIX,
    durable: bool = True,
    before_rename: Callable[[], object] | None = None,
    **writer_options: Any,
) -> None:
    """:func:`write_atomic` of one table (``writer_options``: ``pq.ParquetWriter``'s, such as
    ``compression``, ``encryption_properties``, ``row_group_size``)."""
    row_group_size = writer_options.pop("row_group_size", None)

    def write(stream: Any) -> None:
        with pq.ParquetWriter(stream, table.schema, **writer_options) as writer:
            writer.write_table(table, row_group_size=row_group_size)

    write_atomic(
        filesystem, final, write, infix=infix, durable=durable, before_rename=before_rename
    )


def write_concurrently(writes: Sequence[Callable[[], object]]) -> None:
    """Run independent writes side by side (each a :func:`write_atomic`, durable, or a
    sequence of them in its own order) and return once every one has returned; the first
    error is raised after all have ended.

    For files no reader sees until a later commit point (a run's manifest, a compaction's
    marker) and whose order among the callables does not matter: each file is still whole or
    absent after a crash, and all are durable before the caller goes on. Their syncs overlap,
    so the file system's journal commits them together: one after the other, each sync waits
    for a commit of its own, which on a busy disk is most of a small write's time.
    """
    if len(writes) < 2:
        for write in writes:
            write()
        return
    workers = min(len(writes), _CONCURRENT_WRITES)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sieve-write") as pool:
        futures = [pool.submit(write) for write in writes]
    for future in futures:
        future.result()


def write_private_atomic(path: Path, write: Callable[[IO[str]], _T], *, replace: bool = True) -> _T:
    """Make the local ``path`` hold what ``write(handle)`` writes (text, UTF-8), readable by
    its owner only (0600) from its first byte, atomically; return what ``write`` returned.

    For secrets and decrypted personal data (key files, exports). ``replace=False`` never
    replaces an existing file: FileExistsError instead, and nothing changes.
    """
    temporary = Path(temporary_name(str(path.with_name(f".{path.name}"))))
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            result = write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if path exists, unlike a rename
    finally:
        temporary.unlink(missing_ok=True)
    sync_folder(pafs.LocalFileSystem(), str(path))
    return result


def walk_files(
    filesystem: pafs.FileSystem, folders: Iterable[str], *, recursive: bool = True
) -> Iterator[pafs.FileInfo]:
    """Every file under each folder (full paths; a missing folder has none), temporary files
    included: the callers that walk this way are the ones that clean them up."""
    for folder in folders:
        selector = pafs.FileSelector(folder, recursive=recursive, allow_not_found=True)
        for info in filesystem.get_file_info(selector):
            if info.type == pafs.FileType.File:
                yield info


@dataclass(frozen=True)
class DataRoot:
    """A data root (``SIEVE_DATA_ROOT``): its filesystem and its path in it. Every method
    takes paths relative to the root."""

    fs: pafs.FileSystem
    path: str

    def join(self, relative: str) -> str:
        return f"{self.path.rstrip('/')}/{relative}"

    def relative(self, full: str) -> str:
        return full.removeprefix(self.path.rstrip("/") + "/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.join(relative)).type == pafs.FileType.File

    def open_input(self, relative: str) -> pa.NativeFile:
        """A random-access file (what a Parquet reader needs); FileNotFoundError if missing."""
        return self.fs.open_input_file(self.join(relative))

    def read_bytes(self, relative: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        try:
            with self.fs.open_input_stream(self.join(relative)) as stream:
                data: bytes = stream.read()
                return data
        except FileNotFoundError:
            return None

    def list(self, relative_dir: str, *, temporaries: bool = False) -> list[str]:
        """Relative paths of the files under a folder (recursively, sorted); temporary files
        only with ``temporaries`` (a write in progress is no file yet)."""
        return sorted(
            self.relative(info.path)
            for info in walk_files(self.fs, [self.join(relative_dir)])
            if temporaries or not is_temporary(info.base_name)
        )

    def delete(self, relative: str) -> bool:
        """Remove a file; False when it was already gone (not an error: deletes are retried)."""
        return remove_quietly(self.fs, self.join(relative))

    def write_atomic(self, relative: str, write: Callable[[Any], object]) -> None:
        """:func:`write_atomic` under the root."""
        write_atomic(self.fs, self.join(relative), write)

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Atomically make ``relative`` hold ``data``."""
        self.write_atomic(relative, lambda out: out.write(data))

    def write_parquet(self, relative: str, table: pa.Table) -> None:
        """Atomically make ``relative`` a Parquet file of ``table`` (pyarrow's defaults)."""
        self.write_atomic(relative, lambda out: pq.write_table(table, out))


def open_data_root(location: str, *, create: bool = False) -> DataRoot:
    """The data root at a local path (made absolute) or a pyarrow filesystem URI
    (``s3://bucket/x``). ``create``: make the local folder if it is missing (the worker)."""
    if "://" in location:
        filesystem, path = pafs.FileSystem.from_uri(location)
        return DataRoot(filesystem, path.rstrip("/"))
    path = os.path.abspath(location)
    if create:
        os.makedirs(path, exist_ok=True)
    return DataRoot(pafs.LocalFileSystem(), path)


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
