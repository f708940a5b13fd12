"""Analytics batches of each closed day: schedule, accountant, release, ledger (issue 8).

A day's batches follow its budget's schedule (aggregations/dp/budget.py): when slots are
due, one batch releases them together over the day's facts that no earlier batch covered.
Before a batch is released the accountant checks the day's ledger (aggregations/dp/
ledger.py); a batch over budget is refused and reported, never published. A release is
recorded in the ledger first and published second, so a batch is never published twice
with different noise: a published file that disappeared is restored from the ledger.

Cost per new day, not per history (issue 10): a run looks only at the days *in play*
(:func:`days_in_play`): days with a slot that fell due since the last run, days with new
facts, and days whose due batch was refused. Their ledger folders are read, nothing else of
the ledger; which batches are published and recorded is known from the file names of the two
folders (:func:`batch_listing`). What a run releases is what the full scan of every day
would release: a day not in play has no due slot unreleased and no new facts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from aggregations.dp.bounding import BoundedBatch, Bounds, bound_days, empty_batch
from aggregations.dp.budget import Budget, check
from aggregations.dp.domains import domains
from aggregations.dp.ledger import LEDGER_DIR, Entry, batch_names, entry_of, spent_rho
from aggregations.dp.release import Cell, Release, release_bounded
from aggregations.schemas import ANALYTICS, ANALYTICS_DIR
from aggregations.storage import Root
from schemas.commits import file_offsets
from streams.settings import Settings


class LegacyAnalyticsError(ValueError):
    """``published/analytics`` holds files from before differential privacy."""


@dataclass(frozen=True)
class Privacy:
    """What the analytics are released under: the day's budget and the contribution bounds."""

    budget: Budget
    bounds: Bounds


def privacy_of(settings: Settings) -> Privacy:
    """The budget and bounds the ``SIEVE_DP_*`` settings configure."""
    return Privacy(
        Budget(
            settings.dp_epsilon,
            settings.dp_delta,
            settings.dp_late_batches,
            settings.dp_late_share,
            settings.dp_late_interval,
        ),
        Bounds(settings.dp_max_events_per_person_day, userless_unit=settings.dp_userless_unit),
    )


@dataclass(frozen=True)
class DayFacts:
    """A day's committed facts files (relative paths) and their rows; ``new``: of this run."""

    files: tuple[str, ...]
    rows: Mapping[str, int]
    new: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Scheduled:
    """A batch to release: its day, the due slots, and the facts files it covers."""

    day: date
    slots: tuple[int, ...]
    covered_files: tuple[str, ...]


@dataclass(frozen=True)
class Refusal:
    day: date
    batch: int
    reason: str


@dataclass(frozen=True)
class AnalyticsBatch:
    entry: Entry
    table: pa.Table


@dataclass(frozen=True)
class Schedule:
    """What a run does for the analytics of the days in play, before any noise is drawn."""

    due: tuple[Scheduled, ...]
    refused: tuple[Refusal, ...]  # days the run may not release (a lost ledger record)
    waiting_days: tuple[date, ...]  # closed days with facts for a slot not yet due
    unreleased_facts: int  # new facts of days whose every slot is released: never released


@dataclass(frozen=True)
class Released:
    batches: tuple[AnalyticsBatch, ...]
    refused: tuple[Refusal, ...] = field(default_factory=tuple)


# --- which days a run looks at -----------------------------------------------------------------


def newly_due(
    day: date, budget: Budget, before: datetime | None, after: datetime, grace: timedelta
) -> bool:
    """Whether a slot of ``day`` is due under the watermark ``after`` and was not under
    ``before`` (None: no earlier run)."""
    return any(
        budget.due(slot, day, after, grace)
        and (before is None or not budget.due(slot, day, before, grace))
        for slot in range(budget.slots)
    )


def days_in_play(
    days: Iterable[date],
    touched: Iterable[date],
    pending: Iterable[date],
    budget: Budget,
    before: datetime | None,
    after: datetime,
    grace: timedelta,
) -> set[date]:
    """Days a run must schedule: a slot fell due since the last run (``before``), new facts
    came, or a due batch is still unreleased (refused by the accountant)."""
    # The watermark did not move: no slot fell due (and no need to look at every day).
    still = before is not None and after <= before
    due = set() if still else newly_due_days(days, budget, before, after, grace)
    return due | set(touched) | set(pending)


