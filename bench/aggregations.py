"""Aggregations: the pricing query on published metering against the same answer from the
facts, and the publish step's throughput.

    python -m bench.aggregations [--accounts 1000] [--days 365] [--rate 1.0] [--repeat 3]

Data (synthesized, vectorized with pyarrow.compute, seeded: the same options give the same
facts). ``--accounts`` accounts over ``--days`` UTC days ending 2026-11-01, written the way
a worker commits them (``aggregations.testing.write_committed_facts``: a facts file and a
commit marker per range), one range per day and input partition (3 partitions, accounts
keyed onto them as Kafka would). Every account-hour has usage: at least one request (a
monitoring probe, the pattern that makes hourly metering dense), plus a geometric number of
further events whose mean is ``--rate`` times the account's weight (log-normal across
accounts: a few large ones, a long tail of small ones) times a diurnal and weekly profile.
Events mix requests, page views, logins and logouts (session time with microsecond
precision), uploads and downloads (log-normal sizes), payments; half of the requests name
no person (API calls), the other events one of the account's users (1 to 400 per account).
The defaults make 16.5 million facts: about 5 minutes and 8 GB of memory at peak on 2 cores
(``--days 60`` for a quick look).

1. **Publish**: one ``publish`` of the whole period (``now`` a day after its end, grace 1h,
   the default privacy budget), timed by stage exactly as :func:`aggregations.publish.publish`
   runs them: facts read per second and published rows written per second (hourly and daily
   metering and the analytics batches). The metering queries of the plan are then timed
   again alone, to split the plan between metering and analytics. Then ``publish`` again
   with nothing new (an hourly run with nothing to add): it must write nothing.
2. **Pricing**: for every whole month of the period, the usage an invoice needs, i.e.
   ``pricing.period_usage`` (``metering_daily`` through the catalog) against the same rows
   computed by this file from the committed fact files of the month in DuckDB; both answers
   must be equal, and so must ``pricing.invoice`` of each. The median over ``--repeat``
   rounds of the all-months total is reported, and the ratio facts / metering. The facts
   side grows with the facts per account-day (``--rate``); the metering side does not.
"""

from __future__ import annotations

import math
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Final, TypeVar

import click
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from aggregations import metering
from aggregations.analytics import privacy_of
from aggregations.catalog import open_catalog
from aggregations.engine import connect
from aggregations.pricing import Invoice, PricePlan, invoice, load_plan, period_bounds
from aggregations.pricing import period_usage as catalog_period_usage
from aggregations.publish import (
    PublishedState,
    PublishReport,
    ensure_layout,
    plan_publish,
    publish,
    read_state,
    write_plan,
)
from aggregations.schemas import METRICS
from aggregations.storage import FILE_INDEX, load_facts, resolve_root
from aggregations.testing import write_committed_facts
from aggregations.windows import last_closed_day, last_closed_hour
from schemas.commits import committed_files
from streams.settings import Settings

END: Final = datetime(2026, 11, 1, tzinfo=UTC)
TOPIC: Final = "bench.raw"
PARTITIONS: Final = 3
GRACE: Final = timedelta(hours=1)
# Hours of traffic after the period, to close its last windows (see synthesize).
NEXT_HOURS: Final = 2
# The analytics are released under the settings' default budget and bounds.
PRIVACY: Final = privacy_of(Settings())

