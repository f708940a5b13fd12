"""Keys accepted in ranges that are not committed yet: sorted runs, looked up in bulk.

A dict of key strings cost ~0.2 µs a key to fill, for a lookup that only the few keys the
filter cannot rule out ever need. A run keeps one batch's keys as numpy words sorted by
their high word (24 bytes a key) and answers a whole list of keys with two binary searches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streams.worker.state.keys import Words

Arrivals = npt.NDArray[np.int64]


@dataclass(frozen=True)
class KeyRun:
    """One recorded batch's keys, sorted by high word, with their arrivals."""

    high: npt.NDArray[np.uint64]
    low: npt.NDArray[np.uint64]
    arrivals: Arrivals

    @staticmethod
    def of(words: Words, arrivals: Arrivals) -> KeyRun:
        order = np.argsort(words[:, 0], kind="stable")
        return KeyRun(words[order, 0], words[order, 1], arrivals[order])

    def latest(self, words: Words) -> Arrivals:
        """Per queried key: its latest arrival in this run, -1 if absent."""
        found = np.full(len(words), -1, dtype=np.int64)
        if not len(self.high):
            return found
        left = np.searchsorted(self.high, words[:, 0], "left")
        right = np.searchsorted(self.high, words[:, 0], "right")
        once = np.flatnonzero(right - left == 1)
        at = left[once]
        same = self.low[at] == words[once, 1]
        found[once[same]] = self.arrivals[at[same]]
        # Several entries under one high word: the same key accepted twice in the batch (its
        # horizon passed within it), or two keys sharing 64 bits. Rare: one by one.
        for i in np.flatnonzero(right - left > 1).tolist():
            span = slice(int(left[i]), int(right[i]))
            matching = self.arrivals[span][self.low[span] == words[i, 1]]
            if len(matching):
                found[i] = int(matching.max())
        return found


@dataclass
class RangeKeys:
    """The runs of one range, oldest first."""

    runs: list[KeyRun] = field(default_factory=list)

    def words(self) -> Words:
        if not self.runs:
            return np.empty((0, 2), np.uint64)
        return np.column_stack(
            [
                np.concatenate([r.high for r in self.runs]),
                np.concatenate([r.low for r in self.runs]),
            ]
        )

    def arrivals(self) -> Arrivals:
        if not self.runs:
            return np.empty(0, np.int64)
        return np.concatenate([r.arrivals for r in self.runs])


def latest_arrivals(ranges: list[RangeKeys], words: Words) -> Arrivals:
    """Per key: its latest arrival in ``ranges`` (oldest first), -1 where none holds it."""
    found = np.full(len(words), -1, dtype=np.int64)
    for keys in reversed(ranges):
        for run in reversed(keys.runs):
            missing = np.flatnonzero(found < 0)
            if not len(missing):
                return found
            found[missing] = run.latest(words[missing])
    return found
