"""Publishing: turn committed facts into the published metering and analytics datasets.

Contract (what holds after any crash and any re-run):

- Only committed facts count (commit markers), so a half-written range is never counted.
- Windows are event time. The watermark is the latest event hour + 1h (capped at the hour
  of ``now`` + 1h, see :func:`aggregations.windows.watermark`); a window is closed once the
  watermark has passed its end by ``grace``. Only closed windows are published.
- Metering: a closed window never published gets a base row; a published window whose
  recomputed value differs from the sum of its published rows gets a correction row with
  the difference (``is_correction`` true). Late events are therefore corrections, never
  dropped, and ``sum(rows of a window)`` is always the exact value at the last run.
- Analytics: one k-anonymous batch per day and run (see aggregations/analytics.py), each
  file recording the facts files it covers, so a fact is in exactly one batch.
- Every file is written to a temporary name and renamed. Metering files are named by the
  run id, a digest of what the run publishes: a re-run with no new facts computes nothing
  to publish and writes nothing; a re-run after a crash writes only what is missing.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aggregations import metering
from aggregations.analytics import ProtectedBatch, batch_table, protect_batch
from aggregations.schemas import (
    ANALYTICS,
    ANALYTICS_DIR,
    METERING_DAILY,
    METERING_DAILY_DIR,
    METERING_HOURLY,
    METERING_HOURLY_DIR,
)
from aggregations.storage import (
    FILE_INDEX,
    Facts,
    Root,
    ensure_schema_file,
    list_parquet,
    load_facts,
    read_published,
    resolve_root,
    write_parquet_atomic,
)
from aggregations.windows import last_closed_day, last_closed_hour, watermark
from schemas.arrow import conform

_COVERED = b"sieve.covered_files"
_DATE = b"sieve.date"
_BATCH = b"sieve.batch"


@dataclass(frozen=True)
class AnalyticsBatch:
    day: date
    number: int
    covered_files: tuple[str, ...]
    cells: ProtectedBatch

    @property
    def relative_path(self) -> str:
        return f"{ANALYTICS_DIR}/date={self.day.isoformat()}/batch-{self.number:04d}.parquet"


@dataclass(frozen=True)
class PublishedState:
    """What earlier runs published: metering rows and, per day, the analytics batches."""

    hourly: pa.Table
    daily: pa.Table
    # day -> (number of batches, facts files they cover)
    analytics: dict[date, tuple[int, frozenset[str]]]


@dataclass(frozen=True)
class PublishReport:
    run_id: str | None
    watermark: datetime | None
    facts: int
    hourly_base: int = 0
    hourly_corrections: int = 0
    daily_base: int = 0
    daily_corrections: int = 0
    analytics_batches: int = 0
    analytics_rows: int = 0
    # Closed days with unpublished facts (fewer than k people so far): held back, not dropped.
    held_back_days: tuple[date, ...] = field(default_factory=tuple)

    @property
    def rows_written(self) -> int:
        return (
            self.hourly_base
            + self.hourly_corrections
            + self.daily_base
            + self.daily_corrections
            + self.analytics_rows
        )


@dataclass(frozen=True)
class PublishPlan:
    report: PublishReport
    hourly: pa.Table
    daily: pa.Table
    batches: tuple[tuple[AnalyticsBatch, pa.Table], ...]


def read_state(root: Root) -> PublishedState:
    analytics: dict[date, tuple[int, frozenset[str]]] = {}
    for path in list_parquet(root, ANALYTICS_DIR):
        metadata = pq.read_schema(path, filesystem=root.fs).metadata or {}
        day = date.fromisoformat(metadata[_DATE].decode())
        count, covered = analytics.get(day, (0, frozenset()))
        files = frozenset(json.loads(metadata[_COVERED]))
        analytics[day] = (max(count, int(metadata[_BATCH]) + 1), covered | files)
    return PublishedState(
        read_published(root, METERING_HOURLY_DIR, METERING_HOURLY),
        read_published(root, METERING_DAILY_DIR, METERING_DAILY),
        analytics,
    )


def _digest(parts: list[bytes]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()[:16]


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return sink.getvalue()


def _with_run(
    base: pa.Table,
    corrections: pa.Table,
    schema: pa.Schema,
    run: str,
    mark: datetime,
    now: datetime,
) -> pa.Table:
    def stamp(table: pa.Table, is_correction: bool) -> pa.Table:
        n = table.num_rows
        return (
            table.append_column("is_correction", pa.array([is_correction] * n, pa.bool_()))
            .append_column("publish_run", pa.array([run] * n, pa.string()))
            .append_column("watermark", pa.array([mark] * n, pa.timestamp("s", tz="UTC")))
            .append_column("published_at", pa.array([now] * n, pa.timestamp("us", tz="UTC")))
        )

    return pa.concat_tables(
        [conform(stamp(base, False), schema), conform(stamp(corrections, True), schema)]
    )


def _analytics_batches(
    facts: Facts, state: PublishedState, last_day: date, k: int
) -> tuple[list[AnalyticsBatch], list[date]]:
    """One batch per closed day with facts from files no earlier batch of the day covers."""
    table = facts.table
    if table.num_rows == 0:
        return [], []
    days = pc.cast(table["occurred_hour"], pa.date32())
    batches: list[AnalyticsBatch] = []
    held_back: list[date] = []
    for day in sorted(set(pc.unique(days).to_pylist())):
        if day > last_day:
            continue
        count, covered = state.analytics.get(day, (0, frozenset()))
        of_day = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
        new_indices = {
            i for i in pc.unique(of_day[FILE_INDEX]).to_pylist() if facts.files[i] not in covered
        }
        if not new_indices:
            continue
        batch_facts = of_day.filter(
            pc.is_in(of_day[FILE_INDEX], pa.array(sorted(new_indices), pa.int32()))
        )
        protected = protect_batch(batch_facts.drop_columns([FILE_INDEX]), k)
        if not protected.cells:
            # Fewer than k people: keep the facts for a later batch (more late facts).
            held_back.append(day)
            continue
        files = tuple(sorted(facts.files[i] for i in new_indices))
        batches.append(AnalyticsBatch(day, count, files, protected))
    return batches, held_back


def plan_publish(
    facts: Facts,
    state: PublishedState,
    now: datetime,
    grace: timedelta,
    k: int,
    close_through: datetime | None = None,
) -> PublishPlan:
    """Everything one run publishes, computed without writing (deterministic given inputs).

    ``close_through``: an operator's word that the input is complete up to that instant
    (never past ``now``): windows ending by then close even when the stream is quiet, e.g.
    to invoice a month whose last hours saw no later traffic. Events for them that still
    arrive become corrections, as any late event does.
    """
    max_hour = pc.max(facts.table["occurred_hour"]).as_py() if facts.table.num_rows else None
    mark = watermark(max_hour, now)
    if mark is not None and close_through is not None:
        mark = max(mark, min(close_through, now) + grace)
    if mark is None:
        empty = PublishReport(None, None, 0)
        return PublishPlan(empty, METERING_HOURLY.empty_table(), METERING_DAILY.empty_table(), ())
    rows = facts.table.drop_columns([FILE_INDEX])
    hourly_base, hourly_fix = metering.changes(
        metering.hourly_usage(rows, last_closed_hour(mark, grace)), state.hourly, "hour"
    )
    daily_base, daily_fix = metering.changes(
        metering.daily_usage(rows, last_closed_day(mark, grace)), state.daily, "date"
    )
    batches, held_back = _analytics_batches(facts, state, last_closed_day(mark, grace), k)
    parts = [mark.isoformat().encode()] + [
        _ipc_bytes(t) for t in (hourly_base, hourly_fix, daily_base, daily_fix)
    ]
    parts += [repr((b.day, b.number, b.covered_files, b.cells)).encode() for b in batches]
    run = f"{mark:%Y%m%dT%H}Z-{_digest(parts)}"
    hourly = _with_run(hourly_base, hourly_fix, METERING_HOURLY, run, mark, now)
    daily = _with_run(daily_base, daily_fix, METERING_DAILY, run, mark, now)
    tables = tuple((b, _batch_file(b, run, now)) for b in batches)
    anything = hourly.num_rows or daily.num_rows or tables
    report = PublishReport(
        run_id=run if anything else None,
        watermark=mark,
        facts=facts.table.num_rows,
        hourly_base=hourly_base.num_rows,
        hourly_corrections=hourly_fix.num_rows,
        daily_base=daily_base.num_rows,
        daily_corrections=daily_fix.num_rows,
        analytics_batches=len(tables),
        analytics_rows=sum(t.num_rows for _, t in tables),
        held_back_days=tuple(held_back),
    )
    return PublishPlan(report, hourly, daily, tables)


def _batch_file(batch: AnalyticsBatch, run: str, now: datetime) -> pa.Table:
    table = batch_table(batch.cells, batch.day, batch.number, run, now)
    metadata = dict(table.schema.metadata or {})
    metadata[_COVERED] = json.dumps(list(batch.covered_files)).encode()
    metadata[_DATE] = batch.day.isoformat().encode()
    metadata[_BATCH] = str(batch.number).encode()
    return table.replace_schema_metadata(metadata)


def write_plan(root: Root, plan: PublishPlan) -> None:
    """Write the plan's files. Metering first: an analytics batch file is its own commit."""
    run = plan.report.run_id
    if plan.hourly.num_rows:
        write_parquet_atomic(root, f"{METERING_HOURLY_DIR}/{run}.parquet", plan.hourly)
    if plan.daily.num_rows:
        write_parquet_atomic(root, f"{METERING_DAILY_DIR}/{run}.parquet", plan.daily)
    for batch, table in plan.batches:
        write_parquet_atomic(root, batch.relative_path, table)


def ensure_layout(root: Root) -> None:
    """Create the published folders with their schema files (so catalog views bind)."""
    ensure_schema_file(root, METERING_HOURLY_DIR, METERING_HOURLY)
    ensure_schema_file(root, METERING_DAILY_DIR, METERING_DAILY)
    ensure_schema_file(root, ANALYTICS_DIR, ANALYTICS)


def publish(
    data_root: str,
    now: datetime,
    grace: timedelta,
    k: int,
    close_through: datetime | None = None,
) -> PublishReport:
    """Publish every closed window of the committed facts under ``data_root`` (idempotent).

    ``close_through``: see :func:`plan_publish`.
    """
    root = resolve_root(data_root)
    ensure_layout(root)
    plan = plan_publish(load_facts(root), read_state(root), now, grace, k, close_through)
    write_plan(root, plan)
    return plan.report
