"""Analytics batches of each closed day: schedule, accountant, release, ledger (issue 8).

A day's batches follow its budget's schedule (aggregations/dp/budget.py): when slots are
due, one batch releases them together over the day's facts that no earlier batch covered.
Before a batch is released the accountant checks the day's ledger (aggregations/dp/
ledger.py); a batch over budget is refused and reported, never published. A release is
recorded in the ledger first and published second, so a batch is never published twice
with different noise: a published file that disappeared is restored from the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aggregations.dp.bounding import Bounds
from aggregations.dp.budget import Budget, check
from aggregations.dp.domains import domains
from aggregations.dp.ledger import Entry, entry_of, spent_rho
from aggregations.dp.release import Cell, release_batch
from aggregations.schemas import ANALYTICS, ANALYTICS_DIR
from aggregations.storage import FILE_INDEX, Facts, Root, list_parquet
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
        Bounds(settings.dp_max_events_per_person_day),
    )


@dataclass(frozen=True)
class Scheduled:
    """A batch to release: its day, the due slots, and the facts files it covers."""

    day: date
    slots: tuple[int, ...]
    file_indices: tuple[int, ...]
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
    """What a run does for the analytics, before any noise is drawn."""

    due: tuple[Scheduled, ...]
    restore: tuple[Entry, ...]  # recorded releases whose published copy is missing
    refused: tuple[Refusal, ...]  # days the run may not release (a lost ledger record)
    waiting_days: tuple[date, ...]  # closed days with facts for a slot not yet due
    unreleased_facts: int  # facts of days whose every slot is released: never in analytics


@dataclass(frozen=True)
class Released:
    batches: tuple[AnalyticsBatch, ...]
    refused: tuple[Refusal, ...] = field(default_factory=tuple)


def published_batches(root: Root) -> dict[date, set[int]]:
    """The batches present under ``published/analytics``, per day."""
    found: dict[date, set[int]] = {}
    for path in list_parquet(root, ANALYTICS_DIR):
        entry = entry_of(path, root)
        if entry is None:
            metadata = pq.read_schema(path, filesystem=root.fs).metadata or {}
            if metadata.get(b"sieve.dataset") == b"analytics":
                raise LegacyAnalyticsError(
                    f"{path} is a k-anonymous analytics file from an earlier Sieve: such"
                    " cells can be taken apart by differencing (issue 8). Delete"
                    " published/analytics and publish again."
                )
            continue
        found.setdefault(entry.day, set()).add(entry.batch)
    return found


def schedule(
    facts: Facts,
    ledger: Mapping[date, list[Entry]],
    published: Mapping[date, set[int]],
    mark: datetime,
    grace: timedelta,
    last_day: date,
    budget: Budget,
) -> Schedule:
    """Which batches are due for every closed day (``<= last_day``) with facts."""
    restore = tuple(
        entry
        for entries in ledger.values()
        for entry in entries
        if entry.batch not in published.get(entry.day, set())
    )
    table = facts.table
    due: list[Scheduled] = []
    refused: list[Refusal] = []
    waiting: list[date] = []
    unreleased = 0
    if table.num_rows == 0:
        return Schedule((), restore, (), (), 0)
    days = pc.cast(table["occurred_hour"], pa.date32())
    for day in sorted(set(pc.unique(days).to_pylist())):
        if day > last_day:
            continue
        entries = ledger.get(day, [])
        recorded = {entry.batch for entry in entries}
        unrecorded = published.get(day, set()) - recorded
        if unrecorded:
            refused.append(
                Refusal(
                    day,
                    min(unrecorded),
                    "published/analytics has batches of this day that the privacy ledger"
                    " does not record: what the day spent is unknown, so nothing more is"
                    " released for it",
                )
            )
            continue
        released_slots = frozenset(slot for entry in entries for slot in entry.slots)
        covered = {name for entry in entries for name in entry.covered_files}
        of_day = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
        indices = sorted(
            i for i in pc.unique(of_day[FILE_INDEX]).to_pylist() if facts.files[i] not in covered
        )
        slots = budget.due_slots(day, mark, grace, released_slots)
        if slots:
            due.append(
                Scheduled(day, slots, tuple(indices), tuple(facts.files[i] for i in indices))
            )
        elif indices and len(released_slots) < budget.slots:
            waiting.append(day)
        elif indices:
            mask = pc.is_in(of_day[FILE_INDEX], pa.array(indices, pa.int32()))
            unreleased += pc.sum(pc.cast(mask, pa.int64())).as_py() or 0
    return Schedule(tuple(due), restore, tuple(refused), tuple(waiting), unreleased)


def release(
    facts: Facts,
    ledger: Mapping[date, list[Entry]],
    due: tuple[Scheduled, ...],
    privacy: Privacy,
    run: str,
    now: datetime,
) -> Released:
    """Release the due batches (noise drawn here), each checked by the accountant."""
    budget, bounds = privacy.budget, privacy.bounds
    dims = domains()
    batches: list[AnalyticsBatch] = []
    refused: list[Refusal] = []
    for scheduled in due:
        rows = facts.table.filter(
            pc.is_in(facts.table[FILE_INDEX], pa.array(scheduled.file_indices, pa.int32()))
        ).drop_columns([FILE_INDEX])
        days = pc.cast(rows["occurred_hour"], pa.date32())
        rows = rows.filter(pc.equal(days, pa.scalar(scheduled.day, pa.date32())))
        share = sum(budget.share(slot) for slot in scheduled.slots)
        released = release_batch(rows, scheduled.day, budget.rho * share, bounds, dims)
        spent = spent_rho(ledger.get(scheduled.day, []))
        verdict = check(budget, spent, released.rho)
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
