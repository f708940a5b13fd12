"""A worker's start: wait for the broker, and have the dead-letter topic before consuming.

A worker started while the broker is down waits for it (it used to exit after 4 s): with
backoff, and with one line when it starts waiting and one when the broker answers, never a
line per retry. A broker that answers but refuses what the worker needs (creating the
dead-letter topic) is a configuration error: the worker refuses to start and says why.

A broker can also go away in the seconds faust takes to start its own clients, which then
give up; :func:`broker_away` recognises that failure, and the command waits for the broker
again and starts afresh (streams.worker.commands).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from streams.errors import TransientError

T = TypeVar("T")

# Capped at 10 s: a broker that is back is noticed within that.
BACKOFF_S: Sequence[float] = (1.0, 2.0, 4.0, 8.0, 10.0)


def wait_for_broker(
    attempt: Callable[[], T],
    *,
    what: str,
    report: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    backoff: Sequence[float] = BACKOFF_S,
) -> T:
    """``attempt()`` until it does not raise TransientError; ``report`` gets one line when
    waiting starts and one when it ends. Any other error is raised at once."""
    with _kafka_python_silenced():
        return _wait(attempt, what, report, sleep, clock, backoff)


@contextlib.contextmanager
def _kafka_python_silenced() -> Iterator[None]:
    # kafka-python logs each failed connection at ERROR and each backoff at WARNING: several
    # lines a second while the broker is away, once faust has configured logging (the wait
    # before a restart). The wait reports its start and its end itself.
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _wait(
    attempt: Callable[[], T],
    what: str,
    report: Callable[[str], None],
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    backoff: Sequence[float],
) -> T:
    failures = 0
    started = 0.0
    while True:
        try:
            result = attempt()
        except TransientError as away:
            if failures == 0:
                started = clock()
                report(f"{what}: {away}; waiting for the broker (retrying with backoff)")
            sleep(backoff[min(failures, len(backoff) - 1)])
            failures += 1
            continue
        if failures:
            report(f"{what}: the broker answered after {clock() - started:.0f} s")
        return result


def broker_away(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) says the broker could not be reached."""
    import aiokafka.errors as aiokafka_errors

    seen = 0
    while error is not None and seen < 10:
        if isinstance(
            error, aiokafka_errors.KafkaConnectionError | aiokafka_errors.KafkaTimeoutError
        ):
            return True
        if isinstance(error, aiokafka_errors.KafkaError) and error.retriable:
            return True
        if isinstance(error, TransientError | ConnectionError):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False
