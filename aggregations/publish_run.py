"""One publish run's work (aggregations/publish.py plans it and commits it): the days to
meter again and the analytics batches due, worked through in chunks of days, each chunk in
one DuckDB database over the facts' Parquet files (a chunk of at most half the memory
budget, such as a day more, meters in one connection while its batches are drawn in
another: :func:`meter_beside_release`). Every file is written to a temporary name and
renamed, under a name of the run; none is listed anywhere until the run's manifest, so a
group of them is written side by side (streams.storage.write_concurrently).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from aggregations import metering, metering_totals
from aggregations.analytics import (
    DayFacts,
    Privacy,
    Refusal,
    Released,
    Scheduled,
    release,
    schedule,
)
from aggregations.dp import ledger
from aggregations.engine import connect, second_connection
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
from streams.storage import write_concurrently

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
    # Days whose day file the run rewrote: their months' rollups are written once, at the
    # end of the run (write_totals).
    rewritten_days: set[date] = field(default_factory=set)

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
        connection: duckdb.DuckDBPyConnection | None = None
        try:
            for group in chunks(work_days, size, budget):
                # A database per chunk (what it holds goes with it), the last one kept for
                # the month totals: opening another costs tens of milliseconds, a tenth of
                # a run with one more day.
                if connection is not None:
                    connection.close()
                connection = connect(memory_limit_mb=memory_limit_mb, temp_directory=spill)
                metered = [d for d in group if d in plan.metering_days]
                to_release = [due[d] for d in group if d in due]
                if metered and to_release and 2 * sum(size[d] for d in group) <= budget:
                    refused_days |= meter_beside_release(
                        run, connection, metered, to_release, entries
                    )
                    continue
                meter_days(run, connection, metered)
                refused_days |= release_days(run, connection, to_release, entries)
            write_totals(run, connection)
        finally:
            if connection is not None:
                connection.close()
    waiting = (set(manifest.waiting_days) - set(in_play)) | set(plan_due.waiting_days)
    return waiting, manifest.unreleased_facts + plan_due.unreleased_facts, refused_days


def meter_beside_release(
    run: Run,
    connection: duckdb.DuckDBPyConnection,
    metered: list[date],
    to_release: list[Scheduled],
    entries: Mapping[date, list[ledger.Entry]],
) -> set[date]:
    """:func:`meter_days` and :func:`release_days` of a chunk that fits half the memory
    budget, their queries side by side (``connection`` and a second connection to its
    database, under its one memory limit), so a small run (a day more) uses both cores
    instead of one query's worth.

    Only the release's queries and noise run in the other thread (:func:`draw_release`, no
    write and no change to ``run``); its ledger records and published copies are written
    after the metering files, as one after the other would, so a crash leaves what it left.
    """
    release_connection = second_connection(connection)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sieve-release") as pool:
            drawn = pool.submit(draw_release, run, release_connection, to_release, entries)
            meter_days(run, connection, metered)
        released = drawn.result()
    finally:
        release_connection.close()
    return write_release(run, to_release, released)


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
    for name in (
        "recomputed",
        "current",
        "published_windows",
        "published_hours",
        "compared",
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
    files: dict[str, pa.Table] = {}
    start = 0
    for end, key in zip(encoded.run_ends.to_pylist(), encoded.values.to_pylist(), strict=True):
        grain, day = key.split("/")
        name = metering_path(grain, date.fromisoformat(day), run_id)
        files[name] = table.slice(start, end - start)
        previous = run.metering_files.get(key)
        if previous is not None and previous != name:
            run.retired.append(previous)
        run.metering_files[key] = name
        if grain == "day":
            run.rewritten_days.add(date.fromisoformat(day))
        start = end
    write_files(run.root, files)


def write_files(root: Root, files: Mapping[str, pa.Table]) -> None:
    """Write a run's files side by side (streams.storage.write_concurrently): none is listed
    anywhere until the run's manifest, which is written after they all are."""
    write_concurrently(
        [partial(write_parquet_atomic, root, name, table) for name, table in files.items()]
    )


def write_totals(run: Run, connection: duckdb.DuckDBPyConnection | None) -> None:
    """The month rollups of every day file the run rewrote (aggregations.metering_totals),
    once per run: after the last chunk's day files, before the manifest lists any of them.
    ``connection``: the last chunk's (None when there was no chunk, hence no day file)."""
    run_id = run.plan.run
    if not run.rewritten_days or run_id is None:
        return
    assert connection is not None  # a rewritten day file was written in a chunk
    months = metering_totals.rewrite_months(
        connection,
        run.rewritten_days,
        run.metering_files,
        {m.name: m.sql_type for m in run.meters},
        run.root.join,
    )
    files: dict[str, pa.Table] = {}
    for month, table in months.items():
        name = metering_totals.totals_path(month, run_id)
        files[name] = table
        key = metering_totals.totals_key(month)
        previous = run.metering_files.get(key)
        if previous is not None and previous != name:
            run.retired.append(previous)
        run.metering_files[key] = name
    write_files(run.root, files)


def release_days(
    run: Run,
    connection: duckdb.DuckDBPyConnection,
    due: list[Scheduled],
    entries: Mapping[date, list[ledger.Entry]],
) -> set[date]:
    """Release the due batches of a chunk: ledger first, then the published copy."""
    if not due:
        return set()
    return write_release(run, due, draw_release(run, connection, due, entries))


def draw_release(
    run: Run,
    connection: duckdb.DuckDBPyConnection,
    due: list[Scheduled],
    entries: Mapping[date, list[ledger.Entry]],
) -> Released:
    """The due batches bounded and noised (aggregations.analytics.release): no write, and
    ``run`` is only read (:func:`meter_beside_release` runs it beside the metering)."""
    assert run.plan.run is not None
    covered = [name for scheduled in due for name in scheduled.covered_files]
    register_facts(connection, run.root, covered, "batch_facts")
    return release(connection, "batch_facts", entries, due, run.privacy, run.plan.run, run.now)


def write_release(run: Run, due: list[Scheduled], released: Released) -> set[date]:
    """Record the released batches in the ledger, then publish them; the refused days."""
    run.facts_read += run.rows([name for scheduled in due for name in scheduled.covered_files])
    # Every batch recorded before any is published (each batch's record before its copy is
    # what matters: a copy without a record would be a release the accountant never saw).
    write_concurrently(
        [partial(ledger.record, run.root, batch.entry, batch.table) for batch in released.batches]
    )
    write_concurrently(
        [partial(ledger.publish_recorded, run.root, batch.entry) for batch in released.batches]
    )
    for batch in released.batches:
        run.batches.append(batch.entry)
        run.analytics_rows += batch.table.num_rows
    run.refused.extend(released.refused)
    return {refusal.day for refusal in released.refused}