# Event types and their share of the events after each account-hour's first request.
_TYPES: Final = (
    ("request", 0.52),
    ("page_view", 0.26),
    ("login", 0.055),
    ("logout", 0.05),
    ("upload", 0.05),
    ("download", 0.06),
    ("payment", 0.005),
)
# Relative activity per UTC hour (business hours in Europe and the Americas) and weekday.
_DIURNAL: Final = (
    0.30, 0.25, 0.20, 0.20, 0.25, 0.35, 0.55, 0.80, 1.10, 1.40, 1.55, 1.60,
    1.55, 1.60, 1.65, 1.60, 1.50, 1.35, 1.20, 1.05, 0.90, 0.70, 0.50, 0.40,
)  # fmt: skip
_WEEKLY: Final = (1.1, 1.15, 1.15, 1.1, 1.0, 0.55, 0.5)  # Monday first
_COUNTRIES: Final = ("DE", "FR", "US", "GB", "NL", "ES", "IT", "BR", "IN", "JP", "--")
_DEVICES: Final = ("desktop", "mobile", "tablet", "bot", "other")
_BROWSERS: Final = ("Chrome", "Firefox", "Safari", "Edge", "curl", "Other")
_OS: Final = ("Windows", "Mac OS X", "Linux", "Android", "iOS", "Other")
# How many equal buckets the categorical draws are made with (a lookup table per draw).
_BUCKETS: Final = 1_000


# --- synthesis -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Population:
    """Per account: its id, hourly rate weight, number of users and input partition."""

    ids: pa.Array
    weights: pa.Array  # float64
    users: pa.Array  # int64, >= 1
    partitions: pa.Array  # int64


def make_population(accounts: int, seed: int) -> Population:
    rng = random.Random(seed)
    # Log-normal weights normalised to mean 1, so --rate is the mean extra events per hour.
    raw = [rng.lognormvariate(0.0, 1.2) for _ in range(accounts)]
    mean = sum(raw) / accounts
    weights = [w / mean for w in raw]
    users = [max(1, min(400, round(10 * w * rng.uniform(0.5, 2.0)))) for w in weights]
    ids = [f"acct-{i:05d}" for i in range(accounts)]
    return Population(
        ids=pa.array(ids, pa.string()),
        weights=pa.array(weights, pa.float64()),
        users=pa.array(users, pa.int64()),
        partitions=pa.array([i % PARTITIONS for i in range(accounts)], pa.int64()),
    )


class _Uniform:
    """Seeded uniform draws in [0, 1), a fresh stream per call (pyarrow's generator)."""

    def __init__(self, seed: int) -> None:
        self._next = seed * 1_000_003

    def __call__(self, n: int) -> pa.Array:
        self._next += 1
        return pc.random(n, initializer=self._next)


def _lookup(choices: Sequence[tuple[str, float]] | Sequence[str]) -> pa.Array:
    """A table of _BUCKETS entries where each choice fills its share (equal if unweighted)."""
    pairs = [(c, 1.0) if isinstance(c, str) else c for c in choices]
    total = sum(weight for _, weight in pairs)
    table: list[str] = []
    for name, weight in pairs:
        table += [name] * round(weight / total * _BUCKETS)
    table = (table + [pairs[0][0]] * _BUCKETS)[:_BUCKETS]
    return pa.array(table, pa.string())


_TYPE_TABLE: Final = _lookup(_TYPES)


def _pick(table: pa.Array, uniform: pa.Array) -> pa.Array:
    return table.take(pc.cast(pc.floor(pc.multiply(uniform, len(table))), pa.int64()))


def _lognormal(draw: _Uniform, n: int, mu: float, sigma: float) -> pa.Array:
    """Box-Muller: exp(mu + sigma * z) with z standard normal (ln of 1 - u, never of 0)."""
    radius = pc.sqrt(pc.multiply(pc.ln(pc.subtract(1.0, draw(n))), -2.0))
    z = pc.multiply(radius, pc.cos(pc.multiply(draw(n), 2 * math.pi)))
    return pc.exp(pc.add(mu, pc.multiply(z, sigma)))


