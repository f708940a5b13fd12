"""What a running worker shows: a live line in a terminal, plain periodic lines otherwise.

Issue 12: a worker in the foreground printed nothing but faust's spinner (cursor escape
codes), and a worker whose output went to a file said nothing at all while it worked. Now
in a terminal one line is redrawn every second (``\\r`` and erase-line, never a newline),
and it is erased before a log record is written, so logs and the line never share a row;
anywhere else (a file, a pipe, a container's log) a plain, timestamped line is written
every ``SIEVE_STATUS_INTERVAL_SECONDS``, with no escape code. Both read the worker's
:class:`~streams.worker.metrics.WorkerMetrics`; the text is a pure function of two samples.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TextIO

from streams.worker.metrics import WorkerMetrics

LIVE_INTERVAL_S: Final = 1.0
# Carriage return, then erase the whole line (ECMA-48 EL 2): the cursor stays on its row.
ERASE_LINE: Final = "\r\x1b[2K"
FALLBACK_COLUMNS: Final = 80


@dataclass(frozen=True)
class StatusSample:
    """The worker's counters at one moment (``at``: monotonic seconds)."""

    at: float
    processed: int
    committed: int
    ranges: int
    dead_letters: int
    lag: int
    partitions: int

    @staticmethod
    def of(metrics: WorkerMetrics, at: float) -> StatusSample:
        return StatusSample(
            at=at,
            processed=metrics.processed,
            committed=metrics.raw,
            ranges=metrics.ranges_committed,
            dead_letters=sum(metrics.dead_lettered.values()),
            lag=sum(metrics.lag.values()),
            partitions=len(metrics.lag),
        )


def status_text(previous: StatusSample | None, current: StatusSample) -> str:
    """The plain line: the pace since ``previous`` (none on the first line), the lag, and
    what this worker committed since it started."""
    if current.partitions:
        where = "partition" if current.partitions == 1 else "partitions"
        lag = f"lag {current.lag:,} records on {current.partitions} {where}"
    else:
        lag = "no partitions assigned yet"
    return (
        f"{_pace(previous, current)}, {lag}, {current.ranges:,} ranges committed"
        f" ({current.committed:,} records), {current.dead_letters:,} dead letters"
    )


def live_text(previous: StatusSample | None, current: StatusSample) -> str:
    """The live line: what the plain line says that matters most, short enough for an
    80-column terminal at any realistic count."""
    lag = f"lag {current.lag:,}" if current.partitions else "no partitions yet"
    return (
        f"{_pace(previous, current)}, {lag}, {current.ranges:,} ranges committed,"
        f" {current.dead_letters:,} dead letters"
    )


def _pace(previous: StatusSample | None, current: StatusSample) -> str:
    elapsed = current.at - previous.at if previous is not None else 0.0
    if previous is None or elapsed <= 0:
        return "- events/s"
    return f"{(current.processed - previous.processed) / elapsed:,.0f} events/s"


class StatusReporter:
    """Writes the status to ``stream`` on every :meth:`tick`: redrawn in place when ``live``
    (a terminal), else as one timestamped line. ``stream`` must be the real output, taken
    before faust replaces ``sys.stderr`` with a proxy that turns writes into log records."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        stream: TextIO,
        *,
        live: bool,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.stream = stream
        self.live = live
        self.interval_s = interval_s
        self._clock = clock
        self._previous: StatusSample | None = None
        self._shown = False  # the live line is on the screen (and the cursor at its end)
        self._guard = _EraseBeforeLogging(self)

    def tick(self) -> None:
        current = StatusSample.of(self.metrics, self._clock())
        previous, self._previous = self._previous, current
        if not self.live:
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
            self._write(f"[{stamp}] sieve worker: {status_text(previous, current)}\n")
            return
        self._guard.install()
        # Cut to the width: a line that wrapped could not be redrawn in place.
        text = live_text(previous, current)[: self._columns() - 1]
        self._write(f"{ERASE_LINE}{text}")
        self._shown = True

    def erase(self) -> None:
        """Take the live line off the screen (before something else is written there)."""
        if self._shown:
            self._shown = False
            self._write(ERASE_LINE)

    def finish(self) -> None:
        """Leave the last live line on the screen, and the cursor on the next row."""
        if self._shown:
            self._shown = False
            self._write("\n")

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or FALLBACK_COLUMNS
        except (OSError, ValueError, AttributeError):
            return FALLBACK_COLUMNS

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the terminal went away (closed, hung up): the worker itself carries on


def is_terminal(stream: TextIO, term: str | None) -> bool:
    """Whether ``stream`` is a terminal a live line can be drawn on: not a file or a pipe,
    nor a terminal whose ``TERM`` (``term``) says it understands no escape codes."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and term != "dumb"


class _EraseBeforeLogging(logging.Filter):
    """On the root logger's handlers: erases the live line before any record is written, so
    the record starts at the beginning of an empty row (the next tick draws the line again).
    Installed on the first live tick: faust sets its logging up only once it starts."""

    def __init__(self, reporter: StatusReporter) -> None:
        super().__init__()
        self._reporter = reporter

    def install(self) -> None:
        for handler in logging.root.handlers:
            if self not in handler.filters:
                handler.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        self._reporter.erase()
        return True
