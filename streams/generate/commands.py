"""``sieve generate``: the adapter around the traffic model.

Everything impure lives here: the clock (the default period ends at the current hour),
pacing, the Kafka producer or the output file, the progress bar and the summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import click
import msgspec
from rich.console import Console
from rich.table import Table

from streams.generate.model import TrafficConfig, TrafficModel
from streams.generate.progress import RunProgress
from streams.generate.records import GroundTruth
from streams.generate.sinks import CREATE_TOPIC_HELP, RawSink, TokenBucket, TopicSink, open_sink
from streams.generate.user_agents import load_user_agents
from streams.settings import Settings, reads_settings

CLIENT_ID = "sieve-generate"
# Progress is redrawn every this many records: per-record updates would cost more than
# generating the record.
PROGRESS_EVERY = 2_000


@dataclass(frozen=True)
class GenerateReport:
    truth: GroundTruth
    elapsed_s: float

    @property
    def records_per_s(self) -> float:
        return self.truth.records / self.elapsed_s if self.elapsed_s > 0 else float("inf")


def run_generate(
    config: TrafficConfig,
    sink: RawSink,
    *,
    rate: float = 0.0,
    console: Console | None = None,
    check: Callable[[], None] | None = None,
) -> GenerateReport:
    """Generate ``config.count`` records into ``sink`` (closed at the end, even on error).

    ``rate`` > 0 paces the records (per second); a ``console`` shows progress: a live line
    on a terminal, a plain line every few seconds otherwise (:mod:`streams.generate.progress`).
    ``check`` is called every :data:`PROGRESS_EVERY` records and stops the run by raising
    (the demo checks that the worker it started is alive). The returned truth is exact for
    what reached the sink; if ``close`` raises, nothing is reported.
    """
    model = TrafficModel(config)
    bucket = TokenBucket(rate) if rate > 0 else None
    started = time.perf_counter()
    with ExitStack() as stack:
        stack.callback(sink.close)
        progress: RunProgress | None = None
        if console is not None:
            progress = stack.enter_context(RunProgress(console, "generate", config.count))
        send = sink.send
        for done, record in enumerate(model, 1):
            if bucket is not None:
                bucket.take()
            send(record.key, record.value)
            if done % PROGRESS_EVERY == 0:
                if progress is not None:
                    progress.update(done)
                if check is not None:
                    check()
    return GenerateReport(model.truth, time.perf_counter() - started)


def generate_to_topic(
    config: TrafficConfig,
    bootstrap_servers: str,
    topic: str,
    *,
    rate: float = 0.0,
    console: Console | None = None,
    check: Callable[[], None] | None = None,
) -> GenerateReport:
    """:func:`run_generate` into ``topic``; returns once every record is acknowledged."""
    sink = TopicSink(bootstrap_servers, topic, client_id=CLIENT_ID)
    return run_generate(config, sink, rate=rate, console=console, check=check)


# --- the command ---------------------------------------------------------------------------


def _parse_instant(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as bad:
        raise click.BadParameter(
            f"not an ISO 8601 date or time: {text!r}", param_hint=option
        ) from bad
    # A bare date or time without an offset means UTC: the pipeline's windows are UTC.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def resolve_period(
    start: datetime | None, end: datetime | None, days: float | None, now: datetime
) -> tuple[datetime, datetime]:
    """The generation period from the options; the default ends at ``now``'s hour."""
    if start is not None and end is not None and days is not None:
        raise click.UsageError("give at most two of --start, --end and --days")
    span = timedelta(days=days if days is not None else 30)
    if end is None:
        end = start + span if start is not None else now.replace(minute=0, second=0, microsecond=0)
    if start is None:
        start = end - span
    if end <= start:
        raise click.UsageError(f"the period is empty: {start.isoformat()} to {end.isoformat()}")
    return start, end


def summary_table(report: GenerateReport) -> Table:
    """The ground truth as a table: kinds, valid events per type, malformed per reason."""
    truth = report.truth
    table = Table(title=f"{truth.records:,} records at {report.records_per_s:,.0f}/s")
    table.add_column("category")
    table.add_column("name")
    table.add_column("count", justify="right")
    for kind, n in truth.by_kind.items():
        table.add_row("kind", kind, f"{n:,}")
    for name, n in truth.events_by_type.items():
        dup = truth.duplicates_by_type[name]
        late = truth.late_by_type[name]
        table.add_row("event", name, f"{n:,}  (+{dup:,} dup, {late:,} late)")
    for reason, n in truth.malformed_by_reason.items():
        table.add_row("malformed", reason, f"{n:,}")
    table.add_row("population", "accounts / users / sessions",
                  f"{truth.accounts:,} / {truth.users:,} / {truth.sessions:,}")  # fmt: skip
    return table


