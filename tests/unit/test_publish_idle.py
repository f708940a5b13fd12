"""A publish with nothing new reads as much at 365 days of history as at 90
(aggregations.idle_stamp), and still notices a new range, a late range of an old day, a
compaction, a deleted analytics folder, a crashed run and a moved watermark."""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from aggregations import publish as publish_module
from aggregations.idle_stamp import STAMP
from aggregations.manifest import mark_run_started
from aggregations.publish import publish
from aggregations.schemas import ANALYTICS_DIR
from aggregations.storage import resolve_root
from streams.storage import DataRoot
from tests.fixtures.facts import DEFAULT_PRIVACY, fact, facts_table, write_committed_facts

GRACE = timedelta(hours=1)
END = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass
class Reads:
    """What went through the filesystem: files opened (or tried), bytes read, listings and
    the entries they returned, single-path lookups."""

    opened: int = 0
    bytes: int = 0
    listings: int = 0
    listed: int = 0
    looked_up: int = 0
    names: list[str] = field(default_factory=list)

    def figures(self) -> tuple[int, int, int, int, int]:
        return self.opened, self.bytes, self.listings, self.listed, self.looked_up


class _Counted(io.RawIOBase):
    def __init__(self, path: str, reads: Reads) -> None:
        self.handle = open(path, "rb")  # noqa: SIM115 - closed with the stream
        self.reads = reads

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    def readinto(self, buffer: Any) -> int:
        count = self.handle.readinto(buffer)
        self.reads.bytes += count or 0
        return count or 0

    def close(self) -> None:
        self.handle.close()
        super().close()


class CountingHandler(pafs.FileSystemHandler):
    """The local filesystem, counting what is read (writes pass through uncounted)."""

    def __init__(self, reads: Reads) -> None:
        self.local = pafs.LocalFileSystem()
        self.reads = reads

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CountingHandler)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "counting"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        self.reads.looked_up += len(paths)
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        infos = self.local.get_file_info(selector)
        self.reads.listings += 1
        self.reads.listed += len(infos)
        return infos

    def _open(self, path: str) -> pa.PythonFile:
        self.reads.opened += 1
        self.reads.names.append(path)
        return pa.PythonFile(_Counted(path, self.reads), mode="r")

    def open_input_stream(self, path: str) -> pa.PythonFile:
        return self._open(path)

    def open_input_file(self, path: str) -> pa.PythonFile:
        return self._open(path)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise NotImplementedError

    def delete_file(self, path: str) -> None:
        self.local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.local.copy_file(src, dest)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return self.local.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self.local.open_append_stream(path, metadata=metadata)


def _history(root: Path, days: int) -> datetime:
    """``days`` days ending at END, a committed range per day (as a worker rolling daily
    would leave them), published and compacted as `sieve publish` does; returns its now."""
    offset = 0
    for back in range(days, 0, -1):
        day = END - timedelta(days=back)
        rows = [fact(day + timedelta(hours=h), subject_key=f"p{h % 3}") for h in (1, 13)]
        write_committed_facts(root, facts_table(rows), first_offset=offset)
        offset += len(rows)
    now = END + timedelta(days=1)
    write_committed_facts(root, facts_table([fact(END + timedelta(hours=2))]), first_offset=offset)
    publish(str(root), now, GRACE, DEFAULT_PRIVACY, compact=True)
    return now


def _counted_noop(root: Path, now: datetime, monkeypatch: pytest.MonkeyPatch) -> Reads:
    """Two runs with nothing new (the first may stamp), the second counted."""
    assert publish(str(root), now, GRACE, DEFAULT_PRIVACY, compact=True).rows_written == 0
    reads = Reads()
    counting = pafs.PyFileSystem(CountingHandler(reads))
    with monkeypatch.context() as patched:
        patched.setattr(publish_module, "resolve_root", lambda _: DataRoot(counting, str(root)))
        report = publish(str(root), now, GRACE, DEFAULT_PRIVACY, compact=True)
    assert report.rows_written == 0 and report.run_id is None
    return reads


def test_nothing_new_reads_as_much_at_365_days_as_at_90(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = {}
    for days in (90, 365):
        root = tmp_path / f"days-{days}"
        counted[days] = _counted_noop(root, _history(root, days), monkeypatch)
    short, long = counted[90], counted[365]
    # Files opened, bytes read, listings and their entries, lookups: the same, not "close".
    assert short.figures() == long.figures(), (short, long)
    assert short.opened <= 3 and short.bytes < 4_000, short.names  # stamp, manifest head


def test_the_stamp_yields_to_anything_new(tmp_path: Path) -> None:
    now = _history(tmp_path, 3)
    first_idle = publish(str(tmp_path), now, GRACE, DEFAULT_PRIVACY, compact=True)
    assert (tmp_path / STAMP).exists()
    assert publish(str(tmp_path), now, GRACE, DEFAULT_PRIVACY, compact=True) == first_idle

    # A late range of an old day: metered (a correction), and the stamp goes.
    old_day = END - timedelta(days=2)
    late = facts_table([fact(old_day + timedelta(hours=5), subject_key="late")])
    write_committed_facts(tmp_path, late, first_offset=10_000)
    report = publish(str(tmp_path), now, GRACE, DEFAULT_PRIVACY, compact=True)
    assert report.facts == 1 and report.daily_corrections >= 1
    assert publish(str(tmp_path), now, GRACE, DEFAULT_PRIVACY, compact=True).rows_written == 0

    # A new range of a new day, then the clock: its windows close when the watermark moves.
    new = facts_table([fact(END + timedelta(hours=20))])
    write_committed_facts(tmp_path, new, first_offset=20_000)
    report = publish(str(tmp_path), now, GRACE, DEFAULT_PRIVACY, compact=True)
    assert report.facts == 1
    publish(str(tmp_path), now, GRACE, DEFAULT_PRIVACY, compact=True)  # idle: stamps
    closing = END + timedelta(days=2)
    report = publish(str(tmp_path), closing, GRACE, DEFAULT_PRIVACY, compact=True)
    assert first_idle.watermark is not None and report.watermark is not None
    assert report.watermark > first_idle.watermark
    publish(str(tmp_path), closing, GRACE, DEFAULT_PRIVACY, compact=True)
    later = publish(str(tmp_path), closing, GRACE, DEFAULT_PRIVACY, close_through=closing)
    assert later.watermark is not None and later.watermark > report.watermark

    # A deleted analytics folder (the index with it): every copy restored.
    publish(str(tmp_path), closing, GRACE, DEFAULT_PRIVACY)  # idle again: stamped
    assert (tmp_path / STAMP).exists()
    copies = sorted((tmp_path / ANALYTICS_DIR).rglob("batch-*.parquet"))
    assert copies
    shutil.rmtree(tmp_path / ANALYTICS_DIR)
    report = publish(str(tmp_path), closing, GRACE, DEFAULT_PRIVACY)
    assert report.analytics_restored == len(copies)

    # A crashed run (its marker left): listed and restored, whatever the stamp says.
    publish(str(tmp_path), closing, GRACE, DEFAULT_PRIVACY)
    assert (tmp_path / STAMP).exists()
    copies[0].unlink()
    mark_run_started(resolve_root(str(tmp_path)), "publish")
    assert publish(str(tmp_path), closing, GRACE, DEFAULT_PRIVACY).analytics_restored == 1
