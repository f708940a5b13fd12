"""Test support: write committed facts (files + commit markers) the way a worker does.

Used by the aggregation tests and usable by anyone who needs a data root with facts and no
Kafka: ``write_committed_facts(root, facts_table(rows), first_offset=0)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aggregations.analytics import Privacy
from aggregations.dp.bounding import Bounds
from aggregations.dp.budget import Budget
from schemas.arrow import FACTS, conform
from schemas.commits import (
    CommitMarker,
    RangeCounts,
    encode_marker,
    marker_path,
    output_stem,
)

# The settings' default budget and bounds, for tests that do not study them.
DEFAULT_PRIVACY = Privacy(Budget(epsilon=1.0, delta=1e-6), Bounds(events_per_unit=32))

_DEFAULTS: dict[str, Any] = {
    "type": "request",
    "account_id": "acct-1",
    "country": "FR",
    "device_class": "desktop",
    "browser_family": "Firefox",
    "os_family": "Linux",
    "is_bot": False,
    "bytes": 0,
    "session_seconds": 0.0,
    "subject_key": None,
    "key_id": "k1",
}


def fact(occurred_hour: datetime, **fields: Any) -> dict[str, Any]:
    """One FACTS row with defaults for every field not given (``event_key`` must be unique:
    it defaults to a counter-free placeholder that :func:`facts_table` fills in)."""
    row = {**_DEFAULTS, "occurred_hour": occurred_hour, **fields}
    unknown = set(row) - set(FACTS.names)
    if unknown:
        raise ValueError(f"not FACTS columns: {sorted(unknown)}")
    return row


def facts_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """A FACTS table from row dicts; missing ``event_key`` values are numbered."""
    filled = [
        {"event_key": f"ev-{i:08d}", **row} if "event_key" not in row else dict(row)
        for i, row in enumerate(rows)
    ]
    return pa.Table.from_pylist(filled, schema=FACTS)


def write_committed_facts(
    data_root: Path,
    table: pa.Table,
    *,
    first_offset: int,
    topic: str = "sieve.raw",
    partition: int = 0,
) -> CommitMarker:
    """Write ``table`` as the facts of offsets [first, first + rows - 1], one file per
    occurred date, then the commit marker listing them (which is what makes them count)."""
    table = conform(table, FACTS)
    last_offset = first_offset + max(table.num_rows, 1) - 1
    stem = output_stem(topic, partition, first_offset, last_offset)
    days = pc.cast(table["occurred_hour"], pa.date32())
    files = []
    for day in sorted(set(days.to_pylist())):
        relative = f"facts/date={day.isoformat()}/{stem}.parquet"
        path = data_root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(pc.equal(days, pa.scalar(day, pa.date32()))), path)
        files.append(relative)
    marker = CommitMarker(
        topic=topic,
        partition=partition,
        first_offset=first_offset,
        last_offset=last_offset,
        files=files,
        counts=RangeCounts(
            raw=table.num_rows,
            accepted=table.num_rows,
            duplicates=0,
            dead_lettered={},
            identifiable={},
            facts=table.num_rows,
            bytes_written=0,
        ),
        watermark=None,
        consent_changes=[],
        sieve_version="test",
    )
    path = data_root / marker_path(topic, partition, first_offset, last_offset)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_marker(marker))
    return marker


def write_uncommitted_facts(data_root: Path, table: pa.Table, name: str) -> Path:
    """A facts file with no marker (a crashed range): readers must ignore it."""
    path = data_root / "facts" / "date=2000-01-01" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(conform(table, FACTS), path)
    return path
