"""Atomic writes (streams/atomic_files.py): a file appears whole or not at all, synced before
its rename, and a failed write leaves the previous file and no temporary one."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from streams.atomic_files import TMP_INFIX, write_atomic, write_private_atomic

LOCAL = pafs.LocalFileSystem()


def test_write_atomic_creates_the_folder_and_leaves_no_temporary(tmp_path: Path) -> None:
    final = tmp_path / "a" / "b" / "t.parquet"
    table = pa.table({"x": [1, 2, 3]})
    write_atomic(LOCAL, str(final), lambda out: pq.write_table(table, out))
    assert pq.read_table(final).equals(table)
    assert [p.name for p in final.parent.iterdir()] == ["t.parquet"]


def test_a_failed_write_keeps_the_previous_file_and_removes_the_temporary(tmp_path: Path) -> None:
    final = tmp_path / "marker.json"
    write_atomic(LOCAL, str(final), lambda out: out.write(b"old"))

    def half_then_fail(out: Any) -> None:
        out.write(b"new, but only ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(LOCAL, str(final), half_then_fail)
    assert final.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["marker.json"]


def test_the_temporary_is_synced_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "f.bin"
    events: list[str] = []
    real_fsync, real_move = os.fsync, LOCAL.move

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append("sync folder" if os.path.isdir(target) else f"sync {Path(target).name}")
        real_fsync(fd)

    class Recording(pafs.LocalFileSystem):  # type: ignore[misc]
        def move(self, src: str, dest: str) -> None:
            events.append("move")
            real_move(src, dest)

    monkeypatch.setattr(os, "fsync", fsync)
    write_atomic(Recording(), str(final), lambda out: out.write(b"x"))
    assert len(events) == 3
    assert events[0].startswith(f"sync f.bin{TMP_INFIX}")
    assert events[1:] == ["move", "sync folder"]


def test_private_files_are_0600_and_replace_false_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"

    def write(text: str) -> Any:
        def into(handle: IO[str]) -> int:
            return handle.write(text)

        return into

    assert write_private_atomic(path, write("first")) == 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_private_atomic(path, write("second"), replace=False)
    assert path.read_text() == "first"
    write_private_atomic(path, write("third"))
    assert path.read_text() == "third"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keyring.json"]