def newly_due_days(
    days: Iterable[date], budget: Budget, before: datetime | None, after: datetime, grace: timedelta
) -> set[date]:
    """The days of ``days`` that :func:`newly_due` holds for, looked at newest first up to
    the first day whose last slot was already due under ``before``: a slot falls due a fixed
    time after its day ends, so every older day's slots were due too. A run with one more day
    then looks at the last few days, not at every day of the history."""
    due = set()
    for day in sorted(set(days), reverse=True):
        if before is not None and budget.due(budget.slots - 1, day, before, grace):
            break
        if newly_due(day, budget, before, after, grace):
            due.add(day)
    return due


# --- the published and recorded batches, by name -----------------------------------------------


@dataclass(frozen=True)
class BatchListing:
    """Batches recorded in the ledger and present under ``published/analytics``."""

    recorded: dict[date, set[int]]
    published: dict[date, set[int]]

    def missing(self) -> list[tuple[date, int]]:
        """Recorded batches whose published copy is gone: restored from the ledger."""
        return sorted(
            (day, batch)
            for day, batches in self.recorded.items()
            for batch in batches - self.published.get(day, set())
        )

    def unrecorded(self) -> dict[date, int]:
        """Days with a published batch the ledger does not record (its first such batch)."""
        return {
            day: min(batches - self.recorded.get(day, set()))
            for day, batches in self.published.items()
            if batches - self.recorded.get(day, set())
        }


