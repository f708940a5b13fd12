"""`sieve worker`, except that it SIGKILLs itself at a chosen moment.

- ``python -m tests.integration.crashing_worker N``: right after its Nth offset commit. The
  Nth range's files are written and its offsets committed to Kafka, its marker is not
  renamed into place: the window the exactly-once design must survive (Kafka says "done",
  the markers say "not yet"; the markers are the truth). With N = 1 no marker exists at
  all, so the restarted worker must start at the beginning of the log, not at Kafka's
  committed offset.
- ``SIEVE_TEST_KILL_IN_STORE_WRITE=N``: inside the Nth write of a committed range into a
  partition's dedup store, after RocksDB took the write batch and before the write returned
  (the worker's overlay still holds the keys, the marker exists).

Fault injection lives here, in the test tree, not in the worker.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import streams.worker.committer as committer
from streams.cli import main
from streams.worker.state.store import PartitionStore


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if len(sys.argv) > 1:
    _commits_before_crash = int(sys.argv[1])
    _real_commit = committer.commit_fenced

    async def _commit_then_die(*args: Any, **kwargs: Any) -> None:
        global _commits_before_crash
        await _real_commit(*args, **kwargs)
        _commits_before_crash -= 1
        if _commits_before_crash <= 0:
            _die()

    committer.commit_fenced = _commit_then_die  # type: ignore[assignment]

if os.environ.get("SIEVE_TEST_KILL_IN_STORE_WRITE"):
    _writes_before_crash = int(os.environ["SIEVE_TEST_KILL_IN_STORE_WRITE"])
    _real_drop_expired = PartitionStore._drop_expired

    def _drop_expired_or_die(self: PartitionStore, arrival_max: int) -> None:
        # Called inside PartitionStore.apply right after the database took the write batch.
        global _writes_before_crash
        _writes_before_crash -= 1
        if _writes_before_crash <= 0:
            _die()
        _real_drop_expired(self, arrival_max)

    PartitionStore._drop_expired = _drop_expired_or_die  # type: ignore[method-assign]

sys.argv = ["sieve", "worker"]
main()
