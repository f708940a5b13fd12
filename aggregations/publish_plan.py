"""What a publish run has to do, decided before it reads any fact (pure: no I/O, no clock).

From the manifest (what earlier runs published and how far they read), the committed
ranges, the footers of the new facts files and the meters, :func:`plan_run` decides:

- which ranges are new: not covered by the manifest's cursor. Only live markers count
  (schemas.commits.resolve_markers). A live range the cursor holds in part is new: an
  evicted writer's range was published, then superseded by its successor's, which starts
  inside it; the days it touches are metered again whole from the live files (exact), and
  the analytics count by offsets what an earlier batch covered (analytics.uncovered_files);
- the watermark: the latest event hour of every published or new fact + 1 h, never past
  ``now``'s hour + 1 h, never below the last run's (closed windows stay closed);
- the days to meter: days with new facts, days with windows that closed since the last run,
  and every day when a meter is new or its definition changed. A day is metered whole from
  all its committed facts (one folder per day), so distinct counts are exact and a newly
  closed window counts the facts that came before it closed;
- the analytics days in play (:func:`aggregations.analytics.days_in_play`);
- the run's id: a digest of these inputs, so a run retried after a crash writes the same
  names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from aggregations.analytics import days_in_play
from aggregations.dp.budget import Budget
from aggregations.manifest import Manifest, coverage
from aggregations.meters import Meter
from aggregations.storage import CommittedRange
from aggregations.windows import HOUR, last_closed_hour, watermark


@dataclass(frozen=True)
class RunPlan:
    run: str | None  # None: nothing to publish (no facts at all)
    mark: datetime | None
    max_event_hour: datetime | None
    new_ranges: tuple[CommittedRange, ...]
    days: tuple[date, ...]  # every day with committed facts
    touched: tuple[date, ...]  # days with new facts
    metering_days: tuple[date, ...]
    analytics_days: tuple[date, ...]
    new_meters: tuple[str, ...]  # never published before: their first rows are base rows
    remetered: tuple[str, ...]  # new or changed definitions: metered over every day

    @property
    def idle(self) -> bool:
        """Nothing new to read, meter or release."""
        return not (self.new_ranges or self.metering_days or self.analytics_days)


def new_ranges(manifest: Manifest, ranges: Sequence[CommittedRange]) -> list[CommittedRange]:
    """The ranges the cursor does not cover (in topic, partition, offset order)."""
    new = []
    for r in sorted(ranges, key=lambda r: (r.topic, r.partition, r.first)):
        intervals = manifest.cursor.get(r.topic, {}).get(r.partition, [])
        if coverage(intervals, r.first, r.last) != "all":
            new.append(r)
    return new


def run_id(
    manifest: Manifest, new: Sequence[CommittedRange], mark: datetime, meters: Sequence[Meter]
) -> str:
    hasher = hashlib.sha256()
    parts: list[object] = [manifest.generation, manifest.run, mark.isoformat()]
    parts += [(r.topic, r.partition, r.first, r.last) for r in new]
    parts += [(m.name, m.definition) for m in meters]
    hasher.update(repr(parts).encode())
    return f"{mark:%Y%m%dT%H}Z-{hasher.hexdigest()[:16]}"


def run_watermark(
    max_hour: datetime | None,
    now: datetime,
    grace: timedelta,
    close_through: datetime | None,
    previous: datetime | None,
) -> datetime | None:
    """The run's watermark (module docstring) from the latest event hour of the facts, the
    clock, the operator's ``close_through`` and the ``previous`` run's watermark (pure)."""
    mark = watermark(max_hour, now)
    if mark is not None and close_through is not None:
        mark = max(mark, min(close_through, now) + grace)
    if mark is not None and previous is not None:
        mark = max(mark, previous)
    return mark


def plan_run(
    manifest: Manifest,
    ranges: Sequence[CommittedRange],
    new_max_hour: datetime | None,
    days_of_new: Sequence[date],
    meters: Sequence[Meter],
    now: datetime,
    grace: timedelta,
    budget: Budget,
    close_through: datetime | None = None,
) -> RunPlan:
    """The run's plan (module docstring). ``new_max_hour`` and ``days_of_new``: the latest
    event hour and the days of the new ranges' facts files (from their footers and paths)."""
    new = tuple(new_ranges(manifest, ranges))
    known = [h for h in (manifest.max_event_hour, new_max_hour) if h is not None]
    max_hour = max(known) if known else None
    mark = run_watermark(max_hour, now, grace, close_through, manifest.watermark)
    touched = tuple(sorted(set(days_of_new)))
    days = tuple(sorted(set(manifest.days) | set(touched)))
    definitions: Mapping[str, str] = manifest.definitions
    new_meters = tuple(m.name for m in meters if m.name not in definitions)
    remetered = (
        tuple(m.name for m in meters if definitions.get(m.name) not in (None, m.definition))
        + new_meters
    )
    if mark is None:
        return RunPlan(None, None, None, new, days, touched, (), (), new_meters, remetered)
    last = last_closed_hour(mark, grace)
    previous = None if manifest.watermark is None else last_closed_hour(manifest.watermark, grace)
    # A day has windows that closed since the last run iff one of its hours is in
    # (previous, last]: its last hour closes with the day itself.
    closing = (
        {
            day
            for day in days
            if day <= last.date() and (previous is None or day >= (previous + HOUR).date())
        }
        if previous is None or last > previous
        else set()
    )
    wanted = set(days) if remetered else closing | set(touched)
    metering = tuple(sorted(day for day in wanted if day <= last.date()))
    analytics = days_in_play(
        days, touched, manifest.pending_days, budget, manifest.watermark, mark, grace
    )
    return RunPlan(
        run=run_id(manifest, new, mark, meters),
        mark=mark,
        max_event_hour=max_hour,
        new_ranges=new,
        days=days,
        touched=touched,
        metering_days=metering,
        analytics_days=tuple(sorted(analytics)),
        new_meters=new_meters,
        remetered=remetered,
    )


def chunks(days: Sequence[date], facts_of_day: Mapping[date, int], budget: int) -> list[list[date]]:
    """Consecutive days in groups of at most ``budget`` facts (a bigger day alone): what one
    DuckDB pass reads, so a run's memory depends on the budget, not on the history."""
    groups: list[list[date]] = []
    size = 0
    for day in sorted(days):
        rows = facts_of_day.get(day, 0)
        if groups and size + rows <= budget:
            groups[-1].append(day)
            size += rows
        else:
            groups.append([day])
            size = rows
    return groups
