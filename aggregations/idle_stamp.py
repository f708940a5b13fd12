"""The idle stamp: a publish with nothing new, decided from a few small reads whatever the
length of the history.

A run that found nothing to do (it wrote nothing, restored nothing, and its compaction
replaced nothing) leaves ``published/_idle.json``: what it saw, as digests of fixed size,
and the report it returned. The next run returns that report without reading the commit
markers, the manifest or the batch index (all of which grow with history) when

- the listing of the commit markers (names and sizes, one listing) is the same: no new
  range, no late range of an old day, no compaction or recovery since;
- the manifest is the same (its size and leading bytes: format, generation and run id,
  which every run that writes one changes), and so are the meters, the privacy budget, the
  grace and whether the run compacts;
- the watermark this run would close windows with is the stamped one (the clock and
  ``close_through`` can move it);
- no run is in progress (a crashed run's marker), the published layout is complete, and the
  batch index exists (deleting ``published/analytics`` deletes it: the next run lists and
  restores, as before).

Any run that writes deletes the stamp before its first write (:class:`StampedWrites`), so a
crash at any point leaves no stamp that vouches for a state it changed; the stamp is written
last, atomically, by an idle run that wrote nothing else. A stamp that cannot be read is no
stamp. What a no-op does not notice today (a published file deleted one at a time) it does
not notice with the stamp either: the next run with something to do restores it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

import msgspec
import pyarrow.fs as pafs

from aggregations.batch_index import INDEX
from aggregations.dp.budget import Budget
from aggregations.manifest import MANIFEST, run_interrupted
from aggregations.meters import Meter
from aggregations.publish_plan import run_watermark
from aggregations.publish_run import Writes
from aggregations.schemas import PUBLISHED_DIR
from aggregations.storage import Root, delete, exists, read_bytes, write_bytes_atomic
from schemas.commits import COMMITS_DIR

STAMP: Final = f"{PUBLISHED_DIR}/_idle.json"
# Enough of the manifest to hold its format, generation and run id (msgspec writes the
# fields in declaration order).
_MANIFEST_HEAD: Final = 256


class IdleStamp(msgspec.Struct, forbid_unknown_fields=True):
    commits: str  # digest of the commit markers' listing
    manifest: str  # digest of the manifest's size and leading bytes
    inputs: str  # digest of the meters, the budget, the grace and the compact flag
    max_event_hour: datetime | None  # the manifest's, for the watermark this run would use
    watermark: datetime | None
    report: msgspec.Raw  # the idle run's PublishReport (aggregations.publish)


class StampedWrites(Writes):
    """:class:`~aggregations.publish_run.Writes` that removes the stamp before the run's
    first write: a run that changes anything never leaves a stamp vouching for the old state."""

    def begin(self) -> None:
        if not self.started:
            delete(self.root, STAMP)
        super().begin()


def commits_digest(root: Root) -> str:
    """The commit markers as listed (relative names and sizes), in one listing: taken
    before the run reads them, so a range committed meanwhile makes the stamp stale."""
    base = root.join(COMMITS_DIR)
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    entries = sorted(
        (info.path.removeprefix(base), info.size or 0)
        for info in root.fs.get_file_info(selector)
        if info.type == pafs.FileType.File
    )
    return _digest(entries)


def inputs_digest(meters: Sequence[Meter], budget: Budget, grace: timedelta, compact: bool) -> str:
    return _digest([[(m.name, m.definition) for m in meters], repr(budget), grace, compact])


def manifest_digest(root: Root) -> str | None:
    """The manifest's size and leading bytes (a fixed-size read), or None without one."""
    try:
        with root.open_input(MANIFEST) as manifest:
            return _digest([manifest.size(), manifest.read(_MANIFEST_HEAD)])
    except FileNotFoundError:
        return None


def _digest(parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def stamped_report(
    root: Root,
    commits: str,
    inputs: str,
    now: datetime,
    grace: timedelta,
    close_through: datetime | None,
    layout_complete: bool,
) -> msgspec.Raw | None:
    """The stamped idle run's report when this run would be the same idle run, else None."""
    data = read_bytes(root, STAMP)
    if data is None:
        return None
    try:
        stamp = msgspec.json.decode(data, type=IdleStamp)
    except msgspec.DecodeError:
        return None  # a damaged stamp is no stamp: the run decides from everything
    mark = run_watermark(stamp.max_event_hour, now, grace, close_through, stamp.watermark)
    same = (
        stamp.commits == commits
        and stamp.inputs == inputs
        and mark == stamp.watermark
        and layout_complete
        and not run_interrupted(root)
        and exists(root, INDEX)
        and stamp.manifest == manifest_digest(root)
    )
    return stamp.report if same else None


def write_stamp(
    root: Root,
    commits: str,
    inputs: str,
    max_event_hour: datetime | None,
    watermark: datetime | None,
    report: bytes,
) -> None:
    """Stamp the state an idle run found (after everything it read; it wrote nothing)."""
    manifest = manifest_digest(root)
    if manifest is None:
        return  # nothing published yet: nothing to vouch for
    stamp = IdleStamp(commits, manifest, inputs, max_event_hour, watermark, msgspec.Raw(report))
    write_bytes_atomic(root, STAMP, msgspec.json.encode(stamp))
