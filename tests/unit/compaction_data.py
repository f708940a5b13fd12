"""Worker output for the compaction tests, written by the worker's own sink (RangeWriter),
every reader's view of a data root (what a compaction must leave unchanged), and the
published metering publish tests compare. The one module the compaction tests share (a
fixture: no test imports another test module)."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aggregations.testing import fact, facts_table
from schemas.arrow import IDENTIFIABLE
from schemas.commits import RangeCounts, committed_files
from streams.compaction.run import CompactionReport, compact, sweep_identifiable_leftovers
from streams.encryption import ParquetEncryption
from streams.subject.identifiable_store import list_files, read_rows
from streams.worker.commands import committed_totals
from streams.worker.sink import RangeWriter, recover_partition
from streams.worker.state.range_log import RangeLog, is_log_path, read_log
from tests.unit.test_retention_sweep import POLICY, record

TOPIC = "sieve.raw"
FIRST_DAY = date(2024, 3, 1)
LATER = date(2024, 12, 31)  # every day of the history closed
__all__ = ["LATER", "POLICY", "TOPIC", "compact_all", "metering", "views", "write_history"]


def compact_all(
    root: Path, encryption: ParquetEncryption | None, last: date = LATER
) -> CompactionReport:
    """Compact ``root`` with every day through ``last`` closed and nothing published."""
    return compact(
        pafs.LocalFileSystem(),
        str(root),
        last_closed=last,
        held=(),
        cursor={},
        encryption=encryption,
        sieve_version="test",
    )


def metering(root: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every published metering value, history aside (no corrections count, no update time)."""
    from aggregations.catalog import open_catalog

    connection = open_catalog(str(root), role="billing")
    try:
        return {
            "values": sorted(
                connection.sql(
                    "SELECT grain, date, hour, account_id, meter, value FROM metering_values"
                    " WHERE value <> 0"
                ).fetchall(),
                key=repr,
            )
        }
    finally:
        connection.close()


def write_history(
    root: Path,
    encryption: ParquetEncryption,
    *,
    partitions: int = 2,
    ranges: int = 8,
    per_range: int = 30,
    days: int = 3,
) -> None:
    """``ranges`` ranges per partition over ``days`` days (each range mostly the day of its
    place in the stream, plus a late event of the first day), with identifiable rows, facts,
    a dedup log and consent changes, committed as the worker commits them."""
    writer = RangeWriter(*_fs(root), encryption, "test")
    for partition in range(partitions):
        for number in range(ranges):
            first = number * per_range
            day = FIRST_DAY + timedelta(days=number * days // ranges)
            hours = [
                datetime(day.year, day.month, day.day, i % 24, tzinfo=UTC) for i in range(per_range)
            ]
            hours[-1] = datetime(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day, 23, tzinfo=UTC)
            ids = [f"p{partition}-o{first + i}" for i in range(per_range)]
            users = [f"user-{(first + i) % 5}" for i in range(per_range)]
            facts = facts_table(
                fact(hour, event_key=event, account_id=f"acct-{i % 3}")
                for i, (hour, event) in enumerate(zip(hours, ids, strict=True))
            )
            types = ("request", "page_view", "payment")
            identifiable = pa.Table.from_pylist(
                [
                    record(
                        event,
                        type=types[i % 3],
                        occurred_at=hour,
                        user_id=user,
                        account_id=f"acct-{i % 3}",
                        region=("eu", "us")[i % 2],
                        source_offset=first + i,
                    )
                    for i, (hour, event, user) in enumerate(zip(hours, ids, users, strict=True))
                ],
                schema=IDENTIFIABLE,
            )
            keys = b"".join(hashlib.blake2b(e.encode(), digest_size=16).digest() for e in ids)
            arrivals = np.arange(first, first + per_range, dtype=np.int64) * 1000
            log = RangeLog("k1", keys, arrivals, int(arrivals[-1]))
            writer.commit(
                topic=TOPIC,
                partition=partition,
                first_offset=first,
                last_offset=first + per_range - 1,
                identifiable=identifiable,
                facts=facts,
                counts=RangeCounts(per_range + 1, per_range, 1, {"bad_json": 0}, {}, per_range, 0),
                watermark=hours[-2].isoformat(),
                consent_changes=[(f"c{partition}-{number}", "opt_out")] if number % 3 == 0 else [],
                dedup_log=log.table(),
            )


def _fs(root: Path) -> tuple[Any, str]:
    root.mkdir(parents=True, exist_ok=True)
    return pafs.LocalFileSystem(), str(root)


def _rows(table: pa.Table, key: str) -> list[tuple[Any, ...]]:
    return sorted(tuple(row.values()) for row in table.sort_by(key).to_pylist())


def views(root: Path, encryption: ParquetEncryption, partitions: int = 2) -> dict[str, Any]:
    """What every reader sees: committed facts and identifiable rows (through the markers),
    the subject tools' rows (every file under identifiable/), the status totals, and per
    partition what the worker's recovery resumes from (offset, consent changes in order,
    the dedup keys its logs hold)."""
    fs, base = _fs(root)
    facts = [pq.read_table(f"{base}/{p}") for p in committed_files(fs, base, "facts")]
    properties = encryption.decryption_properties()
    identifiable = [
        pq.ParquetFile(f"{base}/{p}", decryption_properties=properties).read()
        for p in committed_files(fs, base, "identifiable")
    ]
    # What the subject tools read, after the sweep they run first (streams.subject.commands).
    sweep_identifiable_leftovers(fs, base)
    listing = list_files(fs, base)
    subject = [read_rows(fs, file, encryption) for file in listing.files]
    totals, dead, classes, ranges = committed_totals(str(root), TOPIC)
    recovered = {}
    for partition in range(partitions):
        # (It removes what a killed compaction left superseded, as a restarted worker would.)
        state = recover_partition(fs, base, TOPIC, partition)
        keys = Counter[bytes]()
        for marker in state.markers:
            for path in filter(is_log_path, marker.files):
                log = read_log(fs, base, path)
                keys.update(log.event_keys[i : i + 16] for i in range(0, len(log.event_keys), 16))
        recovered[partition] = (
            state.next_offset,
            [c for m in state.markers for c in m.consent_changes],
            sorted(keys.elements()),
            state.markers[-1].watermark if state.markers else None,
        )
    return {
        "facts": _rows(pa.concat_tables(facts), "event_key") if facts else [],
        "identifiable": _rows(pa.concat_tables(identifiable), "event_id") if identifiable else [],
        "subject": _rows(pa.concat_tables(subject), "event_id") if subject else [],
        "status": (dict(totals), dict(dead), dict(classes), ranges),
        "recovered": recovered,
    }
