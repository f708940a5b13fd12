"""Deduplication by event key over an arrival-time horizon, deterministic under replay.

The rule (docs/architecture.md, "Dedup"): a record is a duplicate iff a record with the same
event key was *accepted* on its partition within the horizon before it, in arrival order.
Arrival is the Kafka record timestamp (log-append time on the raw topic Sieve creates), made
monotonic per partition: a record's arrival is the largest timestamp of its partition's
decided records up to and including it, so a broker clock that steps back cannot bring
forgotten keys back. Only what the log holds decides, never the wall clock or how records
were batched, so a replay after a crash decides the same. Event time plays no part: a
producer's retry of an event that is days late is caught like any other.

State, and why it is exact at any volume:

- committed ranges: in the partition's on-disk store (:mod:`streams.worker.state.store`),
  applied only once a range's commit marker exists;
- ranges not committed yet: in memory, as sorted numpy runs (:mod:`.state.overlay`);
- in front of both: a Bloom filter per arrival generation (half a horizon), so a key
  that is certainly new (most of them) costs a vectorised test and no lookup. Keys the
  filter cannot rule out, and keys repeated within the batch, are decided one by one
  against their exact latest arrival.

Key rotation: event keys are HMACs under the active pseudonymization key. While the store
holds keys made with another key id within the horizon, a batch's events are also keyed
with that id and tested, so a resend straddling a rotation is caught; once the horizon has
passed that id's last key the extra cost stops.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress

import numpy as np
import numpy.typing as npt
import pyarrow.fs as pafs

from streams.storage import write_atomic
from streams.worker.state.bloom import GrowingBloom, Masks, lane_masks
from streams.worker.state.keys import Words, key_words, raw_keys, words_from_raw
from streams.worker.state.overlay import KeyRun, RangeKeys, latest_arrivals
from streams.worker.state.range_log import RangeLog
from streams.worker.state.store import PartitionStore

logger = logging.getLogger(__name__)

# (key id, event ids) -> the event keys of those ids under that key id.
KeysUnder = Callable[[str, Sequence[str]], list[str]]
_STAMP = "stamp.json"
# A new generation's filter holds this many keys before it grows a slice (384 KiB).
FIRST_FILTER_KEYS = 1 << 18


@dataclass(frozen=True)
class PendingKeys:
    """What one :meth:`Deduplicator.check` decided, to apply with :meth:`Deduplicator.record`."""

    keys: Sequence[str]  # the accepted event keys, in order
    words: Words  # their 128 bits
    masks: Masks  # their filter bits
    arrivals: npt.NDArray[np.int64]  # their arrivals (ms), non-decreasing
    clock: int | None  # the partition's arrival clock after the checked records


class Deduplicator:
    """The dedup decisions of one partition over its store, overlay and filters."""

    def __init__(
        self, store: PartitionStore, key_id: str, keys_under: KeysUnder | None = None
    ) -> None:
        self.horizon_ms = store.horizon_ms
        self.store = store
        self._key_id = key_id
        self._keys_under = keys_under
        self.clock: int | None = store.applied.arrival_max if store.applied else None
        # Latest arrival of a key made with each key id (the store's, then ours).
        self._key_ids: dict[str, int] = dict(store.key_ids)
        self._filters: dict[int, GrowingBloom] = {}
        self._open = RangeKeys()
        self._sealed: deque[RangeKeys] = deque()
        saved = _saved_filters(store)
        for generation in store.generations:
            bloom = saved.get(generation)
            if bloom is None:  # ~0.4 µs a key: what a saved filter spares after a clean stop
                bloom = GrowingBloom(store.estimated_keys(generation))
                for chunk in store.event_keys(generation):
                    words = words_from_raw(chunk)
                    bloom.add(words, lane_masks(words))
            self._filters[generation] = bloom

    def save_filters(self) -> None:
        """Save the filters for the next process to open this store (a clean stop).

        They are trusted only by a process that finds the store holding the same range
        as now; the first process to open the store deletes the record, so a filter that
        a later, uncleanly stopped process would have left behind is never loaded.
        """
        folder = self.store.filters_path
        folder.mkdir(parents=True, exist_ok=True)
        for generation, bloom in self._filters.items():
            bloom.save(folder / f"g{generation}.npz")
        applied = self.store.applied
        stamp = {"applied": None if applied is None else [applied.last_offset, applied.log_path]}
        stamp_bytes = json.dumps(stamp).encode()
        write_atomic(
            pafs.LocalFileSystem(), str(folder / _STAMP), lambda out: out.write(stamp_bytes)
        )

    # --- deciding ------------------------------------------------------------------------
    def check(
        self, keys: Sequence[str], timestamps_ms: Sequence[int], event_ids: Sequence[str]
    ) -> tuple[list[bool], PendingKeys]:
        """Decide records in order without changing the state: True to accept, False for a
        duplicate. ``timestamps_ms`` are the records' Kafka timestamps (-1: none, the clock
        stands still), ``event_ids`` the ids the ``keys`` were made from (for old key ids).

        A duplicate of an earlier key of the same call is caught (the call's own accepted
        keys count as seen), so deciding ``a + b`` equals deciding ``a``, recording it,
        then deciding ``b``.
        """
        count = len(keys)
        if not count == len(timestamps_ms) == len(event_ids):
            raise ValueError("keys, timestamps and event ids must be aligned")
        arrivals = self._arrivals(timestamps_ms)
        if not count:
            nothing = np.empty((0, 2), np.uint64)
            return [], PendingKeys([], nothing, lane_masks(nothing), arrivals, self.clock)
        words = key_words(keys)
        masks = lane_masks(words)
        floor = int(arrivals[0]) - self.horizon_ms  # the oldest arrival that can still match
        candidates = self._maybe_seen(words, masks, floor)
        if len(set(keys)) != count:
            candidates |= _repeated(keys)
        aliases = self._old_keys(event_ids, floor, candidates)
        decisions = [True] * count
        clock = int(arrivals[-1])
        if not candidates.any():  # the common case: every key certainly new
            return decisions, PendingKeys(keys, words, masks, arrivals, clock)
        self._decide_candidates(keys, arrivals, candidates, aliases, decisions)
        if False not in decisions:  # the filter's false positives only
            return decisions, PendingKeys(keys, words, masks, arrivals, clock)
        accepted = np.fromiter(decisions, dtype=bool, count=count)
        return decisions, PendingKeys(
            keys=list(compress(keys, decisions)),
            words=words[accepted],
            masks=masks[accepted],
            arrivals=arrivals[accepted],
            clock=clock,
        )

    def _arrivals(self, timestamps_ms: Sequence[int]) -> npt.NDArray[np.int64]:
        stamps = np.asarray(timestamps_ms, dtype=np.int64)
        start = -1 if self.clock is None else self.clock
        return np.maximum.accumulate(np.maximum(stamps, start)) if len(stamps) else stamps

    def _maybe_seen(self, words: Words, masks: Masks, floor: int) -> npt.NDArray[np.bool_]:
        maybe = np.zeros(len(words), dtype=bool)
        for generation, bloom in list(self._filters.items()):
            if (generation + 1) * self.store.generation_ms > floor:
                maybe |= bloom.might_contain(words, masks)
        return maybe

    def _old_keys(
        self, event_ids: Sequence[str], floor: int, candidates: npt.NDArray[np.bool_]
    ) -> dict[int, list[str]]:
        """Keys of the same events under key ids still live in the horizon (rotation)."""
        aliases: dict[int, list[str]] = {}
        for key_id, latest in list(self._key_ids.items()):
            if key_id == self._key_id or latest < floor or self._keys_under is None:
                continue
            try:
                old = self._keys_under(key_id, event_ids)
            except KeyError:
                # The keyring no longer holds it: resends of its events pass until the horizon
                # of its last key has passed. Said once; the id is not asked again.
                logger.warning(
                    "pseudonymization key %s was removed while dedup still holds keys made with"
                    " it: resends straddling that rotation are not caught",
                    key_id,
                )
                self._key_ids.pop(key_id, None)
                continue
            old_words = key_words(old)
            maybe = self._maybe_seen(old_words, lane_masks(old_words), floor)
            for i in np.flatnonzero(maybe).tolist():
                aliases.setdefault(i, []).append(old[i])
            candidates |= maybe
        return aliases

    def _decide_candidates(
        self,
        keys: Sequence[str],
        arrivals: npt.NDArray[np.int64],
        candidates: npt.NDArray[np.bool_],
        aliases: dict[int, list[str]],
        decisions: list[bool],
    ) -> None:
        positions = np.flatnonzero(candidates).tolist()
        old_keys = [old for olds in aliases.values() for old in olds]
        wanted = list(dict.fromkeys([keys[i] for i in positions] + old_keys))
        latest = self._latest_arrivals(wanted)
        horizon = self.horizon_ms
        for i in positions:
            key, arrival = keys[i], int(arrivals[i])
            previous = [latest.get(key)] + [latest.get(old) for old in aliases.get(i, ())]
            seen = max((p for p in previous if p is not None), default=None)
            if seen is not None and seen >= arrival - horizon:
                decisions[i] = False
            else:
                latest[key] = arrival  # accepted: later records of the call see it

    def _latest_arrivals(self, keys: list[str]) -> dict[str, int]:
        """Exact latest arrival of each key: uncommitted ranges first, then the store."""
        words = key_words(keys)
        found = latest_arrivals([*self._sealed, self._open], words)
        latest = {key: int(a) for key, a in zip(keys, found.tolist(), strict=True) if a >= 0}
        rest = np.flatnonzero(found < 0)
        if len(rest):
            stored = self.store.arrivals(raw_keys(words[rest]))
            for i, arrival in zip(rest.tolist(), stored, strict=True):
                if arrival is not None:
                    latest[keys[i]] = arrival
        return latest

    # --- changing ------------------------------------------------------------------------
    def record(self, pending: PendingKeys) -> None:
        """Apply what :meth:`check` decided (the batch it decided is complete)."""
        if not len(pending.arrivals):
            self.clock = pending.clock
            return
        span = self.store.generation_ms
        arrivals = pending.arrivals
        first, last = int(arrivals[0]) // span, int(arrivals[-1]) // span
        if first == last:  # arrivals never decrease: one generation, unless it just turned
            self._filter(first).add(pending.words, pending.masks)
        else:
            bounds = np.searchsorted(arrivals, np.arange(first + 1, last + 1) * span)
            starts, ends = [0, *bounds.tolist()], [*bounds.tolist(), len(arrivals)]
            for generation, start, end in zip(range(first, last + 1), starts, ends, strict=True):
                if end > start:
                    self._filter(generation).add(pending.words[start:end], pending.masks[start:end])
        self._open.runs.append(KeyRun.of(pending.words, arrivals))
        self._key_ids[self._key_id] = int(pending.arrivals[-1])
        self.clock = pending.clock
        self._forget_expired()

    def _filter(self, generation: int) -> GrowingBloom:
        bloom = self._filters.get(generation)
        if bloom is None:
            # Sized like the generation before it: steady traffic then needs one slice.
            previous = self._filters.get(generation - 1)
            bloom = GrowingBloom(max(previous.count if previous else 0, FIRST_FILTER_KEYS))
            self._filters[generation] = bloom
        return bloom

    def _forget_expired(self) -> None:
        # A generation that ended before (clock - horizon) can match no later record.
        floor = (self.clock or 0) - self.horizon_ms
        span = self.store.generation_ms
        for generation in [g for g in self._filters if (g + 1) * span <= floor]:
            del self._filters[generation]

    def seal(self) -> RangeLog:
        """Close the keys recorded since the last seal into one range's log (the range is
        cut); they stay in memory until :meth:`applied`."""
        keys, self._open = self._open, RangeKeys()
        self._sealed.append(keys)
        return RangeLog(
            key_id=self._key_id,
            event_keys=np.ascontiguousarray(keys.words(), dtype=">u8").tobytes(),
            arrivals=keys.arrivals(),
            arrival_max=self.clock,
        )

    def applied(self) -> None:
        """The oldest sealed range is in the store now: drop it from memory."""
        self._sealed.popleft()

    def discard_sealed(self) -> None:
        """Forget sealed ranges that will never be applied (their write failed)."""
        self._sealed.clear()

    @property
    def key_ids(self) -> dict[str, int]:
        return dict(self._key_ids)


def _repeated(keys: Sequence[str]) -> npt.NDArray[np.bool_]:
    """Positions of keys that occur more than once in ``keys``."""
    first: dict[str, int] = {}
    repeated = np.zeros(len(keys), dtype=bool)
    for i, key in enumerate(keys):
        j = first.setdefault(key, i)
        if j != i:
            repeated[i] = repeated[j] = True
    return repeated


def _saved_filters(store: PartitionStore) -> dict[int, GrowingBloom]:
    """The filters a clean stop saved, if the store still holds what it held then."""
    stamp_path = store.filters_path / _STAMP
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return {}
    stamp_path.unlink()  # from now on this process may change the store
    applied = store.applied
    held = None if applied is None else [applied.last_offset, applied.log_path]
    if stamp.get("applied") != held:
        return {}
    filters = {}
    for generation in store.generations:
        path = store.filters_path / f"g{generation}.npz"
        if path.exists():
            filters[generation] = GrowingBloom.load(path)
    return filters
