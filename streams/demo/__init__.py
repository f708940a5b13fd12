"""``sieve demo``: the whole pipeline, end to end, on a month of realistic traffic.

Broker -> topics -> keys -> workers (real ``sieve worker`` subprocesses, a core each) ->
generated traffic for the previous full UTC month -> every record committed -> publish ->
the month's invoice, analytics, counts, dashboard and catalog. :func:`run_demo` is the core
(tests call it with their own settings, broker and clock); :func:`demo_command` is the edge.

Contracts:

- Re-runs: the data root is *fresh on every run*. The demo leaves a marker file in the data
  root and, on the next run, empties a data root that carries it; it refuses a data root
  holding anything else (that may be someone's real data). The consumer group is moved to
  the end of the raw topic before the worker starts, so records of an earlier (perhaps
  interrupted) run are never counted again. Same seed, events, accounts and month: the same
  records and the same invoice.
- Cleanup: what the demo started (the workers, the broker) is stopped on success, on any
  error and on Ctrl-C or SIGTERM; a broker that was already running, one given with
  ``--bootstrap``, or one kept with ``--keep-broker`` is left running.
- Keys: a key file is made in the work folder (mode 0600) only when SIEVE_KEYRING_FILE is
  unset and none exists there; key material is never printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Final

import click
import duckdb
import pyarrow.fs as pafs
from kafka import TopicPartition
from kafka.errors import CommitFailedError
from kafka.structs import OffsetAndMetadata
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aggregations import dashboard
from aggregations.analytics import privacy_of
from aggregations.catalog import default_catalog_path, open_catalog
from aggregations.meters import load_meters
from aggregations.pricing import Invoice, load_plan, price_period, published_watermark
from aggregations.publish import PublishReport, publish
from aggregations.render import render, render_invoice, table_rows
from aggregations.reports import run_report
from aggregations.storage import resolve_root
from streams.broker.control import LocalBroker
from streams.demo.cpu import CpuLedger
from streams.demo.priority import at_lower_priority
from streams.demo.worker import (
    CLIENT_ID,
    DemoError,
    WorkerProcess,
    check_all,
    stop_all,
    wait_until_committed,
    wait_until_ready,
    worker_environment,
)
from streams.errors import SieveError
from streams.generate.commands import generate_to_topic
from streams.generate.model import TrafficConfig
from streams.generate.records import GroundTruth
from streams.generate.user_agents import load_user_agents
from streams.kafka_clients import kafka_consumer
from streams.privacy.keyring import Keyring, write_new_keyring
from streams.settings import Settings, reads_settings
from streams.topics import ensure_topics_from_settings

# The worker sets the demo's pace. What each process costs, in CPU seconds (the table the
# demo prints at its end; 2-core machine, load average 4-9 from other work, 2026-12-03):
# the worker 62-73, the traffic model 29-33 (here; ~15 us per record), the producer child
# 7.5-8.5, the broker 18-20 (37.6 before its JVM flags, streams/broker/control.py),
# publishing 7.4-8.2, the rest ~6: ~140 in all, so at least ~70 s on 2 cores. Generation runs
# ahead at a lower CPU priority (streams.demo.priority) so that the worker keeps a core.
DEFAULT_EVENTS: Final = 1_200_000
DEFAULT_ACCOUNTS: Final = 8
# A core for generation and the broker, the others for workers (sharing the raw topic's six
# partitions; all start before generation, so the group's one rebalance comes first). On
# this 2-core machine that is one worker: two took 83.6 CPU s where one took 62-66 (each
# pays its start, its per-batch and per-range costs), and the demo's floor is its CPU
# seconds over the cores.
DEFAULT_WORKERS: Final = max(1, min((os.cpu_count() or 1) - 1, 6))
# Traffic keeps flowing this long past the month's end (plus the grace period), as real
# traffic would: then event time alone moves the watermark past the month's last hour and
# day, closing them for the invoice whatever the clock says. Six hours makes an empty
# stretch (a quiet night with few accounts) unlikely; the demo checks, and says if it was.
TAIL: Final = timedelta(hours=6)
STALL_TIMEOUT_S: Final = 180.0
BROKER_START_TIMEOUT_S: Final = 90.0
MARKER_FILE: Final = ".sieve-demo.json"
WORKER_LOG: Final = "demo-worker.log"
FIRST_QUERY: Final = "SELECT * FROM analytics_daily LIMIT 5"  # what to type in the catalog
# (report, row limit) of `sieve analytics` shown for the month.
ANALYTICS: Final = (("daily-active-people", 31), ("top-countries", 10), ("devices", 20))

Report = tuple[str, list[str], list[list[Any]]]  # (title, columns, rows)


@dataclass(frozen=True)
class DemoOptions:
    """What ``sieve demo`` was asked for (the command line's options)."""

    events: int = DEFAULT_EVENTS
    accounts: int = DEFAULT_ACCOUNTS
    workers: int = DEFAULT_WORKERS
    seed: int = 1
    keep_broker: bool = False
    bootstrap: str | None = None  # use this broker instead of starting the local one
    stall_timeout_s: float = STALL_TIMEOUT_S


@dataclass(frozen=True)
class Month:
    """The invoiced month: ``name`` ("2026-10") and its UTC bounds [start, end)."""

    name: str
    start: datetime
    end: datetime

    @classmethod
    def before(cls, now: datetime) -> Month:
        """The previous full calendar UTC month: only a past month's invoice is complete."""
        this = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        start = (this - timedelta(days=1)).replace(day=1)
        return cls(f"{start:%Y-%m}", start, this)

    @property
    def days(self) -> tuple[date, date]:
        """First and last day (inclusive), as reports take them."""
        return self.start.date(), (self.end - timedelta(days=1)).date()

    def traffic_end(self, now: datetime, grace: timedelta) -> datetime:
        """Where generated traffic stops: past the month's end by ``grace`` + :data:`TAIL`,
        but never after ``now``'s hour (no events from the future)."""
        hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        return max(self.end, min(self.end + grace + TAIL, hour))


@dataclass(frozen=True)
class DemoResult:
    """What one run produced; everything the demo printed comes from these values."""

    month: Month
    truth: GroundTruth
    counts: Counter[str]  # raw, accepted, duplicates, facts, bytes_written (commit markers)
    dead_letters: Counter[str]  # by reason
    published: PublishReport
    invoice: Invoice
    dashboard: Path
    catalog: Path | None

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_letters.values())