def day_facts(
    population: Population, day: date, draw: _Uniform, rate: float, first_key: int
) -> pa.Table:
    """Every fact of one UTC day (rows ordered by account, then hour)."""
    accounts = len(population.ids)
    cells = accounts * 24
    cell = pa.array(range(cells), pa.int64())
    account_of_cell = pc.divide(cell, 24)
    hour_of_cell = pc.subtract(cell, pc.multiply(account_of_cell, 24))
    profile = pa.array(_DIURNAL, pa.float64()).take(hour_of_cell)
    mean = pc.multiply(
        pc.multiply(population.weights.take(account_of_cell), profile),
        rate * _WEEKLY[day.weekday()],
    )
    # Geometric extra events with this mean: floor(ln u / ln(mean / (1 + mean))).
    ratio = pc.ln(pc.divide(mean, pc.add(mean, 1.0)))
    extra = pc.cast(pc.floor(pc.divide(pc.ln(pc.subtract(1.0, draw(cells))), ratio)), pa.int64())
    per_cell = pc.add(extra, 1)  # + the account-hour's first request
    offsets = pc.cumulative_sum(per_cell)
    n = offsets[-1].as_py()
    starts = pa.concat_arrays([pa.array([0], pa.int64()), offsets]).cast(pa.int32())
    parent = pc.list_parent_indices(pa.ListArray.from_arrays(starts, pa.nulls(n, pa.int8())))
    parent = pc.cast(parent, pa.int64())
    account = pc.divide(parent, 24)
    hour = pc.subtract(parent, pc.multiply(account, 24))
    first_of_cell = pc.equal(
        pa.array(range(n), pa.int64()), pc.subtract(offsets, per_cell).take(parent)
    )
    types = pc.if_else(first_of_cell, "request", _pick(_TYPE_TABLE, draw(n)))

    is_upload = pc.equal(types, "upload")
    is_download = pc.equal(types, "download")
    transfer = pc.cast(pc.round(_lognormal(draw, n, 14.0, 1.5)), pa.int64())  # ~1.2 MB median
    response = pc.cast(pc.round(_lognormal(draw, n, 8.5, 1.0)), pa.int64())  # ~5 kB median
    is_request = pc.equal(types, "request")
    nbytes = pc.if_else(
        pc.or_(is_upload, is_download), transfer, pc.if_else(is_request, response, 0)
    )
    # Session time with microsecond precision, as logouts carry it (~10 minutes median).
    duration = pc.round(_lognormal(draw, n, 6.4, 1.1), 6)
    seconds = pc.if_else(pc.equal(types, "logout"), duration, 0.0)
    # One of the account's users, as a per-day pseudonym (like subject keys); half of the
    # requests name no one (API calls).
    user = pc.cast(pc.floor(pc.multiply(draw(n), population.users.take(account))), pa.int64())
    account_user = pc.add(pc.multiply(account, 1_000), user)
    person = pc.add(pc.multiply(account_user, 1_000), day.toordinal() % 1_000)
    anonymous = pc.and_(is_request, pc.less(draw(n), 0.5))
    subject = pc.if_else(anonymous, pa.scalar(None, pa.string()), pc.cast(person, pa.string()))

    midnight = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    occurred = pc.add(pc.multiply(hour, 3_600), midnight).cast(pa.timestamp("s", tz="UTC"))
    keys = pc.binary_join_element_wise(
        "ev", pc.cast(pa.array(range(first_key, first_key + n), pa.int64()), pa.string()), "-"
    )
    return pa.table(
        {
            "event_key": keys,
            "type": types,
            "occurred_hour": occurred,
            "account_id": population.ids.take(account),
            "country": _pick(_lookup(_COUNTRIES), draw(n)),
            "device_class": _pick(_lookup(_DEVICES), draw(n)),
            "browser_family": _pick(_lookup(_BROWSERS), draw(n)),
            "os_family": _pick(_lookup(_OS), draw(n)),
            "is_bot": pc.less(draw(n), 0.05),
            "bytes": nbytes,
            "session_seconds": seconds,
            "subject_key": subject,
            "key_id": pa.repeat(pa.scalar("k1", pa.string()), n),
            "_partition": population.partitions.take(account),
        }
    )


@dataclass(frozen=True)
class Synthesized:
    facts: int  # of the period
    next_facts: int  # of the hours after it (see synthesize)
    files: int
    account_hours: int  # of the period: each one has usage
    seconds: float


