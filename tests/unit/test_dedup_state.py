"""Dedup on arrival with on-disk state: decisions equal a plain model of the rule, always.

The reference model is the rule as the docs state it, over the full history in a dict: a
record is a duplicate iff the same key was accepted on the partition within the horizon
before it, arrival being the running maximum of the record timestamps. The implementation
under test keeps committed keys in RocksDB, uncommitted ones in memory, filters in front,
and is killed and restored at random points (its store kept, behind, or lost).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.commits import CommitMarker, RangeCounts
from streams.privacy.keyring import Keyring
from streams.privacy.pseudonymize import event_keys
from streams.worker.dedup import Deduplicator
from streams.worker.state.bloom import GrowingBloom, SplitBlockBloom, lane_masks
from streams.worker.state.folder import StateFolder
from streams.worker.state.keys import key_words, raw_keys, words_from_raw
from streams.worker.state.range_log import log_path, read_log
from streams.worker.state.recovery import recover_store
from streams.worker.state.store import AppliedRange, PartitionStore, StoreUpdate

TOPIC = "raw"
HORIZON_MS = 1_000


def reference(records: Sequence[tuple[str, int]], horizon_ms: int) -> list[bool]:
    """The rule over the whole history: True = accepted."""
    accepted: dict[str, int] = {}
    clock = -1
    out = []
    for key, timestamp in records:
        clock = max(clock, timestamp)
        previous = accepted.get(key)
        if previous is not None and previous >= clock - horizon_ms:
            out.append(False)
        else:
            accepted[key] = clock
            out.append(True)
    return out


def hex_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]


# --- keys and filters ------------------------------------------------------------------------


def test_keys_round_trip_through_words_and_raw_bytes_even_with_zero_bytes() -> None:
    keys = ["00" * 16, "ff" * 16, "0102030405060708090a0b0c0d0e0f00", hex_key("x")]
    raw = raw_keys(key_words(keys))
    assert [k.hex() for k in raw] == keys
    assert words_from_raw(b"".join(raw)).tolist() == key_words(keys).tolist()
    with pytest.raises(ValueError, match="32 hex"):
        key_words(["abcd"])


@given(st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=300))
def test_a_bloom_filter_never_misses_a_key_it_was_given(raw: list[bytes]) -> None:
    bloom = GrowingBloom(0)
    words = words_from_raw(b"".join(raw))
    # In two calls, with repeats: keys sharing a block within one call must all stick.
    half = len(words) // 2
    bloom.add(words[:half], lane_masks(words[:half]))
    bloom.add(words[half:], lane_masks(words[half:]))
    assert bloom.might_contain(words, lane_masks(words)).all()


def test_bloom_false_positives_stay_rare_at_capacity_and_the_filter_grows() -> None:
    rng = np.random.default_rng(7)
    single = SplitBlockBloom(200_000)
    words = rng.integers(0, 2**64, size=(single.capacity, 2), dtype=np.uint64)
    single.add(words, lane_masks(words))
    others = rng.integers(0, 2**64, size=(200_000, 2), dtype=np.uint64)
    rate = single.might_contain(others, lane_masks(others)).mean()
    assert rate < 0.01, rate
    growing = GrowingBloom(1_000)
    growing.add(words, lane_masks(words))  # far past its first capacity
    assert growing.might_contain(words, lane_masks(words)).all()
    assert growing.might_contain(others, lane_masks(others)).mean() < 0.02


# --- a partition's dedup with commits, crashes and restores ---------------------------------


@dataclass
class Partition:
    """One partition's dedup as the worker runs it: ranges committed with a log and a
    marker, the store written after the marker, a process that dies and is restored."""

    root: Path
    horizon_ms: int = HORIZON_MS
    key_id: str = "p1"
    keys_under: object = None
    folder: StateFolder = field(default_factory=StateFolder)
    markers: list[CommitMarker] = field(default_factory=list)
    range_first: int = 0
    dedup: Deduplicator | None = None

    def __post_init__(self) -> None:
        self.filesystem = pafs.LocalFileSystem()
        self.base = str(self.root)
        self.restart(lost_store=False)

    @property
    def next_offset(self) -> int:
        return self.markers[-1].last_offset + 1 if self.markers else 0

    def restart(self, *, lost_store: bool) -> str:
        """A new process: uncommitted work gone; the state folder kept or lost."""
        if lost_store:
            self.folder.close()  # a temporary folder: closed and removed
            self.folder = StateFolder()
        store = self.folder.open(TOPIC, 0, f"local:{self.base}", self.horizon_ms)
        outcome = recover_store(store, self.filesystem, self.base, self.markers)
        self.dedup = Deduplicator(store, self.key_id, self.keys_under)  # type: ignore[arg-type]
        self.range_first = self.next_offset
        return outcome

    def process(self, offset: int, batch: Sequence[tuple[str, int]]) -> list[bool]:
        assert self.dedup is not None
        keys = [key for key, _ in batch]
        decisions, pending = self.dedup.check(keys, [ts for _, ts in batch], keys)
        self.dedup.record(pending)
        return decisions

    def commit(self, last_offset: int, *, apply: bool) -> None:
        """Cut the range, write its log and marker; apply it to the store if ``apply``."""
        assert self.dedup is not None
        log = self.dedup.seal()
        stem = f"{TOPIC}+0+{self.range_first}-{last_offset}"
        path = log_path(TOPIC, 0, stem)
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(log.table(), self.root / path)
        self.markers.append(
            CommitMarker(
                topic=TOPIC,
                partition=0,
                first_offset=self.range_first,
                last_offset=last_offset,
                files=[path],
                counts=RangeCounts(0, 0, 0, {}),
                watermark=None,
                consent_changes=[],
                sieve_version="test",
            )
        )
        self.range_first = last_offset + 1
        if apply:
            self.dedup.store.apply(
                StoreUpdate(
                    self.markers[-1].first_offset,
                    AppliedRange(last_offset, path, log.arrival_max),
                    log.key_id,
                    log.event_keys,
                    log.arrivals,
                    [],
                )
            )
            self.dedup.applied()


MAX_CRASHES = 6  # a run that only ever crashes would never get anywhere
# What happens after a batch: nothing, a range commit (store written or not: the process may
# die between the marker and the store write), or a crash (store kept or lost).
ACTIONS = st.sampled_from(
    [
        "none",
        "commit",
        "commit",
        "commit_unapplied",
        "commit_unapplied",
        "crash",
        "crash_lost_store",
    ]
)


@st.composite
def streams_of_records(draw: st.DrawFn) -> list[tuple[str, int]]:
    names = draw(st.lists(st.sampled_from("abcdefgh"), min_size=8, max_size=60))
    step = st.one_of(
        st.integers(0, 300),  # resends within the horizon, mostly
        st.integers(0, 300),
        st.integers(0, 300),
        st.integers(900, 1_300),  # around and across it
        st.integers(-300, -1),  # a clock step back: arrival must not go back
    )
    steps = draw(st.lists(step, min_size=len(names), max_size=len(names)))
    stamps = np.cumsum(steps).tolist()
    return [(hex_key(name), max(0, stamp)) for name, stamp in zip(names, stamps, strict=True)]


@given(
    records=streams_of_records(),
    batch_sizes=st.lists(st.integers(1, 9), min_size=1, max_size=12),
    actions=st.lists(ACTIONS, min_size=1, max_size=12),
)
@settings(max_examples=80)
def test_decisions_equal_the_reference_model_through_commits_and_crashes(
    tmp_path_factory: pytest.TempPathFactory,
    records: list[tuple[str, int]],
    batch_sizes: list[int],
    actions: list[str],
) -> None:
    expected = reference(records, HORIZON_MS)
    partition = Partition(tmp_path_factory.mktemp("dedup"))
    decided: dict[int, bool] = {}
    schedule = _cycle(batch_sizes, actions)
    offset = crashes = 0
    try:
        while offset < len(records):
            size, action = next(schedule)
            batch = records[offset : offset + size]
            for i, decision in enumerate(partition.process(offset, batch)):
                decided[offset + i] = decision
            offset += len(batch)
            if action == "commit":
                partition.commit(offset - 1, apply=True)
            elif action == "commit_unapplied":  # killed between the marker and the store write
                partition.commit(offset - 1, apply=False)
                partition.restart(lost_store=False)
            elif action.startswith("crash") and crashes < MAX_CRASHES:
                crashes += 1
                partition.restart(lost_store=action == "crash_lost_store")
                offset = partition.next_offset  # the uncommitted records are fetched again
    finally:
        partition.folder.close()
    assert [decided[i] for i in range(len(records))] == expected


def _cycle(sizes: list[int], actions: list[str]) -> Iterator[tuple[int, str]]:
    i = 0
    while True:
        yield sizes[i % len(sizes)], actions[i % len(actions)]
        i += 1


def test_a_restart_reopens_catches_up_or_rebuilds_as_the_store_requires(tmp_path: Path) -> None:
    partition = Partition(tmp_path)
    a, b = hex_key("a"), hex_key("b")
    partition.process(0, [(a, 0)])
    partition.commit(0, apply=True)
    assert partition.restart(lost_store=False) == "current"
    partition.process(1, [(b, 10)])
    partition.commit(1, apply=False)  # killed between the marker and the store write
    assert partition.restart(lost_store=False) == "caught up"
    assert partition.process(2, [(a, 20), (b, 30)]) == [False, False]
    partition.commit(2, apply=True)
    assert partition.restart(lost_store=True) == "rebuilt"
    assert partition.process(3, [(a, 40), (b, 2_000)]) == [False, True]


def test_a_store_ahead_of_the_markers_is_rebuilt_from_them(tmp_path: Path) -> None:
    # The store holds a range whose marker is gone (a superseded range, another data root).
    partition = Partition(tmp_path)
    a = hex_key("a")
    partition.process(0, [(a, 0)])
    partition.commit(0, apply=True)
    partition.markers.clear()
    assert partition.restart(lost_store=False) == "rebuilt"
    assert partition.process(0, [(a, 5)]) == [True]


def test_only_ranges_within_the_horizon_are_read_back_on_a_rebuild(tmp_path: Path) -> None:
    partition = Partition(tmp_path)
    for offset in range(6):
        partition.process(offset, [(hex_key(f"k{offset}"), offset * 600)])
        partition.commit(offset, apply=True)
    assert partition.restart(lost_store=True) == "rebuilt"
    assert partition.dedup is not None
    # Horizon 1 s, last arrival 3 s: ranges arriving at 2.4 s and 3 s hold live keys; the
    # range at 1.8 s (past the horizon) is not needed, nor any before it.
    store = partition.dedup.store
    held = [k.hex() for g in store.generations for c in store.event_keys(g) for k in _split(c)]
    assert sorted(held) == sorted([hex_key("k4"), hex_key("k5")])
    assert partition.process(6, [(hex_key("k3"), 3_000), (hex_key("k4"), 3_000)]) == [True, False]


def _split(chunk: bytes) -> list[bytes]:
    return [chunk[i : i + 16] for i in range(0, len(chunk), 16)]


def test_generations_past_the_horizon_are_dropped_whole(tmp_path: Path) -> None:
    partition = Partition(tmp_path)
    for offset in range(20):
        partition.process(offset, [(hex_key(f"k{offset}"), offset * 250)])
        partition.commit(offset, apply=True)
    assert partition.dedup is not None
    store = partition.dedup.store
    # Generations of 500 ms; the clock at 4.75 s keeps those ending after 3.75 s.
    assert store.generations == (7, 8, 9)
    last_log = read_log(partition.filesystem, partition.base, partition.markers[-1].files[0])
    assert last_log.arrival_max == 4_750


# --- key rotation -----------------------------------------------------------------------------


def test_a_resend_straddling_a_key_rotation_is_caught_within_the_horizon(tmp_path: Path) -> None:
    old = Keyring.generate()
    rotated = Keyring(
        pseudonymization={"p1": old.pseudonymization_key("p1"), "p2": b"r" * 32},
        pseudonymization_active="p2",
        encryption=dict(old.encryption_keys()[0]),
        encryption_active=old.encryption_key_id,
        consent="p1",
    )
    calls: list[str] = []

    def keys_under(key_id: str, ids: Sequence[str]) -> list[str]:
        calls.append(key_id)
        return event_keys(ids, rotated, key_id)

    partition = Partition(tmp_path, key_id="p1")
    ids = ["event-1", "event-2"]
    first = event_keys(ids, old)
    assert _process_ids(partition, 0, first, ids, [0, 0]) == [True, True]
    partition.commit(1, apply=True)
    # The worker restarts with the rotated keyring: same ids, new keys.
    partition.key_id, partition.keys_under = "p2", keys_under
    partition.restart(lost_store=False)
    again = event_keys(ids, rotated)
    assert again != first
    assert _process_ids(partition, 2, again[:1], ids[:1], [500]) == [False]
    assert calls == ["p1"]
    # Past the horizon of p1's last key, p1 is no longer consulted: no extra cost.
    assert _process_ids(partition, 3, again[1:], ids[1:], [1_200]) == [True]
    assert calls == ["p1"]


def _process_ids(
    partition: Partition, offset: int, keys: list[str], ids: list[str], stamps: list[int]
) -> list[bool]:
    assert partition.dedup is not None
    decisions, pending = partition.dedup.check(keys, stamps, ids)
    partition.dedup.record(pending)
    return decisions


# --- filters saved at a clean stop --------------------------------------------------------------


def test_filters_saved_at_a_clean_stop_are_reused_only_while_the_store_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rebuilt: list[int] = []
    iterate = PartitionStore.event_keys

    def counting(store: PartitionStore, generation: int, chunk: int = 1 << 16) -> Iterator[bytes]:
        rebuilt.append(generation)
        return iterate(store, generation, chunk)

    monkeypatch.setattr(PartitionStore, "event_keys", counting)
    partition = Partition(tmp_path)
    keys = [hex_key(f"k{i}") for i in range(50)]
    partition.process(0, [(key, 10) for key in keys])
    partition.commit(49, apply=True)

    def clean_stop() -> None:
        assert partition.dedup is not None
        partition.dedup.save_filters()
        partition.folder.close_partition(TOPIC, 0)

    clean_stop()
    rebuilt.clear()
    partition.restart(lost_store=False)
    assert rebuilt == [], "the saved filters were not used"
    assert partition.process(50, [(keys[0], 20), (hex_key("new"), 20)]) == [False, True]
    # Killed now: the next process must not trust the filters saved before (the record of
    # them was consumed when they were loaded), and rebuilds them from the store.
    partition.folder.close_partition(TOPIC, 0)
    partition.restart(lost_store=False)
    assert rebuilt == [0]
    assert partition.process(50, [(keys[1], 30)]) == [False]
    # Saved for a store that then moved on (another process applied a range after): the
    # record names another range than the store holds, so the filters are not trusted.
    partition.commit(50, apply=True)
    clean_stop()
    assert partition.dedup is not None
    stamp = partition.dedup.store.filters_path / "stamp.json"
    stamp.write_text(json.dumps({"applied": [49, partition.markers[0].files[0]]}))
    rebuilt.clear()
    partition.restart(lost_store=False)
    assert rebuilt == [0]
    assert not stamp.exists()
