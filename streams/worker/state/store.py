"""One partition's dedup and consent state in RocksDB (rocksdict), under a local folder.

Layout of the database ``<state folder>/<topic>/<partition>/``:

- column family ``g<N>``: event key (16 bytes) -> arrival (ms, 8 bytes big-endian) of the
  keys accepted with an arrival in generation N, that is [N*G, (N+1)*G) for G half the
  horizon. A generation entirely older than the horizon is dropped whole (one RocksDB
  operation, ~50 ms), so the store holds 1 to 1.5 horizons of keys, however long it runs.
- column family ``consent``: consent key (16 bytes) -> one status byte (opted out, ended);
  people with no restriction have no entry. It grows with people, not with time.
- column family ``logs``: range last offset (8 bytes big-endian) -> [dedup log path, arrival
  clock after the range], for the ranges whose logs may still be needed: a log whose range is
  older than the horizon of a range the store holds is deleted from the data root
  (:meth:`PartitionStore.expired_logs`), so logs do not pile up either.
- ``default``: what the store holds: the identity (data root, topic, partition, horizon),
  the last committed range applied, and per pseudonymization key id the latest arrival of a
  key made with it (so a rotation checks old key ids only while they can still match).

Contract: only committed ranges are applied (:meth:`PartitionStore.apply`, after the range's
marker exists), each in one write batch with the record of its progress, so the store is
always the state after some committed range. Writes skip the write-ahead log: a killed
process may lose the latest ones, and the store is then simply *behind*; atomic flushes keep
the column families consistent with each other. Recovery (:mod:`.recovery`) brings a store
that is behind up to the last marker, and rebuilds one that is ahead or foreign.

Why RocksDB: an LSM tree takes random 16-byte keys at ~1 µs a write and drops a generation
as one operation; faust-streaming's own tables use it through the same binding. rocksdict
holds the GIL during writes (its maintainer measured releasing it as slower), so the worker
writes once per committed range, sorted, from the writer thread.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
from rocksdict import (
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from streams.errors import TransientError
from streams.worker.state.keys import raw_keys, words_from_raw

logger = logging.getLogger(__name__)

GENERATIONS_PER_HORIZON: Final = 2
CONSENT_CF: Final = "consent"
LOGS_CF: Final = "logs"
OPTED_OUT: Final = 1
ENDED: Final = 2
_IDENTITY: Final = b"identity"
_APPLIED: Final = b"applied"
_KEY_IDS: Final = b"key_ids"
_FORMAT: Final = 1
# Memory RocksDB may use for one worker, whatever the number of partitions and keys, sized
# so that it is reached within the first minute at full rate rather than creeping up for
# several horizons (bench/README.md, "Dedup soak": 32 + 64 MiB took the whole run to fill and
# were most of the soak's growth). The cache serves only the lookups the in-memory filters
# cannot rule out (~1.5 % of keys, random ones: no locality to cache); a database flushes
# its memtables every MEMTABLE_BYTES of keys (atomic flush: all its column families at once).
BLOCK_CACHE_BYTES: Final = 8 << 20
WRITE_BUFFER_BYTES: Final = 32 << 20
MEMTABLE_BYTES: Final = 4 << 20
# Long enough for a worker that was frozen (SIGSTOP, a swapped-out VM) past its session to
# wake, learn it lost the partition and close the store; short of the worker's poll interval
# (10 min), after which the group would give the waiting worker's partitions away too.
LOCK_WAIT_SECONDS: Final = 300.0


@dataclass(frozen=True)
class AppliedRange:
    """The last committed range a store holds."""

    last_offset: int
    log_path: str  # the range's sidecar, relative to the data root: it names the range
    arrival_max: int | None  # ms: the partition's arrival clock after the range


@dataclass(frozen=True)
class StoreUpdate:
    """One committed range as the store applies it."""

    first_offset: int
    applied: AppliedRange
    key_id: str  # the pseudonymization key the event keys were made with
    event_keys: bytes  # the accepted events' keys, 16 bytes each
    arrivals: npt.NDArray[np.int64]  # aligned with event_keys
    consent_changes: Sequence[tuple[str, str]]  # (consent key hex, status), in order


class StoreResources:
    """The block cache and memtable budget every store of one worker shares."""

    def __init__(self) -> None:
        self.cache = Cache(BLOCK_CACHE_BYTES)
        self.write_buffers = WriteBufferManager(WRITE_BUFFER_BYTES, False)

    def options(self) -> Options:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        # Writes skip the WAL; atomic flushes keep every column family at the same write.
        options.set_atomic_flush(True)
        table = BlockBasedOptions()
        table.set_block_cache(self.cache)
        # Index blocks grow with the data: charged to the bounded cache, not kept aside.
        table.set_cache_index_and_filter_blocks(True)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_manager(self.write_buffers)
        options.set_write_buffer_size(MEMTABLE_BYTES)
        options.set_max_write_buffer_number(2)
        options.set_max_background_jobs(2)
        options.set_keep_log_file_num(2)
        return options


class PartitionStore:
    """The RocksDB of one partition. Reads may run on one thread while another applies."""

    def __init__(
        self, path: Path, identity: str, horizon_ms: int, resources: StoreResources
    ) -> None:
        self.path = path
        self.horizon_ms = horizon_ms
        self.generation_ms = max(1, horizon_ms // GENERATIONS_PER_HORIZON)
        self._identity = f"{identity}|horizon_ms={horizon_ms}|format={_FORMAT}"
        self._closed = True
        self._resources = resources
        self._write_options = WriteOptions()
        # Properties at run time; rocksdict's stubs declare them as methods.
        self._write_options.disable_wal = True  # type: ignore[method-assign,assignment]
        # A range's keys are written sorted: the memtable then inserts after its last one.
        self._write_options.memtable_insert_hint_per_batch = True
        self._open()
        found = self._read_meta(_IDENTITY)
        if found is None and self.applied is None and not self._generations:
            self._db.put(_IDENTITY, json.dumps(self._identity).encode())  # a new store
        elif found != self._identity:
            logger.info("state in %s was made for other data or settings: reset", path)
            self.reset()

    # --- opening -------------------------------------------------------------------------
    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        options = self._resources.options()
        names = Rdict.list_cf(str(self.path), options) if (self.path / "CURRENT").exists() else []
        families = {name: self._resources.options() for name in names if name != "default"}
        families.setdefault(CONSENT_CF, self._resources.options())
        families.setdefault(LOGS_CF, self._resources.options())
        self._db = _open_waiting(self.path, options, families)
        self._closed = False
        self._db.set_write_options(self._write_options)
        self._consent = self._db.get_column_family(CONSENT_CF)
        self._logs = self._db.get_column_family(LOGS_CF)
        self._generations: Mapping[int, Rdict] = {
            int(name[1:]): self._db.get_column_family(name)
            for name in families
            if name.startswith("g") and name[1:].isdigit()
        }
        applied = self._read_meta(_APPLIED)
        self.applied = AppliedRange(**applied) if applied else None
        self.key_ids: Mapping[str, int] = self._read_meta(_KEY_IDS) or {}

    def _read_meta(self, key: bytes) -> Any:
        value = self._db.get(key)
        return None if value is None else json.loads(value)

    @property
    def filters_path(self) -> Path:
        """Where the dedup filters of this store are saved at a clean stop."""
        return self.path.with_name(f"{self.path.name}.filters")

    def reset(self) -> None:
        """Forget everything (recovery rebuilds the state from the committed ranges)."""
        self.close()
        Rdict.destroy(str(self.path), self._resources.options())
        shutil.rmtree(self.path, ignore_errors=True)
        shutil.rmtree(self.filters_path, ignore_errors=True)
        self._open()
        self._db.put(_IDENTITY, json.dumps(self._identity).encode())

    def close(self) -> None:
        # Every column family handle keeps the database open (rocksdict): drop them first.
        if self._closed:
            return
        self._generations = {}
        del self._consent, self._logs
        self._db.close()
        del self._db
        self._closed = True

    # --- reading -------------------------------------------------------------------------
    @property
    def generations(self) -> tuple[int, ...]:
        return tuple(sorted(self._generations))

    def arrivals(self, keys: list[bytes]) -> list[int | None]:
        """The latest stored arrival of each key (16 raw bytes), None where absent."""
        latest: list[int | None] = [None] * len(keys)
        for _, family in sorted(self._generations.items(), reverse=True):
            missing = [i for i, found in enumerate(latest) if found is None]
            if not missing:
                break
            values = _multi_get(family, [keys[i] for i in missing])
            for i, value in zip(missing, values, strict=True):
                if value is not None:
                    latest[i] = int.from_bytes(value, "big")
        return latest

    def consent_statuses(self, keys: list[bytes]) -> list[int]:
        """The status bits (:data:`OPTED_OUT`, :data:`ENDED`) of each consent key."""
        values = _multi_get(self._consent, keys) if keys else []
        return [0 if value is None else value[0] for value in values]

    def estimated_keys(self, generation: int) -> int:
        """RocksDB's estimate of the keys one generation holds (to size its filter)."""
        estimate = self._generations[generation].property_int_value("rocksdb.estimate-num-keys")
        return int(estimate or 0)

    def event_keys(self, generation: int, chunk: int = 1 << 16) -> Iterator[bytes]:
        """The keys of one generation, ``chunk`` at a time as concatenated 16-byte values."""
        yield from _chunks(self._generations[generation].keys(), chunk)

    def restricted_consent_keys(self, chunk: int = 1 << 16) -> Iterator[bytes]:
        yield from _chunks(self._consent.keys(), chunk)

    def expired_logs(self, floor_ms: int) -> list[tuple[bytes, str]]:
        """(entry, log path) of the ranges whose clock is older than ``floor_ms``, oldest
        first: no rebuild can need their logs once a range at ``floor_ms`` + horizon is held."""
        expired: list[tuple[bytes, str]] = []
        for entry, value in self._logs.items():
            path, clock = json.loads(cast(bytes, value))
            if clock is not None and clock >= floor_ms:
                break
            expired.append((cast(bytes, entry), path))
        return expired

    def forget_logs(self, entries: Sequence[bytes]) -> None:
        batch = WriteBatch(raw_mode=True)
        handle = self._db.get_column_family_handle(LOGS_CF)
        for entry in entries:
            batch.delete(entry, handle)
        self._db.write(batch)

    # --- writing -------------------------------------------------------------------------
    def apply(self, update: StoreUpdate) -> bool:
        """Add one committed range, if it is the next one; False if already held."""
        if self.applied is not None and update.applied.last_offset <= self.applied.last_offset:
            return False
        if self.applied is not None and update.first_offset != self.applied.last_offset + 1:
            # Ranges tile the partition: a gap means a committed range was never applied.
            raise ValueError(
                f"{self.path}: range from offset {update.first_offset} does not follow the"
                f" last one held (through {self.applied.last_offset})"
            )
        batch = WriteBatch(raw_mode=True)
        self._put_event_keys(batch, update.event_keys, update.arrivals)
        self._put_consent(batch, update.consent_changes)
        key_ids = dict(self.key_ids)
        if len(update.arrivals):
            key_ids[update.key_id] = max(key_ids.get(update.key_id, 0), int(update.arrivals.max()))
        applied = update.applied
        if applied.log_path:
            entry = applied.last_offset.to_bytes(8, "big")
            record = json.dumps([applied.log_path, applied.arrival_max]).encode()
            batch.put(entry, record, self._db.get_column_family_handle(LOGS_CF))
        batch.put(_APPLIED, json.dumps(update.applied.__dict__).encode())
        batch.put(_KEY_IDS, json.dumps(key_ids).encode())
        self._db.write(batch)
        self.applied, self.key_ids = update.applied, key_ids
        if update.applied.arrival_max is not None:
            self._drop_expired(update.applied.arrival_max)
        return True

    def _put_event_keys(
        self, batch: WriteBatch, keys: bytes, arrivals: npt.NDArray[np.int64]
    ) -> None:
        if not len(arrivals):
            return
        words = words_from_raw(keys)
        order = np.lexsort((words[:, 1], words[:, 0]))  # byte order of the keys
        words, arrivals = words[order], arrivals[order]
        generations = (arrivals // self.generation_ms).tolist()
        handles = {}
        for generation in dict.fromkeys(generations):
            self._family(generation)
            handles[generation] = self._db.get_column_family_handle(f"g{generation}")
        values = arrivals.astype(">i8").view("V8").tolist()
        for key, value, generation in zip(raw_keys(words), values, generations, strict=True):
            batch.put(key, value, handles[generation])

    def _family(self, generation: int) -> Rdict:
        family = self._generations.get(generation)
        if family is None:
            family = self._db.create_column_family(f"g{generation}", self._resources.options())
            # Copy on write: a reader on another thread keeps the mapping it took.
            self._generations = {**self._generations, generation: family}
        return family

    def _put_consent(self, batch: WriteBatch, changes: Sequence[tuple[str, str]]) -> None:
        if not changes:
            return
        distinct = list(dict.fromkeys(key for key, _ in changes))
        raw = [bytes.fromhex(key) for key in distinct]
        status = dict(zip(distinct, self.consent_statuses(raw), strict=True))
        for key, change in changes:
            status[key] = next_status(status[key], change)
        handle = self._db.get_column_family_handle(CONSENT_CF)
        for key, key_raw in zip(distinct, raw, strict=True):
            if status[key]:
                batch.put(key_raw, bytes([status[key]]), handle)
            else:
                batch.delete(key_raw, handle)

    def _drop_expired(self, arrival_max: int) -> None:
        # Every key of a generation ending at or before (now - horizon) is past the horizon
        # of every later record (arrivals never go back), so no decision can need it.
        floor = arrival_max - self.horizon_ms
        for generation in self.generations:
            if (generation + 1) * self.generation_ms <= floor:
                self._generations = {g: f for g, f in self._generations.items() if g != generation}
                self._db.drop_column_family(f"g{generation}")


def next_status(status: int, change: str) -> int:
    """The status bits after one consent change (the rules of ``privacy.consent``)."""
    if change == "opt_out":
        return status | OPTED_OUT
    if change == "opt_in":
        return status & ~OPTED_OUT
    if change in ("disabled", "terminated"):
        return status | ENDED
    if change == "registered":
        return status & ~ENDED
    raise ValueError(f"unknown consent status {change!r}")


def _multi_get(family: Rdict, keys: list[bytes]) -> list[bytes | None]:
    # rocksdict answers a list of keys with one MultiGet (and releases the GIL meanwhile).
    return cast("list[bytes | None]", family.get(cast("list[Any]", keys)))


def _chunks(keys: Iterable[Any], size: int) -> Iterator[bytes]:
    part: list[bytes] = []
    for key in keys:
        part.append(key)
        if len(part) == size:
            yield b"".join(part)
            part = []
    if part:
        yield b"".join(part)


def _open_waiting(path: Path, options: Options, families: dict[str, Options]) -> Rdict:
    """Open, waiting while another worker process still holds the database's lock.

    Two workers sharing a state folder hand a partition over in a rebalance: the one that
    lost it closes its store when revoked, which can come a moment after the other one's
    assignment.
    """
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    waiting = False
    while True:
        try:
            return Rdict(str(path), options, column_families=families)
        except Exception as error:
            if "lock" not in str(error).lower() or time.monotonic() > deadline:
                raise TransientError(f"cannot open the state store {path}: {error}") from error
            if not waiting:
                logger.info("state store %s: waiting for another worker to release it", path)
                waiting = True
            time.sleep(0.2)
