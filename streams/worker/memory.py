"""Handing the memory a range freed back to the system, so the worker's RSS is what it holds.

glibc's malloc keeps freed memory resident in its arenas (the event loop's, the pipeline
thread's, the writer thread's and RocksDB's threads each have one) and returns it only from
the top of each heap: a range's batches, its write batch and RocksDB's flushes free tens of MiB
in the middle of them. Measured with ``bench.memory_probe`` over the dedup soak
(bench/README.md): the free part of the heaps grew from 20 to 70 MiB over 2 M records while
what was in use stayed flat, and RSS with it; ``malloc_trim(0)`` after each range keeps RSS
at what is in use, for a few ms on the writer thread (it releases the GIL).

Arrow's buffers come from its own pool (mimalloc or jemalloc), which returns freed pages by
itself; a C library without ``malloc_trim`` (musl, macOS) has nothing to do here.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Return the C heap's free pages to the system (glibc); nothing elsewhere."""
    if _TRIM is not None:
        _TRIM(0)
