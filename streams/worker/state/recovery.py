"""Bring a partition's store to the state after its last committed range.

The commit markers are the truth (docs/architecture.md, "Exactly once"); the store is a
cache of what they imply. On assignment:

- the store holds the last marker's range: nothing to do (a restart reopens, it does not
  reread history);
- it holds an earlier marker's range (it is *behind*: a killed process lost its latest
  unflushed writes, or another worker committed ranges since): the ranges after it are
  applied from their logs and markers, in order;
- it is empty, ahead of the markers, holds a range no marker names (another data root, a
  superseded range), or is so far behind that logs it needs were deleted: it is rebuilt.
  Consent replays every marker's changes (all history: consent does not expire; markers are
  read on assignment anyway); dedup applies the logs of the ranges within the horizon of the
  last one only, and deletes the older logs left.

After this the store's decisions are an uninterrupted run's: nothing in it comes from a
range that is not committed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow.fs as pafs

from schemas.commits import CommitMarker
from streams.worker.state.range_log import (
    RangeLog,
    delete_log,
    is_log_path,
    read_log,
    read_log_arrival_max,
)
from streams.worker.state.store import AppliedRange, PartitionStore, StoreUpdate

logger = logging.getLogger(__name__)

_NO_LOG = RangeLog(key_id="", event_keys=b"", arrivals=np.empty(0, np.int64), arrival_max=None)


def recover_store(
    store: PartitionStore,
    filesystem: pafs.FileSystem,
    root: str,
    markers: Sequence[CommitMarker],
) -> str:
    """Make ``store`` hold exactly the committed ``markers`` (in offset order); returns what
    was done: "current", "caught up" or "rebuilt"."""
    applied = store.applied
    if applied is None and not markers:
        return "current"
    position = _position(markers, applied)
    if position is None:
        _rebuild(store, filesystem, root, markers)
        return "rebuilt"
    if position == len(markers) - 1:
        return "current"
    clock = applied.arrival_max if applied is not None else None
    try:
        for marker in markers[position + 1 :]:
            clock = _apply(store, filesystem, root, marker, clock)
    except FileNotFoundError:
        # A log deleted meanwhile (past the horizon of a range another worker held): the
        # store was too far behind to catch up; the logs within the horizon are all there.
        _rebuild(store, filesystem, root, markers)
        return "rebuilt"
    return "caught up"


def _position(markers: Sequence[CommitMarker], applied: AppliedRange | None) -> int | None:
    """Index of the marker the store's last applied range is, or None if no marker is."""
    if applied is None:
        return None
    for index in range(len(markers) - 1, -1, -1):
        marker = markers[index]
        if marker.last_offset == applied.last_offset:
            return index if _log_path(marker) == applied.log_path else None
        if marker.last_offset < applied.last_offset:
            return None
    return None


def _rebuild(
    store: PartitionStore,
    filesystem: pafs.FileSystem,
    root: str,
    markers: Sequence[CommitMarker],
) -> None:
    store.reset()
    if not markers:
        return
    start = _first_in_horizon(store, filesystem, root, markers)
    clock = None
    if start > 0:
        # Older ranges: their consent changes only (their keys are past the horizon). Their
        # clock matters only when no range follows (then the last log is there: it is the
        # newest, and a log is only deleted once a later range is past its horizon).
        older = markers[:start]
        if start == len(markers):
            clock = _arrival_max(filesystem, root, older[-1])
        # Their logs are never read again: deleted, newest first, down to the first one
        # found deleted already (the ones before it went the same way earlier).
        for marker in reversed(older):
            path = _log_path(marker)
            if path and not delete_log(filesystem, root, path):
                break
        store.apply(
            StoreUpdate(
                first_offset=older[0].first_offset,
                applied=AppliedRange(older[-1].last_offset, _log_path(older[-1]), clock),
                key_id="",
                event_keys=b"",
                arrivals=np.empty(0, np.int64),
                consent_changes=[c for m in older for c in m.consent_changes],
            )
        )
    for marker in markers[start:]:
        clock = _apply(store, filesystem, root, marker, clock)


def _first_in_horizon(
    store: PartitionStore,
    filesystem: pafs.FileSystem,
    root: str,
    markers: Sequence[CommitMarker],
) -> int:
    """Index of the oldest range that may hold a key within the horizon of the last one.

    A range's keys arrived no later than its clock; once a range's clock is older than the
    last clock minus the horizon, neither it nor any earlier range can match again.
    """
    last_clock = None
    for index in range(len(markers) - 1, -1, -1):
        try:
            clock = _arrival_max(filesystem, root, markers[index])
        except FileNotFoundError:
            return index + 1  # deleted: it was past the horizon of a range held earlier
        if last_clock is None:
            last_clock = clock
            if clock is None:
                return len(markers)  # no clock at all: no range holds a key
            continue
        if clock is None or clock < last_clock - store.horizon_ms:
            return index + 1
    return 0


def _apply(
    store: PartitionStore,
    filesystem: pafs.FileSystem,
    root: str,
    marker: CommitMarker,
    clock: int | None,
) -> int | None:
    log = _read(filesystem, root, marker)
    clock = log.arrival_max if log.arrival_max is not None else clock
    store.apply(
        StoreUpdate(
            first_offset=marker.first_offset,
            applied=AppliedRange(marker.last_offset, _log_path(marker), clock),
            key_id=log.key_id,
            event_keys=log.event_keys,
            arrivals=log.arrivals,
            consent_changes=marker.consent_changes,
        )
    )
    return clock


def _log_path(marker: CommitMarker) -> str:
    return next((path for path in marker.files if is_log_path(path)), "")


def _read(filesystem: pafs.FileSystem, root: str, marker: CommitMarker) -> RangeLog:
    path = _log_path(marker)
    if not path:
        # A range committed before dedup logs existed (an older Sieve): no keys to restore.
        return _NO_LOG
    return read_log(filesystem, root, path)


def _arrival_max(filesystem: pafs.FileSystem, root: str, marker: CommitMarker) -> int | None:
    path = _log_path(marker)
    return read_log_arrival_max(filesystem, root, path) if path else None
