"""Progress of a long run: a live line on a terminal, plain periodic lines anywhere else.

On a terminal rich redraws one line in place (bar, count, rate, time left). When the output
is a file, a pipe or CI's log, redrawing is impossible and silence for minutes looks like a
hang: one plain line every ``every_s`` seconds instead, with the count, the share and the
rate, and nothing that needs a terminal to read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Final

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LOG_EVERY_S: Final = 10.0


class RunProgress:
    """``update(done)`` as often as convenient; it decides what to show and when."""

    def __init__(
        self,
        console: Console,
        label: str,
        total: int,
        *,
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console, self.label, self.total = console, label, total
        self._every_s, self._clock = every_s, clock
        self._started = clock()
        self._next_line = self._started + every_s
        self._live: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> RunProgress:
        if self.console.is_terminal:
            self._live = Progress(
                TextColumn(f"[bold]{self.label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._live.__enter__()
            self._task = self._live.add_task(self.label, total=self.total, rate="")
        return self

    def update(self, done: int) -> None:
        now = self._clock()
        rate = done / (now - self._started) if now > self._started else 0.0
        if self._live is not None and self._task is not None:
            self._live.update(self._task, completed=done, rate=f"{rate:,.0f}/s")
        elif now >= self._next_line:
            self._next_line = now + self._every_s
            self.console.print(self.line(done, rate, now - self._started), highlight=False)

    def line(self, done: int, rate: float, elapsed_s: float) -> str:
        """One plain progress line (pure)."""
        share = f" ({done / self.total:.0%})" if self.total else ""
        return (
            f"{self.label}: {done:,} of {self.total:,} records{share},"
            f" {rate:,.0f}/s, {elapsed_s:.0f} s"
        )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(kind, error, traceback)
