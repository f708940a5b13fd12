"""Generation progress: a live line on a terminal, plain periodic lines anywhere else."""

from __future__ import annotations

import io

from rich.console import Console

from streams.generate.progress import RunProgress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_every_interval_when_not_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    clock = FakeClock()
    with RunProgress(console, "generate", 1_000_000, every_s=10, clock=clock) as progress:
        for step in range(1, 26):  # 25 s of updates, one a second
            clock.now += 1
            progress.update(step * 20_000)
    lines = out.getvalue().splitlines()
    assert lines == [
        "generate: 200,000 of 1,000,000 records (20%), 20,000/s, 10 s",
        "generate: 400,000 of 1,000,000 records (40%), 20,000/s, 20 s",
    ]
    assert "\x1b" not in out.getvalue()  # no cursor or colour codes in a log


def test_a_terminal_gets_a_live_line_and_no_log_lines() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    clock = FakeClock()
    with RunProgress(console, "generate", 100, every_s=10, clock=clock) as progress:
        clock.now += 60
        progress.update(50)
    assert "generate: 50 of 100 records" not in out.getvalue()  # redrawn, not logged
    assert "50/100" in out.getvalue()
