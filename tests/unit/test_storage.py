"""The storage module (streams/storage.py): a file appears whole or not at all, synced before
its rename, a failed write leaves the previous file and no temporary one, and listings of a
data root never show a write in progress."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from streams.storage import (
    TMP_INFIX,
    DataRoot,
    open_data_root,
    stage_file,
    write_atomic,
    write_parquet_atomic,
    write_private_atomic,
)

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


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_failing_parquet_writer_leaves_no_file_and_no_temporary(tmp_path: Path) -> None:
    table = pa.table({"x": [1, 2, 3]})
    with pytest.raises(pa.lib.ArrowException, match="no-such-codec"):
        # The writer fails once its temporary file is open (an unknown codec).
        write_parquet_atomic(
            LOCAL, str(tmp_path / "d" / "t.parquet"), table, compression="no-such-codec"
        )
    assert _files(tmp_path) == []


def test_a_check_failing_before_the_rename_keeps_the_previous_file(tmp_path: Path) -> None:
    final = tmp_path / "f.parquet"
    old = pa.table({"x": [1]})
    write_parquet_atomic(LOCAL, str(final), old)

    def changed() -> None:
        raise FileExistsError("someone else replaced it")

    with pytest.raises(FileExistsError):
        write_parquet_atomic(LOCAL, str(final), pa.table({"x": [2]}), before_rename=changed)
    assert pq.read_table(final).equals(old)
    assert _files(tmp_path) == ["f.parquet"]


def test_a_staged_file_counts_only_once_moved_into_place(tmp_path: Path) -> None:
    root = open_data_root(str(tmp_path / "root"), create=True)
    staged = stage_file(root.fs, root.join("_commits/t/0/m.json"), lambda out: out.write(b"{}"))
    assert root.list("_commits") == []  # a temporary is no file yet
    assert root.list("_commits", temporaries=True) == [root.relative(staged.temporary)]
    staged.move_into_place()
    assert root.list("_commits") == ["_commits/t/0/m.json"]
    assert root.read_bytes("_commits/t/0/m.json") == b"{}"

    abandoned = stage_file(root.fs, root.join("_commits/t/0/n.json"), lambda out: out.write(b"x"))
    abandoned.discard()
    assert root.list("_commits", temporaries=True) == ["_commits/t/0/m.json"]


def test_a_data_root_lists_reads_and_deletes_relative_paths(tmp_path: Path) -> None:
    root = open_data_root(str(tmp_path))
    assert isinstance(root, DataRoot) and root.is_local and root.path == str(tmp_path)
    root.write_bytes("a/b/one.json", b"1")
    root.write_parquet("a/two.parquet", pa.table({"x": [2]}))
    (tmp_path / "a" / f"three.parquet{TMP_INFIX}0123").write_bytes(b"half")
    assert root.list("a") == ["a/b/one.json", "a/two.parquet"]
    assert root.list("missing") == []
    assert root.exists("a/b/one.json") and not root.exists("a/b")
    with root.open_input("a/two.parquet") as source:
        assert pq.ParquetFile(source).read().to_pydict() == {"x": [2]}
    assert root.read_bytes("a/nothing") is None
    assert root.delete("a/b/one.json") is True
    assert root.delete("a/b/one.json") is False  # already gone: not an error
    assert root.list("a", temporaries=True) == ["a/three.parquet.tmp-0123", "a/two.parquet"]


def test_a_uri_opens_its_filesystem_and_a_local_root_is_made_only_when_asked(
    tmp_path: Path,
) -> None:
    root = open_data_root(f"file://{tmp_path}/data/")
    assert root.path == f"{tmp_path}/data" and root.is_local
    assert not (tmp_path / "data").exists()
    open_data_root(str(tmp_path / "made"), create=True)
    assert (tmp_path / "made").is_dir()
