"""One ``publish`` in a process of its own, for bench.aggregations: its time, where it went,
and the process's peak resident memory (which a run in the benchmark's own process would
mix with the synthesis's).

    python -m bench.publish_child DATA_ROOT NOW_ISO MEMORY_MB [COMPACT]

COMPACT 1: publish as ``sieve publish`` does, compacting the closed days after the run (its
time is in the total and in the stage "compaction").

Prints one JSON object. The stage times come from wrapping the publish module's own steps
(metering of a chunk, the month totals of the run, bounding of the due days, the noise and
post-processing of the batches): the same calls, timed.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from aggregations import analytics, publish_run
from aggregations import publish as publish_module
from aggregations.analytics import privacy_of
from streams.settings import Settings

T = TypeVar("T")
GRACE = timedelta(hours=1)


def _timed(stages: dict[str, float], name: str, function: Callable[..., T]) -> Callable[..., T]:
    def wrapper(*args: Any, **kwargs: Any) -> T:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - started

    return wrapper


def main(data_root: str, now: datetime, memory_mb: int, compact: bool = False) -> dict[str, Any]:
    stages: dict[str, float] = {}
    publish_module._compact = _timed(stages, "compaction", publish_module._compact)  # type: ignore[assignment]
    publish_run.meter_days = _timed(stages, "metering", publish_run.meter_days)  # type: ignore[assignment]
    # Written once per run since issue 10 (inside "metering" per chunk before).
    publish_run.write_totals = _timed(stages, "month totals", publish_run.write_totals)  # type: ignore[assignment]
    analytics.bound_days = _timed(stages, "dp bounding", analytics.bound_days)  # type: ignore[assignment]
    analytics.draw_noise = _timed(stages, "dp noise", analytics.draw_noise)  # type: ignore[assignment]
    privacy = privacy_of(Settings())  # the caller's settings: not the publish's cost
    started = time.perf_counter()
    report = publish_module.publish(
        data_root, now, GRACE, privacy, memory_limit_mb=memory_mb, compact=compact
    )
    seconds = time.perf_counter() - started
    return {**summary(report, seconds, stages), "peak_rss": peak_rss()}


def peak_rss() -> int:
    """This process's peak resident memory in bytes, imports included: VmHWM, the high-water
    mark of its address space since exec. Not getrusage's ru_maxrss: Linux keeps that across
    execve, so a child would report the peak of the process it was forked from."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def summary(report: Any, seconds: float, stages: dict[str, float]) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "stages": stages,
        "facts": report.facts,
        "facts_read": report.facts_read,
        "metered_days": report.metered_days,
        "rows_written": report.rows_written,
        "metering_rows": report.metering_rows,
        "analytics_batches": report.analytics_batches,
        "compacted_markers": report.compacted_markers,
        "hourly_base": report.hourly_base,
        "daily_base": report.daily_base,
        "watermark": report.watermark.isoformat() if report.watermark else None,
    }


if __name__ == "__main__":
    root, instant, memory = sys.argv[1], datetime.fromisoformat(sys.argv[2]), int(sys.argv[3])
    compact = len(sys.argv) > 4 and sys.argv[4] == "1"
    print(json.dumps(main(root, instant, memory, compact)))
