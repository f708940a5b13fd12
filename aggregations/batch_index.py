"""The batch index: what the last run found in the privacy ledger and ``published/analytics``,
so that a publish with nothing new reads one small file instead of listing both folders
(one folder per day each: a listing that grows with history).

``published/analytics/_batches.json`` holds the batches recorded in the ledger and those
published, per day, as they stand at the end of the last run that completed. Only a run with
nothing to publish trusts it, and only when the previous run did not crash (a crashed run may
have recorded batches the index does not know): every other run lists both folders, restores
what is missing and writes the index again. Deleting ``published/analytics`` deletes the
index with it, so "delete the analytics and publish again" still restores every recorded
release on the next run, whatever it has to do. A copy deleted one file at a time is restored
by the next run that has facts or windows to publish.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Final

import msgspec

from aggregations.analytics import BatchListing
from aggregations.schemas import ANALYTICS_DIR
from aggregations.storage import Root, read_bytes, write_bytes_atomic

INDEX: Final = f"{ANALYTICS_DIR}/_batches.json"


class _Index(msgspec.Struct, forbid_unknown_fields=True):
    recorded: dict[date, list[int]]
    published: dict[date, list[int]]


def read_index(root: Root) -> BatchListing | None:
    """The listing the last completed run left, or None (no index, or not readable)."""
    data = read_bytes(root, INDEX)
    if data is None:
        return None
    try:
        index = msgspec.json.decode(data, type=_Index)
    except msgspec.DecodeError:
        return None  # listed again, and written again, by this run
    return BatchListing(
        {day: set(batches) for day, batches in index.recorded.items()},
        {day: set(batches) for day, batches in index.published.items()},
    )


def write_index(root: Root, listing: BatchListing, released: Iterable[tuple[date, int]]) -> None:
    """The index after a run: ``listing`` (as found, restored copies included) plus the
    batches the run ``released`` (recorded, then published)."""
    recorded = {day: set(batches) for day, batches in listing.recorded.items()}
    published = {day: set(batches) for day, batches in listing.published.items()}
    for day, batch in released:
        recorded.setdefault(day, set()).add(batch)
        published.setdefault(day, set()).add(batch)
    index = _Index(
        {day: sorted(batches) for day, batches in sorted(recorded.items())},
        {day: sorted(batches) for day, batches in sorted(published.items())},
    )
    write_bytes_atomic(root, INDEX, msgspec.json.encode(index))
