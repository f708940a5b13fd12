"""Publishing: turn committed facts into the published metering and analytics datasets.

Contract (what holds after any crash and any re-run):

- Only committed facts count (commit markers), so a half-written range is never counted.
- A run reads only what is new: the ranges the manifest's cursor does not cover, and of the
  older facts only the days it meters again (days with new facts or windows that closed
  since the last run; :mod:`aggregations.publish_plan`). Its cost follows what is new, and
  it works through those days in chunks of ``memory_limit_mb``'s worth of facts in DuckDB
  over Parquet, so its memory does not follow the history.
- Windows are event time. The watermark is the latest event hour + 1h (capped at the hour
  of ``now`` + 1h, see :func:`aggregations.windows.watermark`); a window is closed once the
  watermark has passed its end by ``grace``. Only closed windows are published.
- Metering (:mod:`aggregations.metering`): a closed window never published gets base rows;
  a published key whose recomputed value differs from the sum of its published rows gets a
  correction row with the difference. Late events are therefore corrections, never dropped,
  and ``sum(rows of a key)`` is always the exact value over every committed fact.
- Analytics: differentially private batches per day on the day's schedule
  (:mod:`aggregations.analytics`), each recording the facts files it covers, so a fact is in
  at most one batch. A batch is recorded in the privacy ledger before it is published: a
  re-run after a crash, or after ``published/analytics`` was deleted, restores the recorded
  release and spends nothing.
- The manifest (:mod:`aggregations.manifest`) is written last and atomically: readers and
  the next run see the previous run whole or this one whole. Every file is written to a
  temporary name and renamed, under names derived from the run's inputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from aggregations import metering
from aggregations.analytics import (
    DayFacts,
    Privacy,
    Refusal,
    Scheduled,
    batch_listing,
    release,
    schedule,
    unrecorded_refusal,
)
from aggregations.dp import ledger
from aggregations.engine import connect
from aggregations.manifest import (
    Manifest,
    add_interval,
    mark_run_finished,
    mark_run_started,
    publish_lock,
    read_manifest,
    run_interrupted,
    write_manifest,
)
from aggregations.meters import Meter, default_meters
from aggregations.publish_plan import RunPlan, chunks, new_ranges, plan_run
from aggregations.schemas import (
    ANALYTICS,
    ANALYTICS_DIR,
    LEGACY_METERING_DIRS,
    METERING,
    METERING_DIR,
    PUBLISHED_DIR,
)
from aggregations.storage import (
    CommittedRange,
    FileFacts,
    Root,
    committed_ranges,
    delete,
    ensure_schema_file,
    exists,
    facts_day,
    file_facts,
    list_files,
    list_parquet,
    register_facts,
    resolve_root,
    write_parquet_atomic,
)
from aggregations.windows import last_closed_day, last_closed_hour
from schemas.arrow import conform

# Memory per fact of a chunk (DuckDB's tables of facts, bounding and long rows, and the Arrow
# rows of the day files written): a chunk holds at most memory_limit_mb * 1 MB / this many
# facts. Measured: ~700 bytes a fact over a base of ~110 MB (bench/aggregations.py).
BYTES_PER_FACT = 1000
DEFAULT_MEMORY_LIMIT_MB = 1024


class LegacyMeteringError(ValueError):
    """``published/metering_hourly`` or ``metering_daily`` hold an earlier Sieve's files."""


