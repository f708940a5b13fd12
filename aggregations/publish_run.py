"""One publish run's work (aggregations/publish.py plans it and commits it): the days to
meter again and the analytics batches due, worked through in chunks of days, each chunk in
one DuckDB connection over the facts' Parquet files. Every file is written to a temporary
name and renamed, under a name of the run; none is listed anywhere until the run's manifest.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from aggregations import metering, metering_totals
from aggregations.analytics import DayFacts, Privacy, Refusal, Scheduled, release, schedule
from aggregations.dp import ledger
from aggregations.engine import connect
from aggregations.manifest import (
    GRAINS,
    Manifest,
    mark_run_finished,
    mark_run_started,
    metering_key,
    metering_path,
)
from aggregations.meters import Meter
from aggregations.publish_plan import RunPlan, chunks
from aggregations.schemas import METERING
from aggregations.storage import (
    FileFacts,
    Root,
    file_facts,
    register_facts,
    write_parquet_atomic,
)
from aggregations.windows import last_closed_day, last_closed_hour
from schemas.arrow import conform

# Memory per fact of a chunk (DuckDB's tables of facts, bounding and long rows, and the Arrow
# rows of the day files written): a chunk holds at most memory_limit_mb * 1 MB / this many
# facts. Measured: ~700 bytes a fact over a base of ~110 MB (bench/aggregations.py).
BYTES_PER_FACT = 1000


@dataclass
class Writes:
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
class Run:
    """What a run has gathered and done so far (one per publish call)."""

    writes: Writes
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


def work(
    run: Run, stopped: Mapping[date, int], memory_limit_mb: int
) -> tuple[set[date], int, set[date]]:
    """Meter and release, chunk by chunk. Returns the waiting days, the unreleased facts
    (in total) and the days whose due batch was refused."""
    plan, manifest = run.plan, run.manifest
    assert plan.mark is not None and plan.run is not None
    in_play = {day: day_facts(run, day) for day in plan.analytics_days}
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
                meter_days(run, connection, [d for d in group if d in plan.metering_days])
                refused_days |= release_days(
                    run, connection, [due[d] for d in group if d in due], entries
                )
            finally:
                connection.close()
    waiting = (set(manifest.waiting_days) - set(in_play)) | set(plan_due.waiting_days)
    return waiting, manifest.unreleased_facts + plan_due.unreleased_facts, refused_days


def day_facts(run: Run, day: date) -> DayFacts:
    files = tuple(run.files_by_day.get(day, []))
    new = frozenset(name for r in run.plan.new_ranges for name in r.facts)
    return DayFacts(files, {name: run.rows([name]) for name in files}, new & set(files))


def meter_days(run: Run, connection: duckdb.DuckDBPyConnection, days: list[date]) -> None:
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
    keys = [metering_key(grain, day) for day in days for grain in GRAINS]
    published = [run.metering_files[key] for key in keys if key in run.metering_files]
    register_published(connection, run.root, published)
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
            SEMI JOIN (SELECT DISTINCT grain, date FROM changes) USING (grain, date)
            UNION ALL BY NAME
            SELECT *, $run AS publish_run, $mark AS watermark, $now AS published_at, 1 AS part,
                   0 AS ordinal
            FROM changes
        ) ORDER BY grain, date, part, ordinal, {", ".join(metering.KEY[2:])}
        """,  # noqa: S608 - column names are constants
        params={"run": plan.run, "mark": plan.mark, "now": run.now},
    ).to_arrow_table()
    run.metering_rows += connection.execute("SELECT count(*) FROM changes").fetchall()[0][0]
    rewritten = conform(table, METERING)
    write_days(run, rewritten)
    write_totals(run, connection, rewritten)
    for name in (
        "recomputed",
        "current",
        "published_windows",
        "published_days",
        "recomputed_windows",
        "changes",
    ):
        connection.execute(f"DROP TABLE IF EXISTS {name}")


def register_published(connection: duckdb.DuckDBPyConnection, root: Root, files: list[str]) -> None:
    if files:
        relation = connection.read_parquet(
            [root.join(name) for name in files], file_row_number=True, hive_partitioning=False
        )
    else:
        empty = METERING.empty_table().append_column("file_row_number", pa.array([], pa.int64()))
        relation = connection.from_arrow(empty)
    relation.create_view("published", replace=True)


def write_days(run: Run, table: pa.Table) -> None:
    """One file per grain and date of ``table`` (sorted by both): the rows it had before and
    the new ones."""
    run_id = run.plan.run
    if table.num_rows == 0 or run_id is None:
        return
    keys = pc.binary_join_element_wise(
        table["grain"], pc.cast(table["date"], pa.string()), "/"
    ).combine_chunks()
    encoded = pc.run_end_encode(keys)
    start = 0
    for end, key in zip(encoded.run_ends.to_pylist(), encoded.values.to_pylist(), strict=True):
        grain, day = key.split("/")
        name = metering_path(grain, date.fromisoformat(day), run_id)
        write_parquet_atomic(run.root, name, table.slice(start, end - start))
        previous = run.metering_files.get(key)
        if previous is not None and previous != name:
            run.retired.append(previous)
        run.metering_files[key] = name
        start = end


def write_totals(run: Run, connection: duckdb.DuckDBPyConnection, rewritten: pa.Table) -> None:
    """The month rollups of the day files just rewritten (aggregations.metering_totals)."""
    run_id = run.plan.run
    if rewritten.num_rows == 0 or run_id is None:
        return
    months = metering_totals.rewrite_months(
        connection,
        rewritten,
        run.metering_files,
        {m.name: m.sql_type for m in run.meters},
        run.root.join,
    )
    for month, table in months.items():
        name = metering_totals.totals_path(month, run_id)
        write_parquet_atomic(run.root, name, table)
        key = metering_totals.totals_key(month)
        previous = run.metering_files.get(key)
        if previous is not None and previous != name:
            run.retired.append(previous)
        run.metering_files[key] = name


def release_days(
    run: Run,
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
