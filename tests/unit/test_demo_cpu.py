"""The demo's CPU ledger: /proc parsing, and a child's CPU credited to the step reaping it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

from rich.console import Console

from streams.demo.cpu import OTHER_CHILDREN, OWN_STARTUP, CpuLedger, proc_stat_cpu_s

# A child that burns about this much CPU, then exits.
BURN_S = 0.3
BURN = f"import time\nend = time.process_time() + {BURN_S}\nwhile time.process_time() < end: pass"


def test_proc_stat_fields_are_counted_from_the_last_parenthesis() -> None:
    # A command name may hold spaces and ")"; utime 250 and stime 50 ticks follow.
    text = "4242 (evil) R 1 2 (x) S 1 4242 4242 0 -1 4194304 10 0 0 0 250 50 0 0 20 0\n"
    assert proc_stat_cpu_s(text) == (250 + 50) / os.sysconf("SC_CLK_TCK")


def test_a_reaped_child_is_credited_to_the_step_that_reaps_it() -> None:
    ledger = CpuLedger()
    assert ledger.by_process[OWN_STARTUP] > 0  # the interpreter's start: imports included

    before = ledger.read()
    child = subprocess.Popen([sys.executable, "-c", BURN])
    ledger.watch("burner", child.pid)
    child.wait(timeout=60)
    step_s = ledger.settle(before, own="this process", reaps="burner")

    assert ledger.by_process["burner"] >= BURN_S * 0.9
    assert step_s >= ledger.by_process["burner"]
    assert "burner" not in ledger.running  # reaped: counted once, by its rusage
    assert OTHER_CHILDREN not in ledger.by_process


def test_a_running_child_counts_in_the_step_and_a_stray_child_as_other() -> None:
    ledger = CpuLedger()
    before = ledger.read()
    child = subprocess.Popen([sys.executable, "-c", BURN + "\ntime.sleep(30)"])
    try:
        ledger.watch("burner", child.pid)
        deadline = time.monotonic() + 60
        # On Linux /proc shows it while it runs: the step counts it before it is reaped.
        while ledger.read().running_s < BURN_S * 0.9 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ledger.settle(before, own="this process", reaps=None) >= BURN_S * 0.9
        assert "burner" in ledger.running
    finally:
        child.kill()
        child.wait()
    # Reaped in a step that names no child: credited as another child, not lost.
    ledger.running.clear()
    again = ledger.read()
    stray = subprocess.Popen([sys.executable, "-c", BURN])
    stray.wait(timeout=60)
    ledger.settle(again, own="this process", reaps=None)
    assert ledger.by_process[OTHER_CHILDREN] >= BURN_S * 0.9


def test_the_table_totals_the_ledger_and_divides_by_the_cores() -> None:
    ledger = CpuLedger()
    ledger.by_process.clear()
    ledger.credit("worker", 60.0)
    ledger.credit("broker", 20.0)
    ledger.credit("worker", 4.0)
    out = io.StringIO()
    Console(file=out, width=200).print(ledger.table(cores=2))
    printed = " ".join(out.getvalue().split())  # the caption wraps at the table's width
    assert "64.0" in printed and "84.0" in printed
    assert "at least 42 s of wall time" in printed