def synthesize(
    data_root: Path, population: Population, first_day: date, days: int, rate: float, seed: int
) -> Synthesized:
    """Write the period's facts as committed ranges (one per day and partition), then the
    first :data:`NEXT_HOURS` of the day after it.

    Those hours are there because windows close on event time (the latest fact hour + 1h,
    then the grace), never on the clock: without the next day's first traffic, the period's
    last hour and day would stay open and the last month's metering would miss a day.
    """
    started = time.perf_counter()
    draw = _Uniform(seed)
    offsets = [0] * PARTITIONS
    facts = files = 0
    for index in range(days + 1):
        day = first_day + timedelta(days=index)
        table = day_facts(population, day, draw, rate, facts)
        if index == days:
            midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
            end = midnight + timedelta(hours=NEXT_HOURS)
            table = table.filter(pc.less(table["occurred_hour"], end))
        partition_of_row = table["_partition"]
        table = table.drop_columns(["_partition"])
        for partition in range(PARTITIONS):
            part = table.filter(pc.equal(partition_of_row, partition))
            write_committed_facts(
                data_root, part, first_offset=offsets[partition], topic=TOPIC, partition=partition
            )
            offsets[partition] += part.num_rows
            files += 1
        facts += table.num_rows
    next_facts = table.num_rows
    return Synthesized(
        facts - next_facts,
        next_facts,
        files,
        len(population.ids) * days * 24,
        time.perf_counter() - started,
    )


T = TypeVar("T")


