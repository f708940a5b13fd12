"""Run a piece of the demo at a lower CPU priority than the worker it feeds.

With one worker, the demo's pace is the worker's CPU: it should hold a core whenever it has
records to process. Generation (the traffic model here, the producer child it starts) is
faster and runs ahead; at equal priority the scheduler shares the cores among all of them
and the worker gets less than one (it processed ~13-15k events/s while generation ran,
~17k after). A slightly higher nice value for the generating thread, and the child it
starts, lets the worker run first; generation keeps the rest of the cores. The broker is
not lowered: the worker waits on its fetches.

Linux gives each thread its own nice value (``setpriority`` on a thread id), and a child
inherits the value of the thread that started it; elsewhere the work simply runs at the
caller's priority. Only a higher nice value is asked for, which needs no privilege, and
only for a thread that ends with the work.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Final, TypeVar

T = TypeVar("T")

# Nice +4: about 40 % of a core's share against a default-priority process on the same core
# (the kernel's weights), so generation still advances on a machine busy with other work.
LOWER_BY: Final = 4


def lower_this_thread(by: int = LOWER_BY) -> bool:
    """Raise the calling thread's nice value by ``by`` (Linux only); whether it was."""
    if sys.platform != "linux" or by <= 0:
        return False
    with contextlib.suppress(OSError):
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + by)
        return True
    return False


def at_lower_priority(work: Callable[[], T], by: int = LOWER_BY) -> T:
    """``work()`` run in a thread of nice value +``by``, waited for here; its exception is
    raised here. A daemon thread: Ctrl-C in this thread ends the demo without waiting."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        lower_this_thread(by)
        try:
            outcome.append(work())
        except BaseException as error:  # handed to the caller's thread
            failure.append(error)

    thread = threading.Thread(target=run, name="sieve-demo-generate", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
