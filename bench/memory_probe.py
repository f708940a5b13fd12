"""Runs ``sieve worker`` in this process and samples what its memory is made of (a bench aid).

    python -m bench.memory_probe OUT.jsonl worker --loglevel warning

``bench.dedup_soak --probe OUT.jsonl`` starts the worker this way. Every second one JSON line:
RSS (anonymous and file-backed, from /proc), Arrow's memory pool (bytes allocated, its
backend), glibc's malloc (mallinfo2: the heap's size, in use and free, and mmapped chunks:
what the store's writer thread and RocksDB allocate through it), the Python objects' blocks,
and RocksDB's block cache and memtables (the worker's shared budget). One line more per range
written: when its files were staged, its rows and its Arrow bytes. What is not accounted for
by these is the code, the parsers and the other native libraries.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa

from streams.worker.sink import RangeWriter
from streams.worker.state.store import StoreResources

_STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> dict[str, int]:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {
        "malloc_heap": info.arena,  # bytes the main and thread arenas took with brk/mmap
        "malloc_in_use": info.uordblks,
        "malloc_free": info.fordblks,  # free, still resident or not
        "malloc_mmapped": info.hblkhd,  # large chunks mmapped on their own
    }


def _status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    found = {}
    for name in _STATUS_FIELDS:
        match = re.search(rf"^{name}:\s+(\d+) kB", text, re.MULTILINE)
        found[name.lower()] = int(match.group(1)) * 1024 if match else 0
    return found


class Probe:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.resources: list[StoreResources] = []
        self._lock = threading.Lock()
        self._started = time.monotonic()

    def write(self, line: dict[str, Any]) -> None:
        line["t"] = round(time.monotonic() - self._started, 3)
        with self._lock:
            self.out.write(json.dumps(line) + "\n")
            self.out.flush()

    def sample(self) -> dict[str, Any]:
        pool = pa.default_memory_pool()
        line: dict[str, Any] = {
            **_status(),
            "arrow_allocated": pa.total_allocated_bytes(),
            "arrow_max": pool.max_memory(),
            "arrow_backend": pool.backend_name,
            **_mallinfo(),
            "python_blocks": sys.getallocatedblocks(),
            "rocksdb_cache": sum(r.cache.get_usage() for r in self.resources),
            "rocksdb_memtables": sum(r.write_buffers.get_usage() for r in self.resources),
        }
        return line

    def run(self, stop: threading.Event) -> None:
        # PROBE_TRIM=1: malloc_trim(0) every second, to see what glibc's free pages weigh.
        trim = os.environ.get("PROBE_TRIM") == "1"
        libc = ctypes.CDLL("libc.so.6")
        while not stop.wait(1.0):
            line = self.sample()
            if trim:
                started = time.perf_counter()
                libc.malloc_trim(0)
                line["trim_ms"] = round((time.perf_counter() - started) * 1000, 2)
            self.write(line)

    def install(self) -> None:
        probe = self
        original_init = StoreResources.__init__
        original_stage = RangeWriter.stage_range

        def init(resources: StoreResources) -> None:
            original_init(resources)
            probe.resources.append(resources)

        def stage_range(writer: RangeWriter, topic: str, partition: int, pending: Any, **kw: Any):  # type: ignore[no-untyped-def]
            started = time.monotonic() - probe._started
            staged = original_stage(writer, topic, partition, pending, **kw)
            probe.write(
                {
                    "range": partition,
                    "staged_from": round(started, 3),
                    "rows": pending.tables["facts"].num_rows,
                    "arrow_bytes": sum(t.nbytes for t in pending.tables.values()),
                    "identifiable_bytes": pending.tables["identifiable"].nbytes,
                }
            )
            return staged

        StoreResources.__init__ = init  # type: ignore[method-assign]
        RangeWriter.stage_range = stage_range  # type: ignore[method-assign]


def main() -> None:
    out_path, *args = sys.argv[1:]
    with open(out_path, "w") as out:
        probe = Probe(out)
        probe.install()
        stop = threading.Event()
        thread = threading.Thread(target=probe.run, args=(stop,), daemon=True)
        thread.start()
        from streams.cli import main as sieve

        sys.argv = ["sieve", *args]
        try:
            sieve()
        finally:
            stop.set()
            thread.join()


if __name__ == "__main__":
    main()
