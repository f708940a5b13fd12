"""The privacy ledger: every analytics batch ever released, with what it spent.

It lives at ``<data root>/_privacy/ledger/date=<day>/batch-<n>.parquet``, outside
``published/``: deleting the published analytics does not reset a day's budget, and no
catalog role can read it. Each entry is the released table itself (the exact rows that were
published) with the spend in its metadata, written atomically *before* the published copy:

- the accountant sums the rho of a day's entries (:func:`spent_rho`);
- a published batch file that is missing (``published/analytics`` deleted, a crash between
  the two writes) is restored from its entry, so republishing from scratch reproduces the
  recorded release and spends nothing;
- a published batch with no entry means the ledger lost a record: the budget that day spent
  is unknown, and that day gets no further batch (aggregations/analytics.py refuses it).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import date
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

from aggregations.schemas import ANALYTICS_DIR
from aggregations.storage import Root, copy_file_atomic, list_parquet, write_parquet_atomic

LEDGER_DIR: Final = "_privacy/ledger"
RELEASE_KEY: Final = b"sieve.release"
_BATCH_FILE: Final = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})/batch-(\d{4,})\.parquet$")


@dataclass(frozen=True)
class Entry:
    """One released batch: which facts, what it spent, under which bounds."""

    day: date
    batch: int  # the first schedule slot it released
    slots: tuple[int, ...]  # every slot it released (several when they fell due together)
    rho: float  # zero-concentrated DP spent, by OpenDP's privacy map of the batch
    delta: float  # the day's delta the epsilon below is computed at
    epsilon_after: float  # the day's epsilon at `delta` once this batch counted
    keys_per_person: int
    events_per_person_day: int
    values_per_person: int
    facts: int  # facts the batch covered
    covered_files: tuple[str, ...]
    publish_run: str

    @property
    def _name(self) -> str:
        return f"date={self.day.isoformat()}/batch-{self.batch:04d}.parquet"

    @property
    def ledger_path(self) -> str:
        return f"{LEDGER_DIR}/{self._name}"

    @property
    def published_path(self) -> str:
        return f"{ANALYTICS_DIR}/{self._name}"

    def to_json(self) -> bytes:
        fields = asdict(self)
        fields["day"] = self.day.isoformat()
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Entry:
        fields = json.loads(data)
        fields["day"] = date.fromisoformat(fields["day"])
        fields["slots"] = tuple(fields["slots"])
        fields["covered_files"] = tuple(fields["covered_files"])
        return cls(**fields)


def with_entry(table: pa.Table, entry: Entry) -> pa.Table:
    metadata = dict(table.schema.metadata or {})
    metadata[RELEASE_KEY] = entry.to_json()
    return table.replace_schema_metadata(metadata)


def entry_of(path: str, root: Root) -> Entry | None:
    """The entry recorded in a ledger or published batch file (None: not a DP release)."""
    metadata = pq.read_schema(path, filesystem=root.fs).metadata or {}
    raw = metadata.get(RELEASE_KEY)
    if raw is None or raw == b"{}":
        return None
    return Entry.from_json(raw)


def read_ledger(root: Root) -> dict[date, list[Entry]]:
    """Every ledger entry, per day, in batch order."""
    entries: dict[date, list[Entry]] = {}
    for path in list_parquet(root, LEDGER_DIR):
        entry = entry_of(path, root)
        if entry is None:
            raise ValueError(f"{path} is in the privacy ledger but records no release")
        entries.setdefault(entry.day, []).append(entry)
    for day_entries in entries.values():
        day_entries.sort(key=lambda e: e.batch)
    return entries


def entry_at(root: Root, day: date, batch: int) -> Entry:
    """The entry recorded for batch ``batch`` of ``day``."""
    path = root.join(f"{LEDGER_DIR}/date={day.isoformat()}/batch-{batch:04d}.parquet")
    entry = entry_of(path, root)
    if entry is None:
        raise ValueError(f"{path} is in the privacy ledger but records no release")
    return entry


def read_day(root: Root, day: date) -> list[Entry]:
    """The ledger entries of one day, in batch order (reads that day's folder only)."""
    entries = []
    for path in list_parquet(root, f"{LEDGER_DIR}/date={day.isoformat()}"):
        entry = entry_of(path, root)
        if entry is None:
            raise ValueError(f"{path} is in the privacy ledger but records no release")
        entries.append(entry)
    return sorted(entries, key=lambda e: e.batch)


def batch_names(root: Root, folder: str) -> tuple[dict[date, set[int]], list[str]]:
    """The batch files under ``folder`` by their names alone (no file is opened): per day,
    the batch numbers; and the paths of Parquet files whose name is not a batch's."""
    batches: dict[date, set[int]] = {}
    others = []
    for path in list_parquet(root, folder):
        match = _BATCH_FILE.search(path)
        if match is None:
            others.append(path)
            continue
        batches.setdefault(date.fromisoformat(match.group(1)), set()).add(int(match.group(2)))
    return batches, others


def spent_rho(entries: list[Entry]) -> float:
    """What a day's entries spent together: zCDP composes by adding rho."""
    return sum(entry.rho for entry in entries)


def record(root: Root, entry: Entry, table: pa.Table) -> None:
    """Write the entry (the release and its spend): from now on the budget is spent."""
    write_parquet_atomic(root, entry.ledger_path, with_entry(table, entry))


def publish_recorded(root: Root, entry: Entry) -> None:
    """Write the published copy of a recorded release: the ledger file, byte for byte."""
    copy_file_atomic(root, entry.ledger_path, entry.published_path)