@dataclass(frozen=True)
class PublishReport:
    run_id: str | None
    watermark: datetime | None
    facts: int  # facts of the ranges new to this run
    hourly_base: int = 0  # account-hours published for the first time
    hourly_corrections: int = 0  # account-hours that got a correction
    daily_base: int = 0
    daily_corrections: int = 0
    analytics_batches: int = 0
    analytics_rows: int = 0
    # Per released batch: (day, batch, the day's epsilon spent once it counted).
    analytics_spent: tuple[tuple[date, int, float], ...] = field(default_factory=tuple)
    # Recorded batches whose published copy was missing, written again from the ledger.
    analytics_restored: int = 0
    # Batches the accountant refused (never published), with the reason.
    analytics_refused: tuple[Refusal, ...] = field(default_factory=tuple)
    # Closed days with facts waiting for their next late batch (not dropped).
    waiting_days: tuple[date, ...] = field(default_factory=tuple)
    # New facts committed after the last batch of their day: counted in metering, never in
    # analytics (the day's budget is spent).
    unreleased_facts: int = 0
    # What the run read and did, beyond the new facts (rereads of days metered again).
    facts_read: int = 0
    metered_days: int = 0
    metering_rows: int = 0
    # Meters metered over every day this run: new, or their definition changed.
    remetered: tuple[str, ...] = field(default_factory=tuple)

    @property
    def rows_written(self) -> int:
        return self.metering_rows + self.analytics_rows


def ensure_layout(root: Root) -> None:
    """Create the published folders with their schema files (so catalog views bind)."""
    ensure_schema_file(root, METERING_DIR, METERING)
    ensure_schema_file(root, ANALYTICS_DIR, ANALYTICS)


def layout_complete(root: Root) -> bool:
    return all(
        exists(root, f"{folder}/_schema.parquet") for folder in (METERING_DIR, ANALYTICS_DIR)
    )


def refuse_legacy_metering(root: Root) -> None:
    for folder in LEGACY_METERING_DIRS:
        if list_parquet(root, folder):
            raise LegacyMeteringError(
                f"{root.join(folder)} holds metering published by an earlier Sieve (one wide"
                " file per run). Metering now lives in published/metering, one row per meter"
                " (a new meter changes no file schema). Move published/metering_hourly and"
                " published/metering_daily away and publish again: metering is recomputed"
                " exactly from the committed facts."
            )


@dataclass
class _Writes:
    """Marks the run as started before its first write (and only if it writes at all): a
    run found started at the next run's start crashed, and its leftovers are swept."""

    root: Root
    started: bool = False

    def begin(self) -> None:
        if not self.started:
            mark_run_started(self.root, "publish")
            self.started = True

    def finish(self) -> None:
        if self.started:
            mark_run_finished(self.root)


@dataclass
class _Run:
    """What a run has gathered and done so far (one per publish call)."""

    writes: _Writes
    root: Root
    manifest: Manifest
    plan: RunPlan
    files_by_day: dict[date, list[str]]
    facts: dict[str, FileFacts]
    now: datetime
    grace: timedelta
    privacy: Privacy
    meters: tuple[Meter, ...]
    metering_files: dict[str, str]
    retired: list[str] = field(default_factory=list)
    counts: metering.Changes = field(default_factory=metering.Changes)
    metering_rows: int = 0
    facts_read: int = 0
    batches: list[ledger.Entry] = field(default_factory=list)
    analytics_rows: int = 0
    refused: list[Refusal] = field(default_factory=list)

    def rows(self, files: Sequence[str]) -> int:
        for name in files:
            if name not in self.facts:
                self.facts[name] = file_facts(self.root, name)
        return sum(self.facts[name].rows for name in files)


