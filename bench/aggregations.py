"""Aggregations: what a publish costs as history grows (issue 10), and pricing from metering
against the same answer from the facts.

    python -m bench.aggregations [--accounts 1000] [--days 90 --days 365] [--rate 1.0]

For each ``--days`` N (all in one run, so the ratios compare like with like), in a data root
of its own (facts synthesized by :mod:`bench.agg_synth`, N days ending 2026-11-01 plus the
first two hours of the next day, which close the last one; ``--ranges-per-day`` ranges a day
and partition, so that compaction has ranges to merge):

1. **first publish** of the whole history;
2. **compaction**: publish again at the same clock as ``sieve publish`` does, compacting the
   closed days' ranges and markers after it (streams.compaction), timed on its own;
3. **nothing new**: publish again at the same clock, compaction step included, the median of
   5 runs (target: <= 1 % of the first);
4. **one more day**: the next day's facts are committed, publish and compact (target: <= 3 %
   of the first); the median of 3 successive days;

each in a process of its own (:mod:`bench.publish_child`) so that its **peak RSS** is its own
(target: <= 2 GB), with its time split into metering, DP bounding and DP noise. The targets
on cost flat in history: those figures at the smallest and the largest N within 25 % of each
other. The published metering is checked complete (every account-hour and account-day).

5. **pricing**, after compaction: for every whole month of the largest N, the usage an
   invoice needs from ``metering_daily`` (``pricing.period_usage``, what ``sieve pricing``
   reads) against the same rows computed from the month's fact files in DuckDB with the
   meters' own SQL; both must be equal, and so must ``pricing.invoice`` of each. Pricing a
   month is reading its usage plus ``pricing.invoice`` of it (target: <= 100 ms a month);
   ``pricing.invoice_line_by_line`` (the Decimal reference it replaced) is timed in the same
   rounds for the ratio, and must give the same invoice. Median of ``--repeat`` rounds.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import click
import duckdb
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from aggregations.catalog import open_catalog
from aggregations.engine import connect
from aggregations.meters import Meter, default_meters
from aggregations.pricing import (
    Invoice,
    PricePlan,
    invoice,
    invoice_line_by_line,
    load_plan,
    period_bounds,
)
from aggregations.pricing import period_usage as catalog_period_usage
from aggregations.storage import facts_day, resolve_root
from bench.agg_synth import END, NEXT_HOURS, Writer, make_population
from schemas.commits import committed_files

METERS: Final = default_meters()
T = TypeVar("T")


def _timed(call: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


# --- publishing --------------------------------------------------------------------------------


def publish_in_child(
    data_root: Path, now: datetime, memory_mb: int, compact: bool = False
) -> dict[str, Any]:
    """:func:`aggregations.publish.publish` in a fresh process (bench.publish_child)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.publish_child",
            str(data_root),
            now.isoformat(),
            str(memory_mb),
            "1" if compact else "0",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    if done.returncode != 0:
        # A negative code is a signal (e.g. -9: the kernel's OOM killer, with no stderr).
        raise RuntimeError(f"publish failed (exit code {done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@dataclass
class History:
    """One data root: N days of facts and what publishing them cost."""

    days: int
    facts: int
    seconds_synthesized: float
    first: dict[str, Any] = field(default_factory=dict)
    compaction: dict[str, Any] = field(default_factory=dict)
    markers_before: int = 0
    markers_after: int = 0
    nothing_new: dict[str, Any] = field(default_factory=dict)
    one_more_day: dict[str, Any] = field(default_factory=dict)


class DifferentAnswersError(AssertionError):
    """Metering and the facts disagree: the benchmark's numbers would mean nothing."""


def check_complete(data_root: Path, accounts: int, days: int) -> None:
    """Every account-hour and account-day of the period is published (all have usage)."""
    catalog = open_catalog(str(data_root), role="billing")
    try:
        ((hours,),) = catalog.execute(
            "SELECT count(*) FROM metering_hourly WHERE hour < ?", [END]
        ).fetchall()
        ((account_days,),) = catalog.execute(
            "SELECT count(*) FROM metering_daily WHERE date < ?", [END.date()]
        ).fetchall()
    finally:
        catalog.close()
    if (hours, account_days) != (accounts * days * 24, accounts * days):
        raise DifferentAnswersError(
            f"published {hours:,} account-hours and {account_days:,} account-days of the"
            f" period, expected {accounts * days * 24:,} and {accounts * days:,}"
        )


def run_history(
    workdir: Path,
    accounts: int,
    days: int,
    rate: float,
    seed: int,
    memory_mb: int,
    console: Console,
    ranges_per_day: int = 1,
) -> History:
    data_root = workdir / f"days-{days}"
    writer = Writer(data_root, make_population(accounts, seed), rate, seed)
    first_day = END - timedelta(days=days)

    def synthesize() -> int:
        # ``ranges_per_day`` ranges a day and partition, as a worker rolling its files would
        # commit them (fewer than a worker's): compaction has a closed day's ranges to merge.
        # With one a day, every folder would hold one file, which compaction carries as it
        # is: the bench would time no merge at all.
        written = sum(
            writer.write(
                first_day + timedelta(days=d), first_day + timedelta(days=d + 1), ranges_per_day
            )
            for d in range(days)
        )
        return written + writer.write(END, END + timedelta(hours=NEXT_HOURS))

    facts, seconds = _timed(synthesize)
    history = History(days, facts, seconds)
    console.print(
        f"[bold]{days} days[/]: synthesized {facts:,} facts in {writer.files:,} committed files,"
        f" {seconds:.1f}s"
    )
    now = END + timedelta(days=1)
    history.first = publish_in_child(data_root, now, memory_mb)
    check_complete(data_root, accounts, days)
    history.markers_before = _markers(data_root)
    history.compaction = publish_in_child(data_root, now, memory_mb, compact=True)
    history.markers_after = _markers(data_root)
    # Tens of milliseconds on a shared machine: one sample is mostly noise, the median of a
    # few is the figure (each run in its own process, as a scheduled publish would be).
    idle_runs = [
        publish_in_child(data_root, now, memory_mb, compact=True) for _ in range(NOTHING_NEW_RUNS)
    ]
    if any(run["rows_written"] for run in idle_runs):
        raise DifferentAnswersError("a publish with nothing new wrote rows")
    history.nothing_new = sorted(idle_runs, key=lambda run: run["seconds"])[len(idle_runs) // 2]
    # About a second, of which a few tenths move from run to run: the median of a few days,
    # each committed and published in turn as a daily schedule would.
    day_runs = []
    for later in range(ONE_MORE_DAY_RUNS):
        next_day = END + timedelta(hours=NEXT_HOURS, days=later)
        writer.write(next_day, next_day + timedelta(days=1), ranges_per_day)
        day_runs.append(
            publish_in_child(data_root, now + timedelta(days=later + 1), memory_mb, compact=True)
        )
    history.one_more_day = sorted(day_runs, key=lambda run: run["seconds"])[len(day_runs) // 2]
    check_complete(data_root, accounts, days)
    return history


NOTHING_NEW_RUNS = 5
ONE_MORE_DAY_RUNS = 3
RANGES_PER_DAY = 4


def _markers(data_root: Path) -> int:
    return sum(1 for _ in (data_root / "_commits").rglob("*.json"))


# --- pricing -----------------------------------------------------------------------------------


def _facts_usage_sql(meters: Sequence[Meter]) -> str:
    """The meters applied straight to the fact files, per UTC day and account."""
    values = ", ".join(f"CAST({m.value_sql()} AS {m.sql_type}) AS {m.name}" for m in meters)
    return f"""
        SELECT CAST(occurred_hour AS DATE) AS date, account_id, {values}
        FROM read_parquet(?, hive_partitioning = false)
        WHERE occurred_hour >= ? AND occurred_hour < ?
        GROUP BY ALL ORDER BY account_id, date
    """


def facts_by_day(data_root: Path) -> dict[date, list[str]]:
    """The committed fact files (commit markers, never a glob) by their date."""
    root = resolve_root(str(data_root))
    files: dict[date, list[str]] = {}
    for relative in committed_files(root.fs, root.path, "facts"):
        files.setdefault(facts_day(relative), []).append(root.join(relative))
    return files


def facts_period_usage(
    connection: duckdb.DuckDBPyConnection, files: dict[date, list[str]], period: str
) -> pa.Table:
    start, end = period_bounds(period)
    paths = [path for day, names in sorted(files.items()) if start <= day < end for path in names]
    since = datetime(start.year, start.month, start.day, tzinfo=UTC)
    until = datetime(end.year, end.month, end.day, tzinfo=UTC)
    return connection.sql(_facts_usage_sql(METERS), params=[paths, since, until]).to_arrow_table()


def months(first_day: date, last_day: date) -> list[str]:
    """The whole months inside [first_day, last_day)."""
    periods: list[str] = []
    year, month = first_day.year, first_day.month
    while True:
        period = f"{year:04d}-{month:02d}"
        start, end = period_bounds(period)
        if end > last_day:
            return periods
        if start >= first_day:
            periods.append(period)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


@dataclass
class PricingRun:
    periods: int
    usage_rows: int
    metering_seconds: list[float] = field(default_factory=list)  # per repeat, all periods
    facts_seconds: list[float] = field(default_factory=list)
    invoice_seconds: list[float] = field(default_factory=list)  # per repeat, all periods
    # The same invoices priced line by line in Decimal (the reference), in the same rounds.
    reference_seconds: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.facts_seconds) / statistics.median(self.metering_seconds)


def compare_pricing(
    data_root: Path, periods: Sequence[str], plan: PricePlan, repeat: int
) -> PricingRun:
    """Time both ways of getting each period's usage; check they and the invoices agree."""
    catalog = open_catalog(str(data_root), role="billing")
    direct = connect()
    files = facts_by_day(data_root)
    names = [m.name for m in METERS]
    run = PricingRun(len(periods), 0)
    try:
        for round_number in range(repeat):
            metering_total = facts_total = invoice_total = reference_total = 0.0
            for period in periods:
                # As `sieve pricing` reads it (pricing.price_period): in no particular order.
                usage = partial(catalog_period_usage, catalog, period, names, ordered=False)
                published, seconds = _timed(usage)
                metering_total += seconds
                computed, seconds = _timed(partial(facts_period_usage, direct, files, period))
                facts_total += seconds
                _, seconds = _timed(partial(invoice, published, plan, period))
                invoice_total += seconds
                _, seconds = _timed(partial(invoice_line_by_line, published, plan, period))
                reference_total += seconds
                if round_number == 0:
                    _check_same_answer(published, computed, plan, period)
                    run.usage_rows += published.num_rows
            run.metering_seconds.append(metering_total)
            run.invoice_seconds.append(invoice_total)
            run.reference_seconds.append(reference_total)
            run.facts_seconds.append(facts_total)
    finally:
        catalog.close()
        direct.close()
    return run


def _check_same_answer(
    published: pa.Table, computed: pa.Table, plan: PricePlan, period: str
) -> None:
    if published.num_rows == 0:
        raise DifferentAnswersError(f"{period}: no metering_daily rows (nothing published?)")
    columns = ["date", "account_id", *(m.name for m in METERS)]
    order = [("account_id", "ascending"), ("date", "ascending")]
    published, computed = published.sort_by(order), computed.sort_by(order)
    if published.select(columns).to_pylist() != computed.select(columns).to_pylist():
        raise DifferentAnswersError(f"{period}: metering_daily and the facts give other usage")
    ours: Invoice = invoice(published, plan, period)
    if ours != invoice(computed, plan, period):
        raise DifferentAnswersError(f"{period}: the invoices differ")
    if ours != invoice_line_by_line(published, plan, period):
        raise DifferentAnswersError(f"{period}: column-wise and line-by-line invoices differ")


# --- the command -------------------------------------------------------------------------------


def _mb(value: float) -> str:
    return f"{value / 1e6:,.0f} MB"


def _figures(history: History) -> dict[str, tuple[float, str]]:
    first, none, more = history.first, history.nothing_new, history.one_more_day
    return {
        "first publish": (first["seconds"], f"{first['seconds']:.2f}s"),
        "nothing new": (none["seconds"], f"{none['seconds']:.3f}s"),
        "one more day": (more["seconds"], f"{more['seconds']:.3f}s"),
        "nothing new / first": (
            none["seconds"] / first["seconds"],
            f"{100 * none['seconds'] / first['seconds']:.2f} %",
        ),
        "one more day / first": (
            more["seconds"] / first["seconds"],
            f"{100 * more['seconds'] / first['seconds']:.2f} %",
        ),
        "compaction (once)": (
            history.compaction["seconds"],
            f"{history.compaction['seconds']:.2f}s",
        ),
        "commit markers": (
            history.markers_after,
            f"{history.markers_before:,} -> {history.markers_after:,}",
        ),
        "peak RSS, first publish": (first["peak_rss"], _mb(first["peak_rss"])),
        "peak RSS, one more day": (more["peak_rss"], _mb(more["peak_rss"])),
    }


TARGETS: Final = {
    "first publish": "<= 20 s at 365 days (guide)",
    "nothing new / first": "<= 1 %",
    "one more day / first": "<= 3 %",
    "peak RSS, first publish": "<= 2 GB",
    "commit markers": "one per partition and newest range",
}
FLAT: Final = ("nothing new", "one more day", "peak RSS, first publish", "peak RSS, one more day")


def print_histories(histories: list[History], console: Console) -> None:
    table = Table(title="publish as history grows (each publish in its own process)")
    table.add_column("figure")
    for history in histories:
        table.add_column(f"{history.days} days ({history.facts:,} facts)", justify="right")
    if len(histories) > 1:
        table.add_column(f"{histories[-1].days} / {histories[0].days} days", justify="right")
    table.add_column("target")
    figures = [_figures(h) for h in histories]
    for name in figures[0]:
        row = [name, *(f[name][1] for f in figures)]
        if len(histories) > 1:
            low, high = figures[0][name][0], figures[-1][name][0]
            row.append(f"{high / low:.2f}x" if low else "-")
        target = TARGETS.get(name, "")
        if name in FLAT and len(histories) > 1:
            target = (target + "; " if target else "") + "within 25 % (flat)"
        table.add_row(*row, target)
    console.print(table)
    for history in histories:
        first = history.first
        split = ", ".join(f"{k} {v:.2f}s" for k, v in first["stages"].items())
        console.print(
            f"{history.days} days, first publish: {first['facts']:,} facts,"
            f" {first['analytics_batches']} DP batches, {first['metering_rows']:,} metering rows;"
            f" {split}; one more day read {history.one_more_day['facts_read']:,} facts"
            f" ({history.one_more_day['metered_days']} days metered again)"
        )


@click.command()
@click.option("--accounts", default=1_000, show_default=True, help="Accounts.")
@click.option(
    "--days",
    "day_counts",
    multiple=True,
    type=click.IntRange(31),
    default=(90, 365),
    show_default=True,
    help="Days of history, ending 2026-11-01 (repeat the option: each is a data root).",
)
@click.option(
    "--rate",
    default=1.0,
    show_default=True,
    help="Mean events per account-hour on top of the one request every account-hour has.",
)
@click.option("--repeat", default=3, show_default=True, help="Timed rounds of the pricing part.")
@click.option("--memory-mb", default=1024, show_default=True, help="SIEVE_PUBLISH_MEMORY_MB.")
@click.option("--seed", default=1, show_default=True)
@click.option(
    "--ranges-per-day",
    default=RANGES_PER_DAY,
    show_default=True,
    type=click.IntRange(1, 24),
    help="Committed ranges per day and partition (a worker commits many more).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the data roots here (default: a temporary folder, removed at the end).",
)
def main(
    accounts: int,
    day_counts: tuple[int, ...],
    rate: float,
    repeat: int,
    memory_mb: int,
    seed: int,
    ranges_per_day: int,
    workdir: Path | None,
) -> None:
    """What publish costs as history grows, and pricing from metering vs from the facts."""
    console = Console(soft_wrap=True)
    console.print(
        f"[bold]bench.aggregations[/]: {accounts:,} accounts x {', '.join(map(str, day_counts))}"
        f" days, rate {rate}, seed {seed}, {ranges_per_day} ranges a day;"
        f" {platform.python_implementation()} {platform.python_version()},"
        f" {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f},"
        f" DuckDB {duckdb.__version__}, pyarrow {pa.__version__}"
    )
    with tempfile.TemporaryDirectory(prefix="sieve-bench-agg-") as temporary:
        base = workdir or Path(temporary)
        if workdir is not None and any(workdir.glob("days-*")):
            raise click.UsageError(f"{workdir} already holds data roots")
        histories = [
            run_history(base, accounts, days, rate, seed, memory_mb, console, ranges_per_day)
            for days in sorted(set(day_counts))
        ]
        print_histories(histories, console)

        largest = histories[-1]
        first_day = (END - timedelta(days=largest.days)).date()
        periods = months(first_day, END.date())
        if not periods:
            return
        data_root = base / f"days-{largest.days}"
        pricing = compare_pricing(data_root, periods, load_plan(None), repeat)
        metering_s = statistics.median(pricing.metering_seconds)
        facts_s = statistics.median(pricing.facts_seconds)
        invoice_s = statistics.median(pricing.invoice_seconds)
        reference_s = statistics.median(pricing.reference_seconds)
        priced_s = statistics.median(
            m + i for m, i in zip(pricing.metering_seconds, pricing.invoice_seconds, strict=True)
        )
        table = Table(title=f"pricing usage of {pricing.periods} months ({repeat} rounds, median)")
        table.add_column("source")
        table.add_column("seconds, all months", justify="right")
        table.add_column("per month", justify="right")
        table.add_row("metering_daily (catalog)", f"{metering_s:.3f}",
                      f"{metering_s / pricing.periods * 1000:.0f} ms")  # fmt: skip
        table.add_row("pricing.invoice of that usage", f"{invoice_s:.3f}",
                      f"{invoice_s / pricing.periods * 1000:.0f} ms")  # fmt: skip
        table.add_row("  line by line (the reference, not used)", f"{reference_s:.3f}",
                      f"{reference_s / pricing.periods * 1000:.0f} ms"
                      f" ({reference_s / invoice_s:.1f}x pricing.invoice)")  # fmt: skip
        table.add_row("[bold]pricing a month: both[/]", f"{priced_s:.3f}",
                      f"{priced_s / pricing.periods * 1000:.0f} ms (<= 100 ms)")  # fmt: skip
        table.add_row("facts (DuckDB on the files)", f"{facts_s:.3f}",
                      f"{facts_s / pricing.periods * 1000:.0f} ms")  # fmt: skip
        console.print(table)
        console.print(
            f"same answer: {pricing.usage_rows:,} usage rows and {pricing.periods} invoices equal"
            f" both ways; [bold]ratio facts / metering: {pricing.ratio:.1f}x[/]"
        )


if __name__ == "__main__":
    main()
