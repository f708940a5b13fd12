"""Races between the consume loop, the background write of a range and rebalances, forced
one interleaving at a time (threads held on ``threading.Event``s, no sleeps).

The worker runs a partition's next batch on a thread while its previous range is written on
the writer thread, and a revocation may give up on a write whose job still runs there: each
test below pins one such interleaving and says what it broke.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from streams.worker.fencing import Membership
from streams.worker.state.consent import ConsentTracker
from streams.worker.state.folder import StateFolder
from streams.worker.state.store import AppliedRange, StoreUpdate
from tests.unit.test_worker_faults import TOPIC

MEMBERSHIP = Membership(7, "m-7")


def test_consent_read_while_the_writer_thread_applies_a_range_sees_its_changes(
    tmp_path: Path,
) -> None:
    """Interleaving: a batch on its thread asks the consent state (``state_for``) of a
    person whose opt-out is in the sealed range being committed; it reads the store before
    the writer thread applies that range, and the range's changes after the writer thread
    has forgotten them (``ConsentTracker.applied``). Broke: the opt-out was in neither, so
    the person's events of that batch were kept as if they had never opted out."""
    person = "ab" * 16
    folder = StateFolder(tmp_path)
    store = folder.open(TOPIC, 0, identity="test", horizon_ms=3_600_000)
    tracker = ConsentTracker(store)
    tracker.record([(person, "opt_out")])
    tracker.seal()  # the range 0-9 is cut; its opt-out is not in the store yet
    read, release = threading.Event(), threading.Event()
    real_statuses = store.consent_statuses

    def consent_statuses(keys: list[bytes]) -> list[int]:
        statuses = real_statuses(keys)
        read.set()
        assert release.wait(10)
        return statuses

    store.consent_statuses = consent_statuses  # type: ignore[method-assign]
    answer: list[Any] = []
    batch = threading.Thread(target=lambda: answer.append(tracker.state_for([person], [])))
    batch.start()
    try:
        assert read.wait(10)
        store.consent_statuses = real_statuses  # type: ignore[method-assign]
        # What _apply_committed does for the range, on the writer thread.
        store.apply(
            StoreUpdate(
                first_offset=0,
                applied=AppliedRange(9, "", None),
                key_id="k",
                event_keys=b"",
                arrivals=_no_arrivals(),
                consent_changes=[(person, "opt_out")],
            )
        )
        tracker.applied()
    finally:
        release.set()
        batch.join(10)
    folder.close()

    [state] = answer
    assert person in state.opted_out


def _no_arrivals() -> Any:
    import numpy as np

    return np.empty(0, np.int64)