def publish(
    data_root: str,
    now: datetime,
    grace: timedelta,
    privacy: Privacy,
    close_through: datetime | None = None,
    *,
    meters: Sequence[Meter] | None = None,
    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
) -> PublishReport:
    """Publish every closed window of the committed facts under ``data_root`` that is new
    since the last run (idempotent: a re-run with nothing new writes nothing and spends
    nothing).

    ``close_through``: an operator's word that the input is complete up to that instant
    (never past ``now``): windows ending by then close even when the stream is quiet, e.g.
    to invoice a month whose last hours saw no later traffic. Events for them that still
    arrive become corrections, as any late event does. ``meters``: the declared meters (the
    packaged ones by default).
    """
    root = resolve_root(data_root)
    meters = tuple(meters) if meters is not None else default_meters()
    writes = _Writes(root)
    with publish_lock(root):
        refuse_legacy_metering(root)
        manifest = read_manifest(root)
        if run_interrupted(root):
            sweep_leftovers(root, manifest)
        if not layout_complete(root):
            writes.begin()
            ensure_layout(root)
        listing = batch_listing(root)
        restored = 0
        for day, batch in listing.missing():
            writes.begin()
            ledger.publish_recorded(root, ledger.entry_at(root, day, batch))
            restored += 1
        ranges = committed_ranges(root)
        run = _start(root, manifest, ranges, meters, now, grace, privacy, close_through, writes)
        if run is None:
            writes.finish()
            return PublishReport(None, None, 0, analytics_restored=restored)
        stopped = listing.unrecorded()
        waiting, unreleased, pending = _work(run, stopped, memory_limit_mb)
        changed = _next_manifest(run, waiting, pending, unreleased)
        anything = run.metering_rows or run.batches or restored
        if changed != manifest:
            writes.begin()
            for name in manifest.retired:
                delete(root, name)
            write_manifest(root, changed)
        writes.finish()
        last_day = last_closed_day(run.plan.mark, grace) if run.plan.mark else None
        refused = [
            unrecorded_refusal(day, batch)
            for day, batch in sorted(stopped.items())
            if day not in run.plan.analytics_days and last_day is not None and day <= last_day
        ]
        return PublishReport(
            run_id=run.plan.run if anything else None,
            watermark=run.plan.mark,
            facts=run.rows([f for r in run.plan.new_ranges for f in r.facts]),
            hourly_base=run.counts.hourly_base,
            hourly_corrections=run.counts.hourly_corrections,
            daily_base=run.counts.daily_base,
            daily_corrections=run.counts.daily_corrections,
            analytics_batches=len(run.batches),
            analytics_rows=run.analytics_rows,
            analytics_spent=tuple((e.day, e.batch, e.epsilon_after) for e in run.batches),
            analytics_restored=restored,
            analytics_refused=tuple(run.refused + refused),
            waiting_days=tuple(sorted(waiting)),
            unreleased_facts=unreleased - manifest.unreleased_facts,
            facts_read=run.facts_read,
            metered_days=len(run.plan.metering_days),
            metering_rows=run.metering_rows,
            remetered=run.plan.remetered,
        )


def _start(
    root: Root,
    manifest: Manifest,
    ranges: list[CommittedRange],
    meters: tuple[Meter, ...],
    now: datetime,
    grace: timedelta,
    privacy: Privacy,
    close_through: datetime | None,
    writes: _Writes,
) -> _Run | None:
    """Plan the run: read the footers of the new ranges' files, nothing else of the facts."""
    files_by_day: dict[date, list[str]] = {}
    for committed in ranges:
        for name in committed.facts:
            files_by_day.setdefault(facts_day(name), []).append(name)
    facts: dict[str, FileFacts] = {}
    new_files = [name for r in new_ranges(manifest, ranges) for name in r.facts]
    for name in new_files:
        facts[name] = file_facts(root, name)
    hours = [hour for name in new_files if (hour := facts[name].max_hour) is not None]
    plan = plan_run(
        manifest,
        ranges,
        max(hours) if hours else None,
        [facts_day(name) for name in new_files],
        meters,
        now,
        grace,
        privacy.budget,
        close_through,
    )
    if plan.run is None:
        return None
    return _Run(
        writes,
        root,
        manifest,
        plan,
        {day: sorted(names) for day, names in files_by_day.items()},
        facts,
        now,
        grace,
        privacy,
        meters,
        dict(manifest.metering),
    )


