"""Generation runs at a lower CPU priority than the worker: its thread and the child it starts."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from streams.demo.priority import LOWER_BY, at_lower_priority


def _nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_the_work_runs_lowered_with_its_child_and_the_caller_is_not() -> None:
    assert sys.platform == "linux"  # the demo's machines; per-thread nice values are Linux's
    caller = _nice_of_this_thread()

    def work() -> tuple[int, int]:
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"],
            capture_output=True,
            text=True,
            check=True,
        )
        return _nice_of_this_thread(), int(child.stdout)

    thread_nice, child_nice = at_lower_priority(work)
    assert thread_nice == min(19, caller + LOWER_BY)
    assert child_nice == thread_nice
    assert _nice_of_this_thread() == caller  # only the work's thread was lowered


def test_the_works_error_is_raised_in_the_caller() -> None:
    def work() -> None:
        raise ValueError("broken pipe to the producer")

    with pytest.raises(ValueError, match="broken pipe"):
        at_lower_priority(work)
