"""Files that appear whole or not at all: write to a temporary name, sync, rename.

Readers of a data root (publish, the subject tools, recovery) must never see half a file,
and a crash must leave either the previous file or the new one. Renaming after the write
gives that against a killed process; syncing the file before the rename, and its folder
after, gives it against a machine crash too. Object stores (any other pyarrow filesystem)
write a whole object at once and have no such notion, so there the sync steps do nothing.

Temporary names are ``<final>.tmp-<uuid>``: recovery and the retention sweep recognise (and
clean up) them by ``TMP_INFIX``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import pyarrow.fs as pafs

TMP_INFIX: Final = ".tmp-"

_T = TypeVar("_T")


def temporary_name(final: str, infix: str = TMP_INFIX) -> str:
    """A fresh temporary name beside ``final`` (same folder, so the rename stays in it)."""
    return f"{final}{infix}{uuid.uuid4().hex}"


def sync_file(filesystem: pafs.FileSystem, path: str) -> None:
    """fsync ``path`` on a local filesystem; nothing elsewhere."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        _fsync(path, os.O_RDONLY)


def sync_folder(filesystem: pafs.FileSystem, path: str) -> None:
    """fsync the folder holding ``path`` on a local filesystem, so a rename in it is durable."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        _fsync(os.path.dirname(path) or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def write_atomic(
    filesystem: pafs.FileSystem,
    final: str,
    write: Callable[[Any], object],
    *,
    infix: str = TMP_INFIX,
) -> None:
    """Make ``final`` hold what ``write(stream)`` writes, atomically (module docstring).

    ``stream`` is a pyarrow output stream (``pq.write_table(table, stream)``,
    ``stream.write(data)``). Its folder is created if missing. If anything fails, the
    temporary file is removed and ``final`` is untouched.
    """
    filesystem.create_dir(final.rsplit("/", 1)[0], recursive=True)
    temporary = temporary_name(final, infix)
    try:
        with filesystem.open_output_stream(temporary) as stream:
            write(stream)
        sync_file(filesystem, temporary)
        filesystem.move(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            filesystem.delete_file(temporary)
        raise
    sync_folder(filesystem, final)


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


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
