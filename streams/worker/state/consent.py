"""Consent state backed by the partition's store, handed to the pure core one batch at a time.

``privacy.consent.decide`` asks only about the batch's own people and accounts, so each batch
gets a :class:`~streams.privacy.consent.ConsentState` restricted to those keys: what the
store holds (committed ranges), then the changes of ranges not committed yet, in order. The
decisions are the ones a state holding everyone would give. Memory holds a Bloom filter of
the keys that have a restriction (opted out or ended; everyone else has no entry) and the
uncommitted changes; the store holds the rest, so the state grows with people, not time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from streams.privacy.consent import ConsentState, StateChange
from streams.worker.state.bloom import GrowingBloom, lane_masks
from streams.worker.state.keys import key_words, raw_keys, words_from_raw
from streams.worker.state.store import ENDED, OPTED_OUT, PartitionStore, next_status


class ConsentTracker:
    """The consent state of one partition: store + uncommitted changes."""

    def __init__(self, store: PartitionStore) -> None:
        self._store = store
        self._restricted = GrowingBloom(0)
        for chunk in store.restricted_consent_keys():
            words = words_from_raw(chunk)
            self._restricted.add(words, lane_masks(words))
        self._open: list[StateChange] = []
        self._sealed: deque[list[StateChange]] = deque()

    def state_for(
        self,
        person_keys: Sequence[str],
        account_keys: Sequence[str],
        earlier: Sequence[StateChange] = (),
    ) -> ConsentState:
        """The state of the given keys after every recorded change and then ``earlier``."""
        distinct = list(dict.fromkeys([*person_keys, *account_keys]))
        if not distinct:
            return ConsentState()
        # The uncommitted changes are taken before the store is read: the writer thread puts
        # a committed range into the store, then forgets its changes here (``applied``), so
        # taken after the read they could miss a range that is in neither. A range seen in
        # both is harmless: its changes set or clear bits, and applying them again gives the
        # same state.
        uncommitted = (*self._sealed, self._open, earlier)
        status = dict.fromkeys(distinct, 0)
        words = key_words(distinct)
        maybe = self._restricted.might_contain(words, lane_masks(words)).nonzero()[0].tolist()
        if maybe:
            stored = self._store.consent_statuses(raw_keys(words[maybe]))
            for i, value in zip(maybe, stored, strict=True):
                status[distinct[i]] = value
        for changes in uncommitted:
            for key, change in changes:
                if key in status:
                    status[key] = next_status(status[key], change)
        return ConsentState(
            opted_out=frozenset(k for k, s in status.items() if s & OPTED_OUT),
            ended=frozenset(k for k, s in status.items() if s & ENDED),
        )

    def record(self, changes: Sequence[StateChange]) -> None:
        """Apply a complete batch's changes (in order)."""
        if not changes:
            return
        self._open.extend(changes)
        # The filter must know every key the store may restrict once this range is applied.
        words = key_words(list(dict.fromkeys(key for key, _ in changes)))
        self._restricted.add(words, lane_masks(words))

    def seal(self) -> list[StateChange]:
        """The changes recorded since the last seal: one range's, kept until applied."""
        changes, self._open = self._open, []
        self._sealed.append(changes)
        return changes

    def applied(self) -> None:
        """The oldest sealed range is in the store now."""
        self._sealed.popleft()