@reads_settings("bootstrap_servers", "raw_topic", "raw_partitions", "raw_retention_hours")
@click.command("generate")
@click.option(
    "--count",
    "-n",
    type=click.IntRange(min=0),
    default=100_000,
    show_default=True,
    help="Records to emit in all: valid events, duplicates and malformed together.",
)
@click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="Same seed, same period and options: byte-identical records.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Records per second (token bucket); 0 sends as fast as possible.",
)
@click.option(
    "--accounts",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Accounts (Zipf-distributed activity).",
)
@click.option("--start", "start_text", metavar="ISO", help="Start of the period (no offset: UTC).")
@click.option(
    "--end",
    "end_text",
    metavar="ISO",
    help="End of the period; default: the start of the current hour.",
)
@click.option(
    "--days",
    type=click.FloatRange(min=0, min_open=True),
    help="Length of the period in days (default 30).",
)
@click.option(
    "--duplicates",
    type=click.FloatRange(0, 0.5),
    default=0.01,
    show_default=True,
    help="Share of records that re-send an earlier event's bytes (producer retries).",
)
@click.option(
    "--late",
    type=click.FloatRange(0, 0.5),
    default=0.01,
    show_default=True,
    help="Share of events emitted 1-6 hours (event time) after their place.",
)
@click.option(
    "--malformed",
    type=click.FloatRange(0, 0.5),
    default=0.005,
    show_default=True,
    help="Share of records that break the contract (one rule each).",
)
@click.option(
    "--out",
    "out_path",
    metavar="FILE",
    help="Write JSON lines (one raw value per line) instead of producing; '-': stdout.",
)
@click.option("--topic", help="Topic to produce to (it must exist); default: SIEVE_RAW_TOPIC.")
@click.option("--create-topic", is_flag=True, help=CREATE_TOPIC_HELP)
@click.option(
    "--truth-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the ground truth counts as JSON to this file.",
)
@click.option(
    "--user-agents",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A user-agent list (one per line) instead of the packaged one.",
)
def generate(
    count: int,
    seed: int,
    rate: float,
    accounts: int,
    start_text: str | None,
    end_text: str | None,
    days: float | None,
    duplicates: float,
    late: float,
    malformed: float,
    out_path: str | None,
    topic: str | None,
    create_topic: bool,
    truth_json: Path | None,
    user_agents: Path | None,
) -> None:
    """Emit realistic synthetic traffic to the raw topic (or a file) and print its truth.

    Accounts of Zipf-distributed size; sessions with logins, page views, API calls,
    uploads, downloads and logouts; payments; account lifecycle; consent changes; IPv4
    and IPv6 addresses of real providers in 30 countries; real user agents. Plus the
    planted trouble: duplicates, late events and malformed records, counted exactly.
    Uses SIEVE_BOOTSTRAP_SERVERS, SIEVE_RAW_TOPIC, SIEVE_RAW_PARTITIONS and
    SIEVE_RAW_RETENTION_HOURS.
    """
    now = datetime.now(UTC)  # the only clock read: the default period's end
    start, end = resolve_period(
        _parse_instant(start_text, "--start"), _parse_instant(end_text, "--end"), days, now
    )
    config = TrafficConfig(
        count=count,
        start=start,
        end=end,
        user_agents=load_user_agents(user_agents),
        seed=seed,
        accounts=accounts,
        duplicate_share=duplicates,
        late_share=late,
        malformed_share=malformed,
    )
    # With records on stdout, the bar and the summary go to stderr.
    console = Console(stderr=out_path == "-")
    settings = cast(Callable[[], Settings], Settings)()
    topic = topic or settings.raw_topic
    sink, where = open_sink(out_path, settings, topic, CLIENT_ID, create_topic=create_topic)
    console.print(f"generating {count:,} records, seed {seed}, "
                  f"{start.isoformat()} to {end.isoformat()} -> {where}")  # fmt: skip
    report = run_generate(config, sink, rate=rate, console=console)
    console.print(summary_table(report))
    if truth_json is not None:
        truth_json.write_bytes(msgspec.json.format(msgspec.json.encode(_truth_doc(report))))
        console.print(f"ground truth written to {truth_json}")


def _truth_doc(report: GenerateReport) -> dict[str, Any]:
    return {**report.truth.as_dict(), "elapsed_s": report.elapsed_s,
            "records_per_s": report.records_per_s}  # fmt: skip