def _work(
    run: _Run, stopped: Mapping[date, int], memory_limit_mb: int
) -> tuple[set[date], int, set[date]]:
    """Meter and release, chunk by chunk. Returns the waiting days, the unreleased facts
    (in total) and the days whose due batch was refused."""
    plan, manifest = run.plan, run.manifest
    assert plan.mark is not None and plan.run is not None
    in_play = {day: _day_facts(run, day) for day in plan.analytics_days}
    entries = {day: ledger.read_day(run.root, day) for day in in_play}
    plan_due = schedule(
        in_play,
        entries,
        stopped,
        plan.mark,
        run.grace,
        last_closed_day(plan.mark, run.grace),
        run.privacy.budget,
    )
    run.refused.extend(plan_due.refused)
    due = {scheduled.day: scheduled for scheduled in plan_due.due}
    work_days = sorted(set(plan.metering_days) | set(due))
    if work_days:
        run.writes.begin()
    size = {
        day: (run.rows(run.files_by_day.get(day, [])) if day in plan.metering_days else 0)
        + (run.rows(due[day].covered_files) if day in due else 0)
        for day in work_days
    }
    budget = max(1, memory_limit_mb * 1_000_000 // BYTES_PER_FACT)
    refused_days: set[date] = set()
    with tempfile.TemporaryDirectory(prefix="sieve-publish-") as spill:
        for group in chunks(work_days, size, budget):
            connection = connect(memory_limit_mb=memory_limit_mb, temp_directory=spill)
            try:
                _meter(run, connection, [d for d in group if d in plan.metering_days])
                refused_days |= _release(
                    run, connection, [due[d] for d in group if d in due], entries
                )
            finally:
                connection.close()
    waiting = (set(manifest.waiting_days) - set(in_play)) | set(plan_due.waiting_days)
    return waiting, manifest.unreleased_facts + plan_due.unreleased_facts, refused_days


def _day_facts(run: _Run, day: date) -> DayFacts:
    files = tuple(run.files_by_day.get(day, []))
    new = frozenset(name for r in run.plan.new_ranges for name in r.facts)
    return DayFacts(files, {name: run.rows([name]) for name in files}, new & set(files))


def _meter(run: _Run, connection: duckdb.DuckDBPyConnection, days: list[date]) -> None:
    """Meter ``days`` again from all their facts and publish what changed, one file per day."""
    if not days:
        return
    plan = run.plan
    assert plan.mark is not None and plan.run is not None
    files = [name for day in days for name in run.files_by_day.get(day, [])]
    run.facts_read += run.rows(files)
    register_facts(connection, run.root, files, "facts")
    metering.recompute(
        connection,
        run.meters,
        days,
        last_closed_hour(plan.mark, run.grace),
        last_closed_day(plan.mark, run.grace),
    )
    published = [
        run.metering_files[d.isoformat()] for d in days if d.isoformat() in run.metering_files
    ]
    _register_published(connection, run.root, published)
    counts = metering.changes(connection, run.meters, plan.new_meters)
    run.counts = metering.Changes(
        run.counts.hourly_base + counts.hourly_base,
        run.counts.hourly_corrections + counts.hourly_corrections,
        run.counts.daily_base + counts.daily_base,
        run.counts.daily_corrections + counts.daily_corrections,
    )
    table = connection.sql(
        f"""
        SELECT {", ".join(METERING.names)} FROM (
            SELECT *, 0 AS part, file_row_number AS ordinal FROM published
            WHERE date IN (SELECT date FROM changes)
            UNION ALL BY NAME
            SELECT *, $run AS publish_run, $mark AS watermark, $now AS published_at, 1 AS part,
                   row_number() OVER (ORDER BY {", ".join(metering.KEY)}) AS ordinal
            FROM changes
        ) ORDER BY date, part, ordinal
        """,  # noqa: S608 - column names are constants
        params={"run": plan.run, "mark": plan.mark, "now": run.now},
    ).to_arrow_table()
    run.metering_rows += connection.execute("SELECT count(*) FROM changes").fetchall()[0][0]
    _write_days(run, conform(table, METERING))
    for name in ("recomputed", "current", "published_windows", "recomputed_windows", "changes"):
        connection.execute(f"DROP TABLE IF EXISTS {name}")


def _register_published(
    connection: duckdb.DuckDBPyConnection, root: Root, files: list[str]
) -> None:
    if files:
        relation = connection.read_parquet(
            [root.join(name) for name in files], file_row_number=True, hive_partitioning=False
        )
    else:
        empty = METERING.empty_table().append_column("file_row_number", pa.array([], pa.int64()))
        relation = connection.from_arrow(empty)
    relation.create_view("published", replace=True)


def _write_days(run: _Run, table: pa.Table) -> None:
    """One file per date of ``table`` (sorted by date): the day's rows before and the new."""
    if table.num_rows == 0:
        return
    encoded = pc.run_end_encode(table["date"].combine_chunks())
    start = 0
    for end, day in zip(encoded.run_ends.to_pylist(), encoded.values.to_pylist(), strict=True):
        name = f"{METERING_DIR}/date={day.isoformat()}/{run.plan.run}.parquet"
        write_parquet_atomic(run.root, name, table.slice(start, end - start))
        previous = run.metering_files.get(day.isoformat())
        if previous is not None and previous != name:
            run.retired.append(previous)
        run.metering_files[day.isoformat()] = name
        start = end


def _release(
    run: _Run,
    connection: duckdb.DuckDBPyConnection,
    due: list[Scheduled],
    entries: Mapping[date, list[ledger.Entry]],
) -> set[date]:
    """Release the due batches of a chunk: ledger first, then the published copy."""
    if not due:
        return set()
    plan = run.plan
    assert plan.run is not None
    covered = [name for scheduled in due for name in scheduled.covered_files]
    run.facts_read += run.rows(covered)
    register_facts(connection, run.root, covered, "batch_facts")
    released = release(connection, "batch_facts", entries, due, run.privacy, plan.run, run.now)
    for batch in released.batches:
        ledger.record(run.root, batch.entry, batch.table)
        ledger.publish_recorded(run.root, batch.entry)
        run.batches.append(batch.entry)
        run.analytics_rows += batch.table.num_rows
    run.refused.extend(released.refused)
    return {refusal.day for refusal in released.refused}


def _next_manifest(run: _Run, waiting: set[date], pending: set[date], unreleased: int) -> Manifest:
    plan, manifest = run.plan, run.manifest
    cursor = {topic: dict(parts) for topic, parts in manifest.cursor.items()}
    for r in plan.new_ranges:
        partitions = cursor.setdefault(r.topic, {})
        partitions[r.partition] = add_interval(partitions.get(r.partition, []), r.first, r.last)
    changed = Manifest(
        generation=manifest.generation,
        run=manifest.run,
        published_at=manifest.published_at,
        watermark=plan.mark,
        max_event_hour=plan.max_event_hour,
        cursor=cursor,
        days=list(plan.days),
        metering=run.metering_files,
        retired=manifest.retired,
        meters=[m.to_record() for m in run.meters],
        definitions={m.name: m.definition for m in run.meters},
        pending_days=sorted(pending),
        waiting_days=sorted(waiting),
        unreleased_facts=unreleased,
    )
    if changed == manifest and not run.retired:
        return manifest
    changed.generation = manifest.generation + 1
    changed.run = plan.run
    changed.published_at = run.now
    changed.retired = run.retired
    return changed


def sweep_leftovers(root: Root, manifest: Manifest) -> None:
    """After a crashed run: remove the metering files no manifest lists and temporary files
    (the crashed run's; a ledger record it wrote stays, it is what the budget spent)."""
    keep = {*manifest.metering.values(), *manifest.retired, f"{METERING_DIR}/_schema.parquet"}
    for name in list_files(root, METERING_DIR):
        if name not in keep:
            delete(root, name)
    for folder in (PUBLISHED_DIR, ledger.LEDGER_DIR):
        for name in list_files(root, folder):
            if ".tmp-" in name.rsplit("/", 1)[-1]:
                delete(root, name)
