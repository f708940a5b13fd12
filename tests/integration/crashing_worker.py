"""`sieve worker`, except that it SIGKILLs itself right after its Nth offset commit.

The Nth range's files are written and its offsets committed to Kafka, its marker is not
renamed into place: the window the exactly-once design must survive (Kafka says "done",
the markers say "not yet"; the markers are the truth). With N = 1 no marker exists at all,
so the restarted worker must start at the beginning of the log, not at Kafka's committed
offset. Fault injection lives here, in the test tree, not in the worker.

Usage: python -m tests.integration.crashing_worker N
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import streams.worker.committer as committer
from streams.cli import main

_commits_before_crash = int(sys.argv[1])
_real_commit = committer.commit_fenced


async def _commit_then_die(*args: Any, **kwargs: Any) -> None:
    global _commits_before_crash
    await _real_commit(*args, **kwargs)
    _commits_before_crash -= 1
    if _commits_before_crash <= 0:
        os.kill(os.getpid(), signal.SIGKILL)


committer.commit_fenced = _commit_then_die  # type: ignore[assignment]
sys.argv = ["sieve", "worker"]
main()
