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

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from importlib.metadata import version

import msgspec

from aggregations.analytics import (
    Privacy,
    Refusal,
    batch_listing,
    unrecorded_refusal,
)
from aggregations.batch_index import read_index, write_index
from aggregations.dp import ledger
from aggregations.idle_stamp import (
    StampedWrites,
    commits_digest,
    inputs_digest,
    stamped_report,
    write_stamp,
)
from aggregations.manifest import (
    Manifest,
    add_interval,
    publish_lock,
    read_manifest,
    run_interrupted,
    write_manifest,
)
from aggregations.meters import Meter, default_meters
from aggregations.publish_plan import new_ranges, plan_run
from aggregations.publish_run import Run, Writes, work
from aggregations.schemas import (
    LEGACY_METERING_DIRS,
    METERING_DIR,
    PUBLISHED_DATASETS,
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
    resolve_root,
)
from aggregations.windows import last_closed_day
from streams.compaction.run import compact_published
from streams.storage import is_temporary

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
    # Markers the compaction after the run replaced (streams.compaction; ``compact=True``).
    compacted_markers: int = 0

    @property
    def rows_written(self) -> int:
        return self.metering_rows + self.analytics_rows


def ensure_layout(root: Root) -> None:
    """Create the published folders with their schema files (so catalog views bind)."""
    for dataset in PUBLISHED_DATASETS:
        ensure_schema_file(root, dataset.folder, dataset.schema)


def layout_complete(root: Root) -> bool:
    return all(exists(root, f"{d.folder}/_schema.parquet") for d in PUBLISHED_DATASETS)


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


def publish(
    data_root: str,
    now: datetime,
    grace: timedelta,
    privacy: Privacy,
    close_through: datetime | None = None,
    *,
    meters: Sequence[Meter] | None = None,
    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
    compact: bool = False,
) -> PublishReport:
    """Publish every closed window of the committed facts under ``data_root`` that is new
    since the last run (idempotent: a re-run with nothing new writes nothing and spends
    nothing).

    ``close_through``: an operator's word that the input is complete up to that instant
    (never past ``now``): windows ending by then close even when the stream is quiet, e.g.
    to invoice a month whose last hours saw no later traffic. Events for them that still
    arrive become corrections, as any late event does. ``meters``: the declared meters (the
    packaged ones by default). ``compact``: then compact the facts of the days this run
    closed (streams.compaction; under the same lock, so no publish reads files a compaction
    replaces; identifiable files are left to ``sieve compact``, which holds the keyring).
    """
    root = resolve_root(data_root)
    meters = tuple(meters) if meters is not None else default_meters()
    writes = StampedWrites(root)
    with publish_lock(root):
        refuse_legacy_metering(root)
        # Nothing new since an idle run: its report, from a few small reads (idle_stamp).
        commits = commits_digest(root)
        inputs = inputs_digest(meters, privacy.budget, grace, compact)
        complete = layout_complete(root)
        stamped = stamped_report(root, commits, inputs, now, grace, close_through, complete)
        if stamped is not None:
            return msgspec.json.decode(stamped, type=PublishReport)
        manifest = read_manifest(root)
        interrupted = run_interrupted(root)
        if interrupted:
            sweep_leftovers(root, manifest)
        if not complete:
            writes.begin()
            ensure_layout(root)
        ranges = committed_ranges(root)
        run = _start(root, manifest, ranges, meters, now, grace, privacy, close_through, writes)
        # Nothing to publish: the batch index stands for the listing (aggregations.batch_index).
        idle = run is None or run.plan.idle
        indexed = read_index(root) if idle and not interrupted else None
        listing = indexed or batch_listing(root)
        missing = listing.missing()
        for day, batch in missing:
            writes.begin()
            ledger.publish_recorded(root, ledger.entry_at(root, day, batch))
        restored = len(missing)
        if run is None:
            if indexed is None:
                writes.begin()
                write_index(root, listing, missing)
            writes.finish()
            compacted = _compact(root, manifest, privacy, grace) if compact else 0
            report = PublishReport(
                None, None, 0, analytics_restored=restored, compacted_markers=compacted
            )
            _stamp_if_idle(writes, compacted, commits, inputs, manifest, report)
            return report
        stopped = listing.unrecorded()
        waiting, unreleased, pending = work(run, stopped, memory_limit_mb)
        changed = _next_manifest(run, waiting, pending, unreleased)
        anything = run.metering_rows or run.batches or restored
        if changed != manifest:
            writes.begin()
            for name in manifest.retired:
                delete(root, name)
            write_manifest(root, changed)
        if indexed is None or run.batches:
            writes.begin()
            write_index(root, listing, [*missing, *((e.day, e.batch) for e in run.batches)])
        writes.finish()
        compacted = _compact(root, changed, privacy, grace) if compact else 0
        last_day = last_closed_day(run.plan.mark, grace) if run.plan.mark else None
        refused = [
            unrecorded_refusal(day, batch)
            for day, batch in sorted(stopped.items())
            if day not in run.plan.analytics_days and last_day is not None and day <= last_day
        ]
        report = PublishReport(
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
            compacted_markers=compacted,
        )
        _stamp_if_idle(writes, compacted, commits, inputs, changed, report)
        return report


def _stamp_if_idle(
    writes: Writes,
    compacted: int,
    commits: str,
    inputs: str,
    manifest: Manifest,
    report: PublishReport,
) -> None:
    """Stamp a run that wrote nothing and compacted nothing (aggregations.idle_stamp): the
    next run with the same inputs returns its report without reading the history."""
    if writes.started or compacted:
        return
    writes.begin()
    stamp = msgspec.json.encode(report)
    write_stamp(writes.root, commits, inputs, manifest.max_event_hour, manifest.watermark, stamp)
    writes.finish()


def _compact(root: Root, manifest: Manifest, privacy: Privacy, grace: timedelta) -> int:
    """Compact the facts of the days ``manifest`` closed (identifiable files stay as they
    are: publish holds no keyring); the markers replaced."""
    budget = privacy.budget
    report = compact_published(
        root.fs,
        root.path,
        watermark=manifest.watermark,
        held=frozenset(manifest.pending_days) | frozenset(manifest.waiting_days),
        cursor=manifest.cursor,
        grace=grace,
        late_batches=budget.late_batches,
        late_interval=budget.late_interval,
        encryption=None,
        sieve_version=version("sieve"),
    )
    return 0 if report is None else report.ranges_replaced


def _start(
    root: Root,
    manifest: Manifest,
    ranges: list[CommittedRange],
    meters: tuple[Meter, ...],
    now: datetime,
    grace: timedelta,
    privacy: Privacy,
    close_through: datetime | None,
    writes: Writes,
) -> Run | None:
    """Plan the run: read the footers of the new ranges' files, nothing else of the facts."""
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
    files_by_day: dict[date, list[str]] = {}
    # Every committed file by its day: what a run meters or releases reads from. A run with
    # nothing to do reads none (and does not walk them all: they grow with history).
    for committed in () if plan.idle else ranges:
        for name in committed.facts:
            files_by_day.setdefault(facts_day(name), []).append(name)
    return Run(
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


def _next_manifest(run: Run, waiting: set[date], pending: set[date], unreleased: int) -> Manifest:
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
            if is_temporary(name):
                delete(root, name)