# --- progress --------------------------------------------------------------------------------


# Names in the CPU table (streams.demo.cpu): what each step's own time and reaped child are.
OWN_OTHER: Final = "sieve demo: the other steps"
OWN_GENERATION: Final = "sieve demo: traffic model"
OWN_WAITING: Final = "sieve demo: waiting on commit markers"
OWN_PUBLISH: Final = "sieve demo: publishing"
BROKER_TOOLS: Final = "Maven and the storage format (first start only)"
PRODUCER: Final = "producer child (aiokafka, generation)"
WORKERS: Final = "workers"
BROKER: Final = "Kafka broker (JVM: GC and compiler threads too)"


class Timeline:
    """One status line per step: a spinner while it runs, then ✓ or ✗ with its duration
    and the CPU seconds all the demo's processes took meanwhile (:attr:`cpu`)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.cpu = CpuLedger()
        self.began = time.monotonic()
        self.current = "starting"
        self.detail = ""  # set by the step's body: shown after the title
        self.notes: list[str] = []  # set by the step's body: one indented line each

    @contextlib.contextmanager
    def step(
        self, title: str, *, spinner: bool = True, own: str = OWN_OTHER, reaps: str | None = None
    ) -> Iterator[Any]:
        """Run one step. Yields the spinner (``.update(text)``), or None for a step that
        draws its own progress bar (rich shows one live display at a time). This process's
        CPU time in the step is credited to ``own``, the child it reaps to ``reaps``."""
        self.current, self.detail, self.notes = title, "", []
        started, cpu_before = time.monotonic(), self.cpu.read()
        try:
            if spinner:
                with self.console.status(escape(title)) as status:
                    yield status
            else:
                yield None
        except BaseException:
            self.console.print(f"[red]✗[/] {escape(title)} [dim]({self._since(started)})")
            raise
        cpu = self.cpu.settle(cpu_before, own, reaps)
        detail = f": {escape(self.detail)}" if self.detail else ""
        since = f"{self._since(started)}, CPU {cpu:.1f} s"
        self.console.print(f"[green]✓[/] {escape(title)}{detail} [dim]({since})")
        for note in self.notes:
            self.console.print(f"    {note}", markup=False, highlight=False)

    def _since(self, started: float) -> str:
        now = time.monotonic()
        return f"{now - started:.1f} s, {now - self.began:.0f} s in all"


# --- data root, keys, consumer group ---------------------------------------------------------


def prepare_data_root(data_root: str, month: Month) -> str:
    """Make ``data_root`` an empty folder holding only the demo's marker; say what was done.

    Raises DemoError when it holds anything and no marker: it may be real data.
    """
    root = resolve_root(data_root)
    selector = pafs.FileSelector(root.path, allow_not_found=True)
    names = {info.base_name for info in root.fs.get_file_info(selector)}
    if names and MARKER_FILE not in names:
        raise DemoError(
            f"the data root {data_root} holds data the demo did not make; the demo starts"
            " from an empty data root on every run: point SIEVE_DATA_ROOT at a new folder"
        )
    if names:
        root.fs.delete_dir_contents(root.path)
    root.fs.create_dir(root.path, recursive=True)
    root.write_bytes(
        MARKER_FILE, json.dumps({"made_by": "sieve demo", "month": month.name}).encode()
    )
    return "emptied: it held the previous demo's data" if names else "new"


def ensure_keyring(settings: Settings) -> tuple[Path, bool]:
    """The key file the worker will use (checked now, not in the worker), and whether the
    demo made it just now."""
    path = settings.keyring_file or settings.work_dir / "keyring.json"
    if settings.keyring_file is not None or path.exists():
        Keyring.load(path)
        return path, False
    write_new_keyring(path)
    return path, True


def start_group_at_end(bootstrap_servers: str, group: str, topic: str) -> int:
    """Commit the end of every partition of ``topic`` as ``group``'s position; return how
    many earlier records the group thereby skips. The group must have no live member.

    A consumer rather than the admin client: it waits out the group coordinator's start on
    a fresh broker (the first group creates the offsets topic).
    """
    consumer = kafka_consumer(
        bootstrap_servers=bootstrap_servers,
        group_id=group,
        client_id=CLIENT_ID,
        enable_auto_commit=False,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = consumer.end_offsets(tps)
        starts = consumer.beginning_offsets(tps)
        before = {tp: max(consumer.committed(tp) or 0, starts[tp]) for tp in tps}
        try:
            consumer.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in tps})
        except CommitFailedError as busy:
            raise DemoError(
                f"cannot move consumer group {group} to the end of {topic}: is a worker of"
                " that group still running? Stop it or set SIEVE_CONSUMER_GROUP"
            ) from busy
    finally:
        consumer.close()
    return sum(ends[tp] - before[tp] for tp in tps)


# --- printing --------------------------------------------------------------------------------


def print_invoice(console: Console, bill: Invoice) -> None:
    """The invoice exactly as ``sieve pricing --period`` prints it (the same function)."""
    render_invoice(bill, "table", console)


def month_reports(connection: duckdb.DuckDBPyConnection, month: Month) -> list[Report]:
    """The :data:`ANALYTICS` reports over the month, titled as ``sieve analytics`` does."""
    first, last = month.days
    reports = []
    for name, limit in ANALYTICS:
        columns, rows = table_rows(run_report(connection, name, first, last, limit))
        reports.append((f"{name} {first} .. {last}", columns, rows))
    return reports


def counts_table(result: DemoResult) -> Table:
    """What the worker committed against what the generator planted, row by row."""
    truth, counts = result.truth, result.counts
    table = Table(title="Records (commit markers vs generator truth)")
    for column in ("counter", "committed", "generated", ""):
        table.add_column(column, justify="left" if column == "counter" else "right")

    def row(name: str, committed: int, expected: int) -> None:
        mark = "[green]✓" if committed == expected else "[red]✗"
        table.add_row(name, f"{committed:,}", f"{expected:,}", mark)

    row("raw", counts["raw"], truth.records)
    row("accepted", counts["accepted"], truth.by_kind["event"])
    row("duplicates", counts["duplicates"], truth.by_kind["duplicate"])
    row("dead-lettered", result.dead_lettered, truth.by_kind["malformed"])
    for reason in sorted(set(result.dead_letters) | set(truth.malformed_by_reason)):
        committed, expected = result.dead_letters[reason], truth.malformed_by_reason.get(reason, 0)
        if committed or expected:
            row(f"  {reason}", committed, expected)
    adds_up = counts["raw"] == counts["accepted"] + counts["duplicates"] + result.dead_lettered
    table.caption = f"raw = accepted + duplicates + dead-lettered: {'yes' if adds_up else 'NO'}"
    return table


def _published_notes(report: PublishReport, epsilon: float) -> list[str]:
    mark = report.watermark.isoformat() if report.watermark else "-"
    waiting = ", ".join(day.isoformat() for day in report.waiting_days)
    return [
        f"{report.facts:,} facts up to the watermark {mark}",
        f"metering (exact): {report.hourly_base:,} hourly and {report.daily_base:,} daily rows",
        f"analytics (differentially private, epsilon {epsilon:g} per person-day):"
        f" {report.analytics_batches} daily batches, {report.analytics_rows:,} cells"
        + (f"; late facts waiting: {waiting}" if waiting else ""),
    ]


# --- the steps -------------------------------------------------------------------------------


def _start_broker(settings: Settings, timeline: Timeline) -> tuple[str, LocalBroker | None]:
    """Start the local broker; return its address and the broker to stop at the end, or
    None when it was already running (someone else's: left alone)."""
    local = LocalBroker(settings.broker_dir, settings.broker_port, settings.broker_controller_port)
    with timeline.step("Starting the local Kafka broker", reaps=BROKER_TOOLS) as spinner:
        was_running = local.running_pid() is not None
        status = local.start(BROKER_START_TIMEOUT_S, progress=spinner.update)
        if not was_running and status.pid is not None:  # someone else's is not the demo's
            timeline.cpu.watch(BROKER, status.pid)
        timeline.detail = f"Kafka {status.version} at {status.bootstrap_servers}" + (
            " (already running: left running)" if was_running else ""
        )
    return local.bootstrap_servers, None if was_running else local


def _stop_broker(local: LocalBroker, timeline: Timeline) -> None:
    with timeline.step("Stopping the broker", reaps=BROKER):
        local.stop()


def _prepare(settings: Settings, month: Month, timeline: Timeline) -> Path:
    """Topics, the data root, the key file and the group's position; the key file's path."""
    with timeline.step("Preparing topics, data root, keys and consumer group"):
        created = ensure_topics_from_settings(settings)
        state = prepare_data_root(settings.data_root, month)
        keyring_file, made = ensure_keyring(settings)
        group, topic = settings.consumer_group, settings.raw_topic
        skipped = start_group_at_end(settings.bootstrap_servers, group, topic)
        topics = ", ".join(f"{n} ({'created' if c else 'exists'})" for n, c in created.items())
        position = f"skips {skipped:,} earlier records" if skipped else "nothing to skip"
        timeline.notes = [
            f"topics: {topics}",
            f"data root: {settings.data_root} ({state})",
            f"key file: {keyring_file} ({'made, mode 0600' if made else 'existing'})",
            f"consumer group: {group}, at the end of {topic} ({position})",
        ]
    return keyring_file


def _worker_log(settings: Settings, index: int) -> Path:
    name = WORKER_LOG if index == 0 else WORKER_LOG.replace(".log", f"-{index + 1}.log")
    return settings.work_dir / name


def _start_workers(
    settings: Settings,
    keyring_file: Path,
    count: int,
    timeline: Timeline,
    running: contextlib.ExitStack,
) -> list[WorkerProcess]:
    """Start the workers without waiting for them to join their group: generation runs
    while they start (imports and group join took 4-8 s), and checks all along that they
    are alive. Records sent before they join wait in the topic: the group's position was
    fixed before any started."""
    with timeline.step("Starting the workers" if count > 1 else "Starting a worker"):
        workers = []
        for index in range(count):
            env = worker_environment(settings, keyring_file, index)
            worker = WorkerProcess(env, _worker_log(settings, index))
            timeline.cpu.watch(WORKERS, worker.process.pid)
            workers.append(worker)
        running.callback(_stop_workers, workers, timeline)
        timeline.detail = ", ".join(f"pid {w.process.pid}" for w in workers)
        timeline.notes = [f"log: {worker.log_path}" for worker in workers]
    return workers


def _stop_workers(workers: list[WorkerProcess], timeline: Timeline) -> None:
    # Also when they have exited already (asked to while publishing): the step reaps them,
    # which credits their CPU to them, and reports how they exited.
    with timeline.step(
        "Stopping the workers" if len(workers) > 1 else "Stopping the worker", reaps=WORKERS
    ):
        codes = stop_all(workers)
        timeline.detail = ", ".join(
            "clean" if code == 0 else f"exit code {code} (log: {worker.log_path})"
            for worker, code in zip(workers, codes, strict=True)
        )


def _generate(
    settings: Settings,
    options: DemoOptions,
    month: Month,
    now: datetime,
    timeline: Timeline,
    workers: list[WorkerProcess],
) -> GroundTruth:
    end = month.traffic_end(now, settings.grace_period)
    config = TrafficConfig(
        count=options.events,
        start=month.start,
        end=end,
        user_agents=load_user_agents(None),
        seed=options.seed,
        accounts=options.accounts,
    )
    generating = f"Generating {options.events:,} records"
    with timeline.step(generating, spinner=False, own=OWN_GENERATION, reaps=PRODUCER):
        report = at_lower_priority(
            lambda: generate_to_topic(
                config,
                settings.bootstrap_servers,
                settings.raw_topic,
                console=timeline.console,
                check=lambda: check_all(workers, timeline.console, "the traffic was generated"),
            )
        )
        timeline.detail = f"{report.records_per_s:,.0f}/s into {settings.raw_topic}"
        timeline.notes = [
            f"event time {month.start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC (past the"
            " month's end, as real traffic: its events close the month's last windows)"
        ]
    return report.truth


def _publish(settings: Settings, month: Month, now: datetime, timeline: Timeline) -> PublishReport:
    with timeline.step("Publishing metering and differentially private analytics", own=OWN_PUBLISH):
        published = publish(
            settings.data_root,
            now=now,
            grace=settings.grace_period,
            privacy=privacy_of(settings),
            meters=load_meters(settings.meters_file),
            memory_limit_mb=settings.publish_memory_mb,
        )
        timeline.notes = _published_notes(published, settings.dp_epsilon)
    if published.watermark is None or published.watermark < month.end + settings.grace_period:
        timeline.console.print(
            f"[yellow]note:[/] {month.name} is not closed (no events late enough after its"
            " end): the invoice covers its closed days only"
        )
    return published


def _price_and_analyse(
    settings: Settings, month: Month, timeline: Timeline
) -> tuple[Invoice, list[Report]]:
    with timeline.step(f"Pricing and analytics for {month.name}"):
        # Locked down as `sieve pricing` (billing) and `sieve analytics` (analyst) open them.
        billing = open_catalog(settings.data_root, role="billing", lock_down=True)
        analyst = open_catalog(settings.data_root, role="analyst", lock_down=True)
        try:
            plan = load_plan(settings.price_plan_file, load_meters(settings.meters_file))
            # A draft only when the month did not close (the note above says so): the same
            # invoice, marked the same way, as `sieve pricing --draft`.
            bill = price_period(
                billing,
                plan,
                month.name,
                watermark=published_watermark(settings.data_root),
                grace=settings.grace_period,
                draft=True,
            )
            reports = month_reports(analyst, month)
        finally:
            billing.close()
            analyst.close()
        timeline.detail = f"{len(bill.totals)} accounts invoiced"
    return bill, reports


def _write_outputs(
    settings: Settings, now: datetime, timeline: Timeline
) -> tuple[Path, Path | None]:
    """The dashboard page (in the data root when it is a local folder, else in the work
    folder) and the analysts' DuckDB catalog file (local data roots only)."""
    with timeline.step("Writing the dashboard and the analysts' catalog"):
        local = resolve_root(settings.data_root).is_local
        page = (
            dashboard.default_output(settings.data_root)
            if local
            else settings.work_dir / dashboard.PAGE_FILES["analyst"]
        )
        html = dashboard.build_dashboard(
            settings.data_root, epsilon=settings.dp_epsilon, generated_at=now
        )
        dashboard.write_page(page, html)
        if not local:
            return page, None
        catalog = default_catalog_path(settings.data_root, "analyst")
        open_catalog(settings.data_root, catalog, role="analyst").close()
    return page, catalog


def _absolute(settings: Settings, bootstrap: str) -> Settings:
    """``settings`` on ``bootstrap``, with absolute local paths: the printed paths work from
    any folder, and the worker resolves them as the demo does."""
    root = resolve_root(settings.data_root)
    data_root = root.path if root.is_local else settings.data_root
    work_dir = settings.work_dir.absolute()
    update = {"bootstrap_servers": bootstrap, "data_root": data_root, "work_dir": work_dir}
    return settings.model_copy(update=update)


def run_demo(
    settings: Settings, options: DemoOptions, *, now: datetime, console: Console
) -> DemoResult:
    """Run the whole demo (see the module docstring) and print what it made. ``now`` picks
    the invoice month and stamps the published rows. Raises DemoError, or the SieveError
    of the step that failed."""
    timeline = Timeline(console)
    month = Month.before(now)
    console.print(
        f"[bold]Sieve demo[/]: {options.events:,} records, {options.accounts} accounts, seed"
        f" {options.seed}, invoice month {month.name}"
    )
    try:
        with contextlib.ExitStack() as running:  # leaving it stops the workers, then the broker
            bootstrap = options.bootstrap
            if bootstrap is None:
                bootstrap, started = _start_broker(settings, timeline)
                if started is not None and not options.keep_broker:
                    running.callback(_stop_broker, started, timeline)
            settings = _absolute(settings, bootstrap)
            keyring_file = _prepare(settings, month, timeline)
            workers = _start_workers(settings, keyring_file, options.workers, timeline, running)
            truth = _generate(settings, options, month, now, timeline, workers)
            processing = "Processing: every record committed"
            with timeline.step(processing, spinner=False, own=OWN_WAITING):
                wait_until_ready(
                    settings.bootstrap_servers, settings.consumer_group, workers, console
                )
                counts, dead = wait_until_committed(
                    settings, options.events, workers, console, options.stall_timeout_s
                )
                timeline.detail = f"{counts['raw']:,} records, {counts['accepted']:,} accepted"
            # Everything is committed: the workers shut down (2-3 s each, mostly waiting)
            # while publishing reads the committed files; the broker stays up until they
            # have exited (they commit their last offsets on the way out).
            for worker in workers:
                worker.terminate()
            published = _publish(settings, month, now, timeline)
            bill, reports = _price_and_analyse(settings, month, timeline)
            page, catalog = _write_outputs(settings, now, timeline)
    except (SieveError, KeyboardInterrupt):
        raise
    except Exception as error:  # one clear line naming the step; the cause stays chained
        raise DemoError(f"{timeline.current} failed: {type(error).__name__}: {error}") from error
    result = DemoResult(month, truth, counts, dead, published, bill, page, catalog)
    _print_result(console, result, settings, reports)
    console.print(timeline.cpu.table(os.cpu_count() or 1))
    console.print(f"[green]Demo finished in {time.monotonic() - timeline.began:.0f} s")
    return result


def _print_result(
    console: Console, result: DemoResult, settings: Settings, reports: list[Report]
) -> None:
    print_invoice(console, result.invoice)
    for title, columns, rows in reports:
        render(columns, rows, "table", console, title=title)
    console.print(counts_table(result))
    console.print(f"[bold]Dashboard:[/] {escape(str(result.dashboard))}  (open it in a browser)")
    if result.catalog is not None:
        catalog = escape(str(result.catalog))
        console.print(f"[bold]Catalog:[/] duckdb {catalog}  then  {FIRST_QUERY}")
        console.print(f'    (no duckdb shell? sieve sql "{FIRST_QUERY}" reads the same views)')
    draft = " --draft" if result.invoice.status == "draft" else ""
    again = (
        f"SIEVE_DATA_ROOT={settings.data_root} sieve pricing --period {result.month.name}{draft}"
    )
    console.print(f"[bold]Again:[/] {escape(again)}  (or sieve analytics, sql, dashboard)")


# --- the command -----------------------------------------------------------------------------


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (a CI timeout, `kill`) takes the Ctrl-C path: what the demo started is stopped.
    raise KeyboardInterrupt


def _console() -> Console:
    # Piped output is not cut to 80 columns (as `sieve pricing`): tables keep their values.
    console = Console()
    return console if console.is_terminal else Console(width=100_000)


# Every setting: the demo hands each to the worker it starts.
@reads_settings(*Settings.model_fields)
@click.command("demo")
@click.option(
    "--events",
    type=click.IntRange(min=1),
    default=DEFAULT_EVENTS,
    show_default=True,
    help="Records to generate (duplicates, late and malformed ones included).",
)
@click.option(
    "--accounts",
    type=click.IntRange(min=1),
    default=DEFAULT_ACCOUNTS,
    show_default=True,
    help="Customer accounts in the traffic.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=DEFAULT_WORKERS,
    show_default=True,
    help="`sieve worker` processes sharing the raw topic's partitions (default: cores - 1).",
)
@click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="Same seed, events, accounts and month: the same records and invoice.",
)
@click.option("--keep-broker", is_flag=True, help="Leave the local broker running afterwards.")
@click.option(
    "--bootstrap",
    metavar="HOST:PORT",
    help="Use this Kafka instead of starting the local broker (it is left running).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=STALL_TIMEOUT_S,
    show_default=True,
    help="Give up when the worker commits nothing this many seconds.",
)
def demo_command(
    events: int,
    accounts: int,
    workers: int,
    seed: int,
    keep_broker: bool,
    bootstrap: str | None,
    timeout: float,
) -> None:
    """Run the whole pipeline end to end: the local broker, topics, keys, workers, a month
    of generated traffic for a few accounts, publishing; then last month's invoice,
    analytics, the record counts, the dashboard and the analysts' catalog.

    Every run starts from an empty SIEVE_DATA_ROOT: the demo replaces the data of its own
    earlier run and refuses a data root it did not make. SIEVE_WORK_DIR holds the broker,
    the key file the demo makes (unless SIEVE_KEYRING_FILE is set) and the workers' logs.
    """
    options = DemoOptions(
        events=events,
        accounts=accounts,
        workers=workers,
        seed=seed,
        keep_broker=keep_broker,
        bootstrap=bootstrap,
        stall_timeout_s=timeout,
    )
    now = datetime.now(UTC)  # the only clock read: it picks the month and stamps the rows
    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        run_demo(Settings(), options, now=now, console=_console())
    finally:
        signal.signal(signal.SIGTERM, previous)