def _timed(call: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


# --- publish ---------------------------------------------------------------------------------


@dataclass
class Stages:
    """Seconds per stage of one publish, in the order publish() runs them."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def timed_publish(data_root: Path, now: datetime) -> tuple[PublishReport, Stages, float]:
    """:func:`aggregations.publish.publish`, step by step (the same calls), each timed; and
    the seconds the metering part of the plan takes when run again alone."""
    stages = Stages()
    with stages.stage("read facts"):
        root = resolve_root(str(data_root))
        ensure_layout(root)
        facts = load_facts(root)
        state = read_state(root)
    with stages.stage("plan (metering + analytics)"):
        plan = plan_publish(facts, state, now, GRACE, PRIVACY)
    with stages.stage("write"):
        write_plan(root, plan)
    # Not part of the publish: plan_publish does metering and the analytics batches in one
    # call, so its metering queries are repeated here (public functions, same arguments) to
    # say how the plan's time splits between the two.
    mark = plan.report.watermark
    assert mark is not None
    rows = facts.table.drop_columns([FILE_INDEX])
    _, metering_seconds = _timed(partial(_metering_only, rows, state, mark))
    return plan.report, stages, metering_seconds


def _metering_only(rows: pa.Table, state: PublishedState, mark: datetime) -> None:
    metering.changes(
        metering.hourly_usage(rows, last_closed_hour(mark, GRACE)), state.hourly, "hour"
    )
    metering.changes(metering.daily_usage(rows, last_closed_day(mark, GRACE)), state.daily, "date")


# --- pricing ---------------------------------------------------------------------------------

# The metering definitions (aggregations/metering.py) applied straight to the fact files,
# per UTC day and account: the same answer, without the published metering tables.
_FACTS_USAGE_SQL: Final = f"""
SELECT CAST(occurred_hour AS DATE) AS date, account_id, {metering.METRIC_SQL}
FROM read_parquet(?)
WHERE occurred_hour >= ? AND occurred_hour < ?
GROUP BY ALL
ORDER BY account_id, date
"""


def facts_by_day(data_root: Path) -> dict[date, list[str]]:
    """The committed fact files (commit markers, never a glob) by the date in their path."""
    root = resolve_root(str(data_root))
    files: dict[date, list[str]] = {}
    for relative in committed_files(root.fs, root.path, "facts"):
        # facts/date=YYYY-MM-DD/<range>.parquet: the worker's layout, one date per file.
        day = date.fromisoformat(relative.split("/")[1].removeprefix("date="))
        files.setdefault(day, []).append(root.join(relative))
    return files


def facts_period_usage(
    connection: duckdb.DuckDBPyConnection, files: dict[date, list[str]], period: str
) -> pa.Table:
    """The rows ``pricing.period_usage`` returns, computed from the month's fact files."""
    start, end = period_bounds(period)
    paths = [path for day, day_files in sorted(files.items()) if start <= day < end
             for path in day_files]  # fmt: skip
    midnight = datetime(start.year, start.month, start.day, tzinfo=UTC)
    until = datetime(end.year, end.month, end.day, tzinfo=UTC)
    return connection.sql(_FACTS_USAGE_SQL, params=[paths, midnight, until]).to_arrow_table()


def months(first_day: date, days: int) -> list[str]:
    """The whole months inside [first_day, first_day + days)."""
    last = first_day + timedelta(days=days)
    periods: list[str] = []
    year, month = first_day.year, first_day.month
    while True:
        period = f"{year:04d}-{month:02d}"
        start, end = period_bounds(period)
        if end > last:
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
    invoice_seconds: float = 0.0  # pricing.invoice over every period's usage, once

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
    run = PricingRun(len(periods), 0)
    try:
        for round_number in range(repeat):
            metering_total = facts_total = 0.0
            for period in periods:
                published, seconds = _timed(partial(catalog_period_usage, catalog, period))
                metering_total += seconds
                computed, seconds = _timed(partial(facts_period_usage, direct, files, period))
                facts_total += seconds
                if round_number == 0:
                    _check_same_answer(published, computed, plan, period)
                    run.usage_rows += published.num_rows
                    _, seconds = _timed(partial(invoice, published, plan, period))
                    run.invoice_seconds += seconds
            run.metering_seconds.append(metering_total)
            run.facts_seconds.append(facts_total)
    finally:
        catalog.close()
        direct.close()
    return run


class DifferentAnswersError(AssertionError):
    """Metering and the facts disagree: the benchmark's numbers would mean nothing."""


def _check_same_answer(
    published: pa.Table, computed: pa.Table, plan: PricePlan, period: str
) -> None:
    if published.num_rows == 0:
        raise DifferentAnswersError(f"{period}: no metering_daily rows (nothing published?)")
    columns = ["date", "account_id", *METRICS]
    if published.select(columns).to_pylist() != computed.select(columns).to_pylist():
        raise DifferentAnswersError(f"{period}: metering_daily and the facts give other usage")
    ours: Invoice = invoice(published, plan, period)
    theirs: Invoice = invoice(computed, plan, period)
    if ours != theirs:
        raise DifferentAnswersError(f"{period}: the invoices differ")


def check_complete(data_root: Path, account_hours: int, account_days: int) -> None:
    """Every account-hour and account-day of the period is published (all have usage)."""
    catalog = open_catalog(str(data_root), role="billing")
    try:
        hours = catalog.execute(
            "SELECT count(*) FROM metering_hourly WHERE hour < ?", [END]
        ).fetchall()
        days = catalog.execute(
            "SELECT count(*) FROM metering_daily WHERE date < ?", [END.date()]
        ).fetchall()
    finally:
        catalog.close()
    if (hours, days) != ([(account_hours,)], [(account_days,)]):
        raise DifferentAnswersError(
            f"published {hours} account-hours and {days} account-days of the period, expected"
            f" {account_hours:,} and {account_days:,}"
        )


# --- the command -----------------------------------------------------------------------------


def _rate(count: float, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s" if seconds > 0 else "-"


@click.command()
@click.option("--accounts", default=1_000, show_default=True, help="Accounts.")
@click.option("--days", default=365, show_default=True, help="Days of facts, ending 2026-11-01.")
@click.option(
    "--rate",
    default=1.0,
    show_default=True,
    help="Mean events per account-hour on top of the one request every account-hour has.",
)
@click.option("--repeat", default=3, show_default=True, help="Timed rounds of the pricing part.")
@click.option("--seed", default=1, show_default=True)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the data root here (default: a temporary folder, removed at the end).",
)
def main(
    accounts: int, days: int, rate: float, repeat: int, seed: int, workdir: Path | None
) -> None:
    """Pricing from published metering vs from the facts, and publish throughput."""
    console = Console(soft_wrap=True)
    console.print(
        f"[bold]bench.aggregations[/]: {accounts:,} accounts x {days} days, rate {rate}, "
        f"seed {seed}; {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, DuckDB {duckdb.__version__}, pyarrow {pa.__version__}"
    )
    with tempfile.TemporaryDirectory(prefix="sieve-bench-agg-") as temporary:
        data_root = (workdir or Path(temporary)) / "data"
        if data_root.exists() and any(data_root.iterdir()):
            raise click.UsageError(f"{data_root} is not empty")
        first_day = (END - timedelta(days=days)).date()
        periods = months(first_day, days)
        if not periods:
            raise click.UsageError(
                f"--days {days} holds no whole calendar month to price; use --days 31 or more"
            )
        made = synthesize(data_root, make_population(accounts, seed), first_day, days, rate, seed)
        console.print(
            f"synthesized {made.facts:,} facts ({made.facts / made.account_hours:.2f} per "
            f"account-hour, every one of the {made.account_hours:,} account-hours has usage) "
            f"+ {made.next_facts:,} of the next {NEXT_HOURS} hours, in {made.files:,} committed "
            f"files, {made.seconds:.1f}s"
        )

        now = END + timedelta(days=1)
        report, stages, metering_seconds = timed_publish(data_root, now)
        table = Table(title="publish (one run over every fact)")
        table.add_column("stage")
        table.add_column("seconds", justify="right")
        for name, seconds in stages.seconds.items():
            table.add_row(name, f"{seconds:.1f}")
        table.add_row("total", f"{stages.total:.1f}")
        table.add_row(
            "[dim]of the plan: its metering queries, timed again alone[/]",
            f"{metering_seconds:.1f}",
        )
        console.print(table)
        console.print(
            f"facts read: {report.facts:,} -> {_rate(report.facts, stages.total)}; rows written: "
            f"{report.rows_written:,} (hourly {report.hourly_base:,}, daily "
            f"{report.daily_base:,}, analytics {report.analytics_rows:,} in "
            f"{report.analytics_batches} batches) -> {_rate(report.rows_written, stages.total)}"
        )
        check_complete(data_root, made.account_hours, accounts * days)
        again, seconds = _timed(partial(publish, str(data_root), now, GRACE, PRIVACY))
        if again.rows_written:
            raise DifferentAnswersError("a publish with nothing new wrote rows")
        console.print(
            f"publish again, nothing new: {seconds:.1f}s, 0 rows written (a run reads and "
            f"re-meters every committed fact: {_rate(again.facts, seconds)})"
        )

        pricing = compare_pricing(data_root, periods, load_plan(None), repeat)
        metering_s = statistics.median(pricing.metering_seconds)
        facts_s = statistics.median(pricing.facts_seconds)
        table = Table(title=f"pricing usage of {pricing.periods} months ({repeat} rounds, median)")
        table.add_column("source")
        table.add_column("seconds, all months", justify="right")
        table.add_column("per month", justify="right")
        table.add_row("metering_daily (catalog)", f"{metering_s:.3f}",
                      f"{metering_s / pricing.periods * 1000:.0f} ms")  # fmt: skip
        table.add_row("facts (DuckDB on the files)", f"{facts_s:.3f}",
                      f"{facts_s / pricing.periods * 1000:.0f} ms")  # fmt: skip
        console.print(table)
        console.print(
            f"same answer: {pricing.usage_rows:,} usage rows and {pricing.periods} invoices equal"
            f" both ways; pricing.invoice itself (Python, the same for both) "
            f"{pricing.invoice_seconds:.1f}s for all months"
        )
        console.print(f"[bold]ratio facts / metering: {pricing.ratio:.1f}x[/] (usage queries)")
        with_invoices = (facts_s + pricing.invoice_seconds) / (metering_s + pricing.invoice_seconds)
        console.print(f"with pricing.invoice on top of each: {with_invoices:.1f}x")


if __name__ == "__main__":
    main()
