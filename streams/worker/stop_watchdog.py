"""A worker whose own work has stopped exits, even when faust's stop does not finish.

faust stops its own consumer (the app's group, which reads none of our topics) after the
raw-topic service. Caught in a rebalance (a worker resumed after a stall, then stopped at
once), that stop was seen to hang for good: no log line for 60 s, then SIGKILL (CI,
2026-12-04; faust has open reports of workers hanging as they stop). By then every range is
committed or abandoned and the raw consumer has left its group, so exiting loses nothing:
the watchdog gives faust ``STOP_GRACE_S`` more, then exits with the code the stop earned.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

# faust's own stop takes 1-2 s once ours is done (the fault storm's workers); a supervisor
# such as Docker sends SIGKILL 10 s after SIGTERM by default.
STOP_GRACE_S = 8.0


def exit_if_stop_hangs(
    *,
    clean: bool,
    grace_s: float = STOP_GRACE_S,
    exit_process: Callable[[int], object] = os._exit,
) -> threading.Timer:
    """Arm the watchdog once the worker's own work has stopped (``clean``: every range
    committed or abandoned, no crash); cancel the returned timer when faust's stop returns."""
    code = 0 if clean else 1

    def give_up() -> None:
        logger.warning(
            "faust had not finished stopping %.0f s after the worker's own work stopped"
            " (%s); exiting with %d",
            grace_s,
            "nothing pending" if clean else "after a failure",
            code,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        exit_process(code)

    timer = threading.Timer(grace_s, give_up)
    timer.name = "sieve-stop-watchdog"
    timer.daemon = True
    timer.start()
    return timer