def batch_listing(root: Root) -> BatchListing:
    """List both folders (names only). A Parquet file under ``published/analytics`` that is
    not a batch's is opened: a k-anonymous file of an earlier Sieve is refused.

    The two folders are listed side by side: each holds a folder per day, so their listing
    is the part of a run's fixed cost that grows with history, and most of it is waiting on
    the filesystem (pyarrow releases the GIL)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sieve-listing") as pool:
        ledger_names = pool.submit(batch_names, root, LEDGER_DIR)
        published, others = batch_names(root, ANALYTICS_DIR)
        recorded, _ = ledger_names.result()
    for path in others:
        metadata = pq.read_schema(path, filesystem=root.fs).metadata or {}
        if metadata.get(b"sieve.dataset") == b"analytics" and entry_of(path, root) is None:
            raise LegacyAnalyticsError(
                f"{path} is a k-anonymous analytics file from an earlier Sieve: such"
                " cells can be taken apart by differencing (issue 8). Delete"
                " published/analytics and publish again."
            )
    for day, batches in published.items():
        for batch in batches - recorded.get(day, set()):
            path = root.join(f"{ANALYTICS_DIR}/date={day.isoformat()}/batch-{batch:04d}.parquet")
            if entry_of(path, root) is None:
                metadata = pq.read_schema(path, filesystem=root.fs).metadata or {}
                if metadata.get(b"sieve.dataset") == b"analytics":
                    raise LegacyAnalyticsError(
                        f"{path} is a k-anonymous analytics file from an earlier Sieve:"
                        " delete published/analytics and publish again."
                    )
    return BatchListing(recorded, published)


def unrecorded_refusal(day: date, batch: int) -> Refusal:
    return Refusal(
        day,
        batch,
        "published/analytics has batches of this day that the privacy ledger does not"
        " record: what the day spent is unknown, so nothing more is released for it",
    )


# --- scheduling (pure) -------------------------------------------------------------------------


def schedule(
    facts: Mapping[date, DayFacts],
    ledger: Mapping[date, list[Entry]],
    stopped: Mapping[date, int],
    mark: datetime,
    grace: timedelta,
    last_day: date,
    budget: Budget,
) -> Schedule:
    """Which batches are due for the closed days (``<= last_day``) of ``facts`` (the days in
    play); ``stopped``: days with a published batch the ledger does not record."""
    due: list[Scheduled] = []
    refused: list[Refusal] = []
    waiting: list[date] = []
    unreleased = 0
    for day in sorted(facts):
        if day > last_day:
            continue
        if day in stopped:
            refused.append(unrecorded_refusal(day, stopped[day]))
            continue
        entries = ledger.get(day, [])
        released = frozenset(slot for entry in entries for slot in entry.slots)
        of_day = facts[day]
        uncovered = tuple(uncovered_files(of_day.files, entries))
        slots = budget.due_slots(day, mark, grace, released)
        if slots:
            due.append(Scheduled(day, slots, uncovered))
        elif uncovered and len(released) < budget.slots:
            waiting.append(day)
        else:
            unreleased += sum(of_day.rows[name] for name in uncovered if name in of_day.new)
    return Schedule(tuple(due), tuple(refused), tuple(waiting), unreleased)


def uncovered_files(files: Iterable[str], entries: Sequence[Entry]) -> list[str]:
    """The files of a day no batch of ``entries`` covers, by name or by offsets.

    A batch records the files it covered by name; a file's name also tells the offsets of
    one partition it holds rows of (schemas.commits.file_offsets). A file sharing offsets
    with a covered file is covered: the same input records, written again by a fencing
    successor after an evicted writer's range was published, or merged by a compaction
    (which waits for a day's last batch: streams.compaction). Releasing it would count
    those events twice; what it holds beyond is reported unreleased, never double counted.
    """
    names = {name for entry in entries for name in entry.covered_files}
    spans: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for name in names:
        offsets = file_offsets(name)
        if offsets is not None:
            topic, partition, first, last = offsets
            spans.setdefault((topic, partition), []).append((first, last))
    uncovered = []
    for name in files:
        if name in names:
            continue
        offsets = file_offsets(name)
        if offsets is not None:
            topic, partition, first, last = offsets
            if any(
                low <= last and first <= high for low, high in spans.get((topic, partition), [])
            ):
                continue
        uncovered.append(name)
    return uncovered


# --- release -----------------------------------------------------------------------------------


def release(
    connection: duckdb.DuckDBPyConnection,
    source: str,
    ledger: Mapping[date, list[Entry]],
    due: Sequence[Scheduled],
    privacy: Privacy,
    run: str,
    now: datetime,
) -> Released:
    """Release the due batches (noise drawn here), each checked by the accountant.

    ``source`` is a view of the facts the batches cover (each day's uncovered files): every
    day is bounded in one set of DuckDB queries, then released on its own.
    """
    budget, bounds = privacy.budget, privacy.bounds
    dims = domains()
    bounded = bound_days(connection, source, [s.day for s in due], dims, bounds)
    noisy = draw_noise(
        [
            (
                bounded.get(s.day) or empty_batch(s.day, dims),
                budget.rho * sum(budget.share(slot) for slot in s.slots),
            )
            for s in due
        ],
        bounds,
    )
    batches: list[AnalyticsBatch] = []
    refused: list[Refusal] = []
    for scheduled, released in zip(due, noisy, strict=True):
        verdict = check(budget, spent_rho(ledger.get(scheduled.day, [])), released.rho)
        batch = scheduled.slots[0]
        if verdict.refusal is not None:
            refused.append(Refusal(scheduled.day, batch, verdict.refusal))
            continue
        entry = Entry(
            day=scheduled.day,
            batch=batch,
            slots=scheduled.slots,
            rho=released.rho,
            delta=budget.delta,
            epsilon_after=verdict.epsilon_after,
            keys_per_person=released.keys_per_person,
            events_per_person_day=bounds.events_per_unit,
            values_per_person=bounds.values_per_unit,
            facts=released.facts,
            covered_files=scheduled.covered_files,
            publish_run=run,
        )
        batches.append(AnalyticsBatch(entry, cells_table(released.cells, entry, now)))
    return Released(tuple(batches), tuple(refused))


def draw_noise(batches: Sequence[tuple[BoundedBatch, float]], bounds: Bounds) -> list[Release]:
    """Each bounded batch released for its rho (:func:`aggregations.dp.release.
    release_bounded`), in order, several batches at a time.

    OpenDP's exact samplers are most of a release's time and run in its native library,
    which ctypes calls without holding the GIL: batches drawn in threads use every core.
    Each batch is still its own invocation of its own measurement, so what it spends and
    how its numbers are distributed do not change; the accountant checks the results in
    order afterwards, as before (a refused batch's draws are never used)."""
    dims = domains()
    if len(batches) < 2:
        return [release_bounded(batch, rho, bounds, dims) for batch, rho in batches]
    workers = min(len(batches), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sieve-dp") as pool:
        return list(pool.map(lambda item: release_bounded(item[0], item[1], bounds, dims), batches))


def cells_table(cells: tuple[Cell, ...], entry: Entry, published_at: datetime) -> pa.Table:
    """The batch as rows of the ANALYTICS schema, in a deterministic order."""
    ordered = sorted(
        cells,
        key=lambda c: (c.grain, c.dimension, c.cell, c.value or "", c.hour or published_at),
    )
    rows = [
        {
            "grain": c.grain,
            "date": entry.day,
            "hour": c.hour,
            "batch": entry.batch,
            "dimension": c.dimension,
            "cell": c.cell,
            "value": c.value,
            "events": c.events,
            "events_sd": c.events_sd,
            "people": c.people,
            "people_sd": c.people_sd,
            "publish_run": entry.publish_run,
            "published_at": published_at,
        }
        for c in ordered
    ]
    return pa.Table.from_pylist(rows, schema=ANALYTICS)
