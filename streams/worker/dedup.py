"""Deduplication by event key over an event-time horizon, deterministic under replay.

The rule (docs/architecture.md): an event is a duplicate iff an earlier *accepted* event of
the same partition has the same event key and an occurred hour no older than the horizon
before the partition's watermark (the largest occurred hour accepted so far). Only the
stream's own content decides, never the wall clock or how records were batched, so a
worker that replays a range after a crash makes the same decisions. The state after any
committed range can be rebuilt from the committed facts (``event_key``, ``occurred_hour``)
and the watermark recorded in the range's commit marker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PendingKeys:
    """What one :meth:`Deduplicator.check` decided, to apply with :meth:`Deduplicator.record`."""

    accepted: dict[str, int]  # event key -> occurred hour (epoch s) of the accepted events
    watermark: int | None


@dataclass
class Deduplicator:
    """Seen event keys of one partition, pruned lazily as the watermark moves."""

    horizon_seconds: int
    watermark: int | None = None  # epoch seconds of the largest accepted occurred hour
    _seen: dict[str, int] = field(default_factory=dict)  # event key -> occurred hour (epoch s)

    def seed(self, keys: Iterable[str], hours: Iterable[int], watermark: int | None) -> None:
        """Load committed history (keys with their occurred hours) and the committed watermark."""
        for key, hour in zip(keys, hours, strict=True):
            if hour > self._seen.get(key, -1):
                self._seen[key] = hour
        self.watermark = watermark

    def check(self, keys: Sequence[str], hours: Sequence[int]) -> tuple[list[bool], PendingKeys]:
        """Decide a batch in order without changing the state: True to accept, False for a
        duplicate; apply the decisions with :meth:`record` once the batch is complete.

        A duplicate of an earlier key of the same call is caught (the call's own accepted
        keys count as seen), so deciding ``a + b`` equals deciding ``a``, recording it, then
        deciding ``b``.
        """
        decisions = []
        seen = self._seen
        accepted: dict[str, int] = {}
        watermark = self.watermark
        horizon = self.horizon_seconds
        for key, hour in zip(keys, hours, strict=True):
            previous = accepted.get(key)
            if previous is None:
                previous = seen.get(key)
            floor = (watermark - horizon) if watermark is not None else None
            if previous is not None and (floor is None or previous >= floor):
                decisions.append(False)
                continue
            decisions.append(True)
            accepted[key] = hour if previous is None else max(previous, hour)
            if watermark is None or hour > watermark:
                watermark = hour
        return decisions, PendingKeys(accepted, watermark)

    def record(self, pending: PendingKeys) -> None:
        """Apply what :meth:`check` decided (the batch it decided is complete)."""
        self._seen.update(pending.accepted)
        self.watermark = pending.watermark
        self._prune()

    def filter(self, keys: Sequence[str], hours: Sequence[int]) -> list[bool]:
        """:meth:`check` and :meth:`record` in one step."""
        decisions, pending = self.check(keys, hours)
        self.record(pending)
        return decisions

    def _prune(self) -> None:
        # Entries older than the horizon can never match again (the watermark only grows),
        # so dropping them changes no decision; it only bounds memory.
        if self.watermark is None or len(self._seen) < 100_000:
            return
        floor = self.watermark - self.horizon_seconds
        self._seen = {k: h for k, h in self._seen.items() if h >= floor}

    def __len__(self) -> int:
        return len(self._seen)
