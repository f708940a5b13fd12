"""`sieve worker`, except that it SIGKILLs itself at its Nth offset commit.

The Nth range's files and commit marker are written, its offsets are not committed: the
window the exactly-once design must survive (the marker says "done", Kafka says "not
yet"). Fault injection lives here, in the test tree, not in the worker.

Usage: python -m tests.integration.crashing_worker N
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer

from streams.cli import main

_commits_before_crash = int(sys.argv[1])
_real_commit = AIOKafkaConsumer.commit


async def _commit_or_die(self: AIOKafkaConsumer, offsets: Any = None) -> None:
    global _commits_before_crash
    _commits_before_crash -= 1
    if _commits_before_crash <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
    await _real_commit(self, offsets)


AIOKafkaConsumer.commit = _commit_or_die  # type: ignore[method-assign]
sys.argv = ["sieve", "worker"]
main()
