"""One log line when the broker goes away and one when it is back, not thousands.

aiokafka logs every failed connection attempt, metadata refresh, fetch and coordinator
lookup at ERROR, several times a second per client: a 25 s broker outage wrote ~5,800
ERROR lines per worker (measured; issue 14 saw 3,942 for 28 s). This filter lets the first
such line through, reworded to say the broker is unreachable, counts the rest without
logging them, and :meth:`OutageLog.tick` (a timer calls it) reports once the errors have
stopped for ``quiet_s``: the broker answers again, with how long it was away and how many
lines were held back. Anything aiokafka logs that is not about reaching the broker passes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

# What aiokafka says when it cannot reach a broker at all: the start of an outage.
UNREACHABLE = (
    "Unable connect to node",
    "Connect call failed",
    "KafkaConnectionError",
    "NodeNotReadyError",
    "Unable to update metadata",
)
# What else it repeats while the broker is away (held back then; shown as they are
# otherwise: a coordinator still loading at start is no outage).
WHILE_AWAY = (
    *UNREACHABLE,
    "Marking the coordinator dead",
    "marking coordinator dead",
    "CoordinatorNotAvailableError",
    "Group Coordinator Request failed",
    "RequestTimedOutError",
    "Failed fetch messages",
    "Heartbeat send request failed",
    "Error sending",
)


class OutageLog(logging.Filter):
    """Folds aiokafka's connection errors into one line per outage (install on its loggers)."""

    def __init__(self, quiet_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.quiet_s = quiet_s
        self._clock = clock
        self._lock = threading.Lock()
        self.away_since: float | None = None
        self.last_error: float = 0.0
        self.held_back = 0

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True  # a filter must never raise into the library's own code
        if record.levelno < logging.WARNING or not any(m in text for m in WHILE_AWAY):
            return True
        now = self._clock()
        with self._lock:
            if self.away_since is not None:
                self.last_error = now
                self.held_back += 1
                return False
            if not any(marker in text for marker in UNREACHABLE):
                return True
            self.away_since = self.last_error = now
            self.held_back = 0
        record.msg = (
            "Kafka broker unreachable (%s); further connection errors are counted, not"
            " logged, until it answers again"
        )
        record.args = (text,)
        return True

    def tick(self) -> None:
        """Report the end of an outage: connection errors stopped ``quiet_s`` ago."""
        now = self._clock()
        with self._lock:
            if self.away_since is None or now - self.last_error < self.quiet_s:
                return
            away_for, held_back = self.last_error - self.away_since, self.held_back
            self.away_since = None
            self.held_back = 0
        logger.warning(
            "Kafka broker answering again (connection errors for %.0f s, %d lines not logged)",
            away_for,
            held_back,
        )


def install_outage_filter(outage: OutageLog) -> None:
    """Put ``outage`` on every aiokafka logger (filters on a logger see only its own records,
    so each module's logger gets it; aiokafka creates them when its modules are imported)."""
    import aiokafka.client
    import aiokafka.conn
    import aiokafka.consumer.fetcher
    import aiokafka.consumer.group_coordinator
    import aiokafka.producer.sender  # noqa: F401  (their loggers must exist)

    names = [
        name
        for name in logging.Logger.manager.loggerDict
        if name == "aiokafka" or name.startswith("aiokafka.")
    ]
    for name in names:
        logging.getLogger(name).addFilter(outage)
