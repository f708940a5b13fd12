"""The dedup log of one range: its accepted event keys with their arrivals (a sidecar file).

Written with the range's outputs, before its commit marker, and listed in the marker, so it
exists iff the range is committed (``sink``). It is what a lost or stale store is rebuilt
from (:mod:`.recovery`), so no decision ever depends on a key that no committed range holds.

It is internal: ``_dedup/`` is no dataset, nothing publishes or queries it. It holds event
keys (pseudonyms of event ids, as the facts do) and Kafka record timestamps, nothing about
people. The file's metadata carries the partition's arrival clock after the range and the
pseudonymization key id the keys were made with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from streams.worker.state.keys import KEY_BYTES

LOG_DIR: Final = "_dedup"
LOG_SCHEMA: Final = pa.schema(
    [
        pa.field("event_key", pa.binary(KEY_BYTES), nullable=False),
        pa.field("arrival_ms", pa.int64(), nullable=False),
    ],
    metadata={"sieve.dataset": "dedup_log", "sieve.schema_version": "1"},
)
_KEY_ID: Final = b"sieve.key_id"
_ARRIVAL_MAX: Final = b"sieve.arrival_max_ms"


@dataclass(frozen=True)
class RangeLog:
    """What a range adds to the dedup store (consent changes travel in the marker)."""

    key_id: str
    event_keys: bytes  # 16 bytes per accepted event, in offset order
    arrivals: npt.NDArray[np.int64]
    arrival_max: int | None  # the partition's arrival clock after the range (ms)

    def table(self) -> pa.Table:
        keys = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(KEY_BYTES), len(self.arrivals), [None, pa.py_buffer(self.event_keys)]
        )
        metadata = {**LOG_SCHEMA.metadata, _KEY_ID: self.key_id.encode()}
        if self.arrival_max is not None:
            metadata[_ARRIVAL_MAX] = str(self.arrival_max).encode()
        return pa.table(
            [keys, pa.array(self.arrivals, pa.int64())], schema=LOG_SCHEMA
        ).replace_schema_metadata(metadata)


def log_path(topic: str, partition: int, stem: str) -> str:
    """Where a range's log goes, relative to the data root (``stem`` names the range)."""
    return f"{LOG_DIR}/{topic}/{partition}/{stem}.parquet"


def is_log_path(relative_path: str) -> bool:
    return relative_path.startswith(f"{LOG_DIR}/")


def read_log(filesystem: pafs.FileSystem, root: str, relative_path: str) -> RangeLog:
    table = pq.read_table(f"{root}/{relative_path}", filesystem=filesystem)
    return _from_table(table)


def read_log_arrival_max(filesystem: pafs.FileSystem, root: str, relative_path: str) -> int | None:
    """The arrival clock after the range, from the file's footer only."""
    metadata = pq.read_schema(f"{root}/{relative_path}", filesystem=filesystem).metadata or {}
    value = metadata.get(_ARRIVAL_MAX)
    return None if value is None else int(value)


def _from_table(table: pa.Table) -> RangeLog:
    metadata = table.schema.metadata or {}
    keys = table["event_key"].combine_chunks()
    arrival_max = metadata.get(_ARRIVAL_MAX)
    data = keys.buffers()[1]
    raw = (
        b""
        if data is None
        else data.to_pybytes()[keys.offset * KEY_BYTES :][: len(keys) * KEY_BYTES]
    )
    return RangeLog(
        key_id=metadata.get(_KEY_ID, b"").decode(),
        event_keys=raw,
        arrivals=table["arrival_ms"].to_numpy().astype(np.int64),
        arrival_max=None if arrival_max is None else int(arrival_max),
    )


def delete_log(filesystem: pafs.FileSystem, root: str, relative_path: str) -> bool:
    """Delete a range's log; False if it was gone already."""
    try:
        filesystem.delete_file(f"{root}/{relative_path}")
    except FileNotFoundError:
        return False
    return True
