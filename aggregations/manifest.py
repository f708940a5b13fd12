"""The publish manifest: what the published metering is, and how far publishing has read.

``published/_manifest.json`` is the commit point of a publish run. It holds

- the **cursor**: per input topic and partition, the offset intervals whose committed facts
  are published (normally one interval per partition: the worker commits ranges in order);
  a run reads only the ranges the cursor does not cover;
- the **metering files**: one file per grain and UTC date (``published/metering/grain=<hour|
  day>/date=<d>/<run>.parquet``, so that pricing reads the day rows alone); the billing
  catalog's views read exactly these files, never a glob; and per month the rollup of its
  day files (key ``totals/<YYYY-MM>``, :mod:`aggregations.metering_totals`);
- the watermark and the latest event hour, the days that have facts, the meters published
  (their definitions and units), and the analytics' pending and waiting days.

A run writes its files under new names, then replaces the manifest atomically (temporary
name, fsync, rename). A crash at any point leaves the previous manifest, so readers and the
next run see the old state whole (the files the crashed run wrote are listed by nobody and
removed by the next run), or the new one whole. A file a run replaces stays on disk one more
run (``retired``), for a reader that bound the previous list.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any, Final, Literal

import msgspec

from aggregations.schemas import METERING_DIR, PUBLISHED_DIR
from aggregations.storage import Root, delete, read_bytes, write_bytes_atomic

MANIFEST: Final = f"{PUBLISHED_DIR}/_manifest.json"
# Written before a run writes its first file, removed after its manifest: its presence at
# the start of a run means the previous one crashed, and leftovers are swept.
RUN_IN_PROGRESS: Final = f"{PUBLISHED_DIR}/_run-in-progress.json"
LOCK: Final = f"{PUBLISHED_DIR}/.publish.lock"
FORMAT: Final = 1

GRAINS: Final = ("hour", "day")
Interval = tuple[int, int]
Coverage = Literal["none", "all", "partial"]


class Manifest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The state of the published data (see the module docstring)."""

    format: int = FORMAT
    generation: int = 0  # runs that wrote this manifest, counting from 1
    run: str | None = None
    published_at: datetime | None = None
    # The watermark windows were closed with (monotone: it never moves back).
    watermark: datetime | None = None
    # The latest event hour of the published facts (the watermark before the `now` cap).
    max_event_hour: datetime | None = None
    # topic -> partition -> sorted, disjoint, non-adjacent [first, last] offset intervals.
    cursor: dict[str, dict[int, list[Interval]]] = msgspec.field(default_factory=dict)
    days: list[date] = msgspec.field(default_factory=list)  # days with committed facts
    # "<grain>/<ISO date>" -> its metering file (metering_key); "totals/<YYYY-MM>" -> the
    # month's rollup (aggregations.metering_totals.totals_key).
    metering: dict[str, str] = msgspec.field(default_factory=dict)
    retired: list[str] = msgspec.field(default_factory=list)  # deleted by the next run
    meters: list[dict[str, Any]] = msgspec.field(default_factory=list)  # Meter.to_record()
    definitions: dict[str, str] = msgspec.field(default_factory=dict)  # meter -> definition
    # Analytics: days with a due batch not released (refused), days with facts waiting for
    # their next batch, and facts that came after their day's last batch (never released).
    pending_days: list[date] = msgspec.field(default_factory=list)
    waiting_days: list[date] = msgspec.field(default_factory=list)
    unreleased_facts: int = 0


def metering_key(grain: str, day: date) -> str:
    return f"{grain}/{day.isoformat()}"


def metering_path(grain: str, day: date, run: str) -> str:
    return f"{METERING_DIR}/grain={grain}/date={day.isoformat()}/{run}.parquet"


def metering_files(manifest: Manifest, grain: str) -> list[str]:
    """The published metering files of one grain, in date order."""
    prefix = f"{grain}/"
    return [path for key, path in sorted(manifest.metering.items()) if key.startswith(prefix)]


class ManifestError(ValueError):
    """The manifest cannot be read (a newer format, or damaged)."""


def read_manifest(root: Root) -> Manifest:
    """The current manifest, or an empty one before the first run."""
    data = read_bytes(root, MANIFEST)
    if data is None:
        return Manifest()
    try:
        manifest = msgspec.json.decode(data, type=Manifest)
    except msgspec.DecodeError as error:
        raise ManifestError(f"{MANIFEST} cannot be read: {error}") from None
    if manifest.format != FORMAT:
        raise ManifestError(f"{MANIFEST} has format {manifest.format}; this Sieve reads {FORMAT}")
    return manifest


def write_manifest(root: Root, manifest: Manifest) -> None:
    write_bytes_atomic(root, MANIFEST, msgspec.json.encode(manifest))


# --- the cursor (pure) -------------------------------------------------------------------------


def coverage(intervals: Sequence[Interval], first: int, last: int) -> Coverage:
    """Whether [first, last] is inside the intervals, outside all of them, or partly in."""
    for low, high in intervals:
        if low <= first and last <= high:
            return "all"
        if first <= high and low <= last:
            return "partial"
    return "none"


def add_interval(intervals: Sequence[Interval], first: int, last: int) -> list[Interval]:
    """The intervals with [first, last] added, merged with overlapping or adjacent ones."""
    merged: list[Interval] = []
    for low, high in sorted([*intervals, (first, last)]):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


# --- one run at a time -------------------------------------------------------------------------


class ConcurrentPublishError(RuntimeError):
    """Another publish holds the data root's lock."""


@contextmanager
def publish_lock(root: Root) -> Iterator[None]:
    """Hold the data root's publish lock (a local root: an exclusive ``flock``).

    Two runs reading the same manifest would each write a new one, and the second would drop
    the first's files from it. A root on an object store has no lock: run one publish at a
    time there (a scheduler's job, e.g. one cron entry).
    """
    if not root.is_local:
        yield
        return
    import fcntl

    path = root.join(LOCK)
    root.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConcurrentPublishError(
                f"another `sieve publish` is running on {root.path} (it holds {LOCK})"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def mark_run_started(root: Root, run: str) -> None:
    write_bytes_atomic(root, RUN_IN_PROGRESS, msgspec.json.encode({"run": run}))


def run_interrupted(root: Root) -> bool:
    return read_bytes(root, RUN_IN_PROGRESS) is not None


def mark_run_finished(root: Root) -> None:
    delete(root, RUN_IN_PROGRESS)
