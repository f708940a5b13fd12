"""What the demo's processes cost in CPU seconds, step by step and process by process.

On a machine of N cores the demo's wall time is at least the CPU seconds of all its
processes over N, whatever else the machine runs; wall time on a shared machine is noise,
CPU seconds are not. So each step's line says what the step took in CPU, and a table at the
end says which process took it.

How each is read, exactly and cheaply (no sampling thread):

* this process (every thread: the traffic model, publishing's DuckDB): ``RUSAGE_SELF``;
* a child's whole life (its threads and its own children included): the growth of
  ``RUSAGE_CHILDREN`` across the call that reaps it, credited to the name the step gives
  (the worker's stop, the producer's close, the broker's stop; Maven and the storage
  format inside the broker's start);
* a child still running: ``/proc/<pid>/stat`` (Linux), so that a step's line counts the
  worker and the broker while they run; elsewhere they count once reaped.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from rich.table import Table

_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
OWN_STARTUP: Final = "sieve demo: interpreter start and imports"
OTHER_CHILDREN: Final = "other child processes"


def proc_stat_cpu_s(text: str) -> float:
    """User + system CPU seconds from the text of ``/proc/<pid>/stat``.

    The command name (2nd field) is in parentheses and may hold spaces and ")": the fields
    are counted from the last ")". utime and stime are the 14th and 15th fields, in ticks.
    """
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def running_cpu_s(pid: int) -> float:
    """CPU seconds of the running process ``pid`` so far; 0.0 where /proc cannot say."""
    try:
        return proc_stat_cpu_s(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return 0.0


def _own_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reaped_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Reading:
    """The counters at one moment (see :meth:`CpuLedger.read`)."""

    own_s: float
    reaped_s: float
    running_s: float

    @property
    def total_s(self) -> float:
        return self.own_s + self.reaped_s + self.running_s


@dataclass
class CpuLedger:
    """CPU seconds by process name. The interpreter's start-up (imports before the ledger
    exists) is credited at once: it is part of what ``sieve demo`` costs."""

    by_process: dict[str, float] = field(default_factory=dict)  # in the order first credited
    # name -> the pids of its children still running, counted via /proc until reaped
    running: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.credit(OWN_STARTUP, _own_s())

    def read(self) -> Reading:
        running = sum(running_cpu_s(pid) for pids in self.running.values() for pid in pids)
        return Reading(_own_s(), _reaped_s(), running)

    def credit(self, name: str, seconds: float) -> None:
        self.by_process[name] = self.by_process.get(name, 0.0) + seconds

    def watch(self, name: str, pid: int) -> None:
        """Count the child ``pid`` while it runs, under ``name`` (several children may share
        one); the step that reaps them names it too."""
        self.running.setdefault(name, []).append(pid)

    def settle(self, before: Reading, own: str, reaps: str | None) -> float:
        """Credit what happened since ``before``: this process's time to ``own``, the
        children reaped meanwhile to ``reaps`` (the step's children), and stop counting
        ``reaps`` as running. Returns the CPU seconds of the interval, every process."""
        if reaps is not None:
            self.running.pop(reaps, None)
        after = self.read()
        self.credit(own, after.own_s - before.own_s)
        reaped = after.reaped_s - before.reaped_s
        if reaped > 0:
            self.credit(reaps or OTHER_CHILDREN, reaped)
        return after.total_s - before.total_s

    def table(self, cores: int) -> Table:
        """The ledger by process, its total, and the least wall time it allows on ``cores``."""
        table = Table(title="CPU seconds by process (every thread, children included)")
        table.add_column("process")
        table.add_column("CPU s", justify="right")
        for name, seconds in self.by_process.items():
            if seconds >= 0.05:
                table.add_row(name, f"{seconds:.1f}")
        for name in self.running:  # not reaped (left running): not counted in the total
            table.add_row(f"{name} (left running: not counted)", "-")
        total = sum(self.by_process.values())
        table.add_row("total", f"{total:.1f}", style="bold")
        table.caption = (
            f"on {cores} cores this needs at least {total / cores:.0f} s of wall time"
            " (total / cores), whatever else the machine runs"
        )
        return table
