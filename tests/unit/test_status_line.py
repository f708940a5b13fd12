"""The worker's status: the text (pure), plain lines for logs, a live line for terminals."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from schemas.commits import OutputCounts, RangeCounts
from streams.settings import Settings
from streams.worker.metrics import WorkerMetrics
from streams.worker.run import status_reporter
from streams.worker.status_line import (
    ERASE_LINE,
    LIVE_INTERVAL_S,
    StatusReporter,
    StatusSample,
    is_terminal,
    live_text,
    status_text,
)

PLAIN_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] sieve worker: .+ events/s, .+$")
ESCAPES = ("\x1b", "\r", "\b")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """What a terminal receives (isatty is all a reporter asks of it)."""

    def isatty(self) -> bool:
        return True


def sample(at: float, processed: int, **fields: int) -> StatusSample:
    values = {"committed": 0, "ranges": 0, "dead_letters": 0, "lag": 0, "partitions": 0}
    values.update(fields)
    return StatusSample(at=at, processed=processed, **values)


def busy_metrics() -> WorkerMetrics:
    metrics = WorkerMetrics()
    metrics.add(
        RangeCounts(
            raw=12_000,
            accepted=11_000,
            duplicates=990,
            dead_lettered={"invalid_json": 7, "too_far_ahead": 3},
            outputs={"identifiable": OutputCounts(0), "facts": OutputCounts(11_000)},
            bytes_written=1,
        )
    )
    metrics.lag.update({0: 1_500, 1: 0, 2: 34})
    return metrics


# --- the text ----------------------------------------------------------------------------


def test_the_text_shows_pace_lag_ranges_and_dead_letters() -> None:
    before = sample(10.0, 1_000)
    after = sample(
        12.0, 41_000, committed=30_000, ranges=3, dead_letters=12, lag=1_534, partitions=3
    )
    assert status_text(before, after) == (
        "20,000 events/s, lag 1,534 records on 3 partitions, 3 ranges committed"
        " (30,000 records), 12 dead letters"
    )


def test_the_first_text_has_no_pace_and_an_idle_worker_says_so() -> None:
    text = status_text(None, sample(5.0, 0))
    assert text.startswith("- events/s, no partitions assigned yet, 0 ranges committed")
    assert "lag 0 records on 1 partition," in status_text(
        sample(1.0, 10), sample(2.0, 10, partitions=1)
    )
    assert status_text(sample(1.0, 10), sample(2.0, 10)).startswith("0 events/s")


# --- plain lines (a file, a pipe) ----------------------------------------------------------


def test_plain_lines_are_timestamped_lines_without_escape_codes() -> None:
    metrics, clock, out = busy_metrics(), FakeClock(), io.StringIO()
    reporter = StatusReporter(metrics, out, live=False, interval_s=30, clock=clock)
    reporter.tick()
    metrics.processed += 90_000
    clock.now += 30
    reporter.tick()
    reporter.finish()

    lines = out.getvalue().split("\n")
    assert lines[-1] == ""  # every line ends with a newline
    assert len(lines[:-1]) == 2
    assert all(PLAIN_LINE.match(line) for line in lines[:-1]), lines
    assert "3,000 events/s" in lines[1]
    assert "lag 1,534 records on 3 partitions" in lines[1]
    assert "1 ranges committed (12,000 records), 10 dead letters" in lines[1]
    assert not any(code in out.getvalue() for code in ESCAPES)


def test_a_file_gets_plain_lines_every_interval_and_none_when_zero() -> None:
    metrics = WorkerMetrics()
    reporter = status_reporter(Settings(status_interval_seconds=7.5), metrics, io.StringIO())
    assert reporter is not None and not reporter.live and reporter.interval_s == 7.5
    assert status_reporter(Settings(status_interval_seconds=0), metrics, io.StringIO()) is None


# --- the live line (a terminal) ------------------------------------------------------------


def test_a_terminal_gets_a_live_line_redrawn_in_place() -> None:
    metrics, clock, screen = busy_metrics(), FakeClock(), Terminal()
    reporter = StatusReporter(metrics, screen, live=True, interval_s=1, clock=clock)
    for _ in range(3):
        clock.now += 1
        metrics.processed += 5_000
        reporter.tick()
    drawn = screen.getvalue()
    assert "\n" not in drawn
    frames = drawn.split(ERASE_LINE)
    assert frames[0] == "" and len(frames) == 4
    assert frames[-1] == "5,000 events/s, lag 1,534, 1 ranges committed, 10 dead letters"
    reporter.finish()
    assert screen.getvalue().endswith(frames[-1] + "\n")


def test_the_live_line_fits_80_columns_and_is_cut_to_narrower_ones() -> None:
    huge = sample(0, 0)
    after = sample(1, 263_412, ranges=12_345, dead_letters=12_345, lag=12_345_678, partitions=6)
    assert len(live_text(huge, after)) < 80
    assert live_text(None, sample(1, 0)).startswith("- events/s, no partitions yet, 0 ranges")

    class Narrow(Terminal):
        def fileno(self) -> int:
            raise OSError("no terminal size")  # as a pty nobody sized: the fallback, 80

    screen = Narrow()
    metrics = busy_metrics()
    metrics.dead_lettered["x"] = 10**30  # a line far longer than the terminal
    StatusReporter(metrics, screen, live=True, interval_s=1).tick()
    assert len(screen.getvalue()) == len(ERASE_LINE) + 79


@pytest.fixture
def root_handler() -> Iterator[io.StringIO]:
    """A root log handler writing to the same screen, as faust's handler writes to stderr."""
    screen = Terminal()
    handler = logging.StreamHandler(screen)
    logging.root.addHandler(handler)
    try:
        yield screen
    finally:
        logging.root.removeHandler(handler)


def test_a_log_record_erases_the_live_line_first(root_handler: Terminal) -> None:
    reporter = StatusReporter(busy_metrics(), root_handler, live=True, interval_s=1)
    reporter.tick()
    logging.getLogger("sieve.test").warning("the broker went away")
    reporter.tick()
    screen = root_handler.getvalue()
    line, rest = screen.split("the broker went away\n")
    # The record starts on an empty row: the line before it was erased.
    assert line.endswith(ERASE_LINE)
    assert rest.startswith(ERASE_LINE) and ", lag 1,534, 1 ranges committed" in rest
    logging.getLogger("sieve.test").warning("again")
    assert root_handler.getvalue().endswith(ERASE_LINE + "again\n")


def test_terminals_are_told_apart_from_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    assert is_terminal(Terminal(), "xterm-256color")
    assert not is_terminal(Terminal(), "dumb")
    assert not is_terminal(io.StringIO(), "xterm")
    reporter = status_reporter(Settings(), WorkerMetrics(), Terminal())
    assert reporter is not None and reporter.live and reporter.interval_s == LIVE_INTERVAL_S
