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
- Analytics: differentially private batches per day on the day's schedule (see
  aggregations/analytics.py), each recording the facts files it covers, so a fact is in at
  most one batch. A batch is recorded in the privacy ledger before it is published: a
  re-run after a crash, or after ``published/analytics`` was deleted, restores the recorded
  release and spends nothing.
- Every file is written to a temporary name and renamed. Metering files are named by the
  run id, a digest of what the run publishes (never of the noise): a re-run with no new
  facts computes nothing to publish and writes nothing; a re-run after a crash writes only
  what is missing.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from aggregations import metering
from aggregations.analytics import (
    AnalyticsBatch,
    Privacy,
    Refusal,
    published_batches,
    release,
    schedule,
)
from aggregations.dp import ledger
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
    load_facts,
    read_published,
    resolve_root,
    write_parquet_atomic,
)
from aggregations.windows import last_closed_day, last_closed_hour, watermark
from schemas.arrow import conform


@dataclass(frozen=True)
class PublishedState:
    """What earlier runs published: metering rows, the privacy ledger's entries per day and
    the analytics batches present under ``published/analytics`` per day."""

    hourly: pa.Table
    daily: pa.Table
    ledger: dict[date, list[ledger.Entry]]
    analytics: dict[date, set[int]]


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
    # Per released batch: (day, batch, the day's epsilon spent once it counted).
    analytics_spent: tuple[tuple[date, int, float], ...] = field(default_factory=tuple)
    # Recorded batches whose published copy was missing, written again from the ledger.
    analytics_restored: int = 0
    # Batches the accountant refused (never published), with the reason.
    analytics_refused: tuple[Refusal, ...] = field(default_factory=tuple)
    # Closed days with facts waiting for their next late batch (not dropped).
    waiting_days: tuple[date, ...] = field(default_factory=tuple)
    # Facts committed after the last batch of their day: counted in metering, never in
    # analytics (the day's budget is spent).
    unreleased_facts: int = 0

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
    batches: tuple[AnalyticsBatch, ...]
    restore: tuple[ledger.Entry, ...] = ()


def read_state(root: Root) -> PublishedState:
    return PublishedState(
        read_published(root, METERING_HOURLY_DIR, METERING_HOURLY),
        read_published(root, METERING_DAILY_DIR, METERING_DAILY),
        ledger.read_ledger(root),
        published_batches(root),
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


def plan_publish(
    facts: Facts,
    state: PublishedState,
    now: datetime,
    grace: timedelta,
    privacy: Privacy,
    close_through: datetime | None = None,
) -> PublishPlan:
    """Everything one run publishes, computed without writing. Deterministic given the
    inputs except the analytics' noise (which the ledger then keeps).

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
    plan = schedule(
        facts,
        state.ledger,
        state.analytics,
        mark,
        grace,
        last_closed_day(mark, grace),
        privacy.budget,
    )
    parts = [mark.isoformat().encode()] + [
        _ipc_bytes(t) for t in (hourly_base, hourly_fix, daily_base, daily_fix)
    ]
    # What the batches cover, never their noise: the run id is the same on a re-run.
    parts += [repr((b.day, b.slots, b.covered_files)).encode() for b in plan.due]
    run = f"{mark:%Y%m%dT%H}Z-{_digest(parts)}"
    hourly = _with_run(hourly_base, hourly_fix, METERING_HOURLY, run, mark, now)
    daily = _with_run(daily_base, daily_fix, METERING_DAILY, run, mark, now)
    released = release(facts, state.ledger, plan.due, privacy, run, now)
    tables = released.batches
    anything = hourly.num_rows or daily.num_rows or tables or plan.restore
    report = PublishReport(
        run_id=run if anything else None,
        watermark=mark,
        facts=facts.table.num_rows,
        hourly_base=hourly_base.num_rows,
        hourly_corrections=hourly_fix.num_rows,
        daily_base=daily_base.num_rows,
        daily_corrections=daily_fix.num_rows,
        analytics_batches=len(tables),
        analytics_rows=sum(b.table.num_rows for b in tables),
        analytics_spent=tuple((b.entry.day, b.entry.batch, b.entry.epsilon_after) for b in tables),
        analytics_restored=len(plan.restore),
        analytics_refused=plan.refused + released.refused,
        waiting_days=plan.waiting_days,
        unreleased_facts=plan.unreleased_facts,
    )
    return PublishPlan(report, hourly, daily, tables, plan.restore)


def write_plan(root: Root, plan: PublishPlan) -> None:
    """Write the plan's files: the analytics' ledger entries first (the budget is spent from
    then on, and their noise is never drawn again), metering, then the published copies."""
    for batch in plan.batches:
        ledger.record(root, batch.entry, batch.table)
    run = plan.report.run_id
    if plan.hourly.num_rows:
        write_parquet_atomic(root, f"{METERING_HOURLY_DIR}/{run}.parquet", plan.hourly)
    if plan.daily.num_rows:
        write_parquet_atomic(root, f"{METERING_DAILY_DIR}/{run}.parquet", plan.daily)
    for entry in (*plan.restore, *(batch.entry for batch in plan.batches)):
        ledger.publish_recorded(root, entry)


def ensure_layout(root: Root) -> None:
    """Create the published folders with their schema files (so catalog views bind)."""
    ensure_schema_file(root, METERING_HOURLY_DIR, METERING_HOURLY)
    ensure_schema_file(root, METERING_DAILY_DIR, METERING_DAILY)
    ensure_schema_file(root, ANALYTICS_DIR, ANALYTICS)


def publish(
    data_root: str,
    now: datetime,
    grace: timedelta,
    privacy: Privacy,
    close_through: datetime | None = None,
) -> PublishReport:
    """Publish every closed window of the committed facts under ``data_root`` (idempotent:
    a re-run with nothing new writes nothing and spends nothing).

    ``close_through``: see :func:`plan_publish`.
    """
    root = resolve_root(data_root)
    ensure_layout(root)
    plan = plan_publish(load_facts(root), read_state(root), now, grace, privacy, close_through)
    write_plan(root, plan)
    return plan.report
