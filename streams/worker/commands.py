"""``sieve worker`` and ``sieve status``."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from schemas.commits import iter_markers
from streams.errors import ConfigurationError
from streams.settings import Settings, reads_settings
from streams.worker.sink import open_data_root


@reads_settings(
    "work_dir",
    "data_root",
    "bootstrap_servers",
    "raw_topic",
    "raw_partitions",
    "dead_letter_topic",
    "dead_letter_retention_hours",
    "consumer_group",
    "batch_max_records",
    "roll_max_records",
    "roll_interval_seconds",
    "dedup_horizon",
    "session_timeout_seconds",
    "metrics_port",
    "honour_dnt",
    "honour_gpc",
    "policy_file",
    "geoip_database",
    "keyring_file",
    "event_max_ahead",
    "event_max_behind",
    "backfill_max_behind",
)
@click.command("worker")
@click.option("--loglevel", default="warning", show_default=True, help="faust/mode log level.")
def worker_command(loglevel: str) -> None:
    """Run a stream processor: raw topic -> dead letters, identifiable logs, anonymized facts.

    Start as many as the raw topic has partitions; they share the consumer group.
    """
    from streams.privacy.keyring import Keyring
    from streams.worker.run import run_worker

    settings = Settings()
    if settings.keyring_file is None:
        raise ConfigurationError(
            "SIEVE_KEYRING_FILE is not set: the worker needs pseudonymization and encryption keys"
            " (make a key file with `sieve demo` or see the README, 'Keys')"
        )
    keyring = Keyring.load(settings.keyring_file)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    run_worker(settings, keyring, loglevel, report=_report)


def _report(line: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    click.echo(f"[{stamp}] sieve worker: {line}", err=True)


def committed_totals(
    data_root: str, topic: str
) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    """Totals of every committed range: counts, dead letters by reason, identifiable by class,
    and the number of ranges."""
    filesystem, root = open_data_root(data_root)
    totals: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    identifiable: Counter[str] = Counter()
    ranges = 0
    for marker in iter_markers(filesystem, root, topic):
        ranges += 1
        counts = marker.counts
        totals.update(
            raw=counts.raw,
            accepted=counts.accepted,
            duplicates=counts.duplicates,
            facts=counts.facts,
            bytes_written=counts.bytes_written,
        )
        dead.update(counts.dead_lettered)
        identifiable.update(counts.identifiable)
    return totals, dead, identifiable, ranges


@reads_settings("data_root", "bootstrap_servers", "raw_topic", "consumer_group")
@click.command("status")
def status_command() -> None:
    """What the workers have committed so far, and how far behind they are."""
    settings = Settings()
    totals, dead, identifiable, ranges = committed_totals(settings.data_root, settings.raw_topic)
    table = Table(title=f"Committed from {settings.raw_topic} ({ranges} ranges)")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for name in ("raw", "accepted", "duplicates"):
        table.add_row(name, f"{totals[name]:,}")
    table.add_row("dead-lettered", f"{sum(dead.values()):,}")
    for reason, count in sorted(dead.items()):
        table.add_row(f"  {reason}", f"{count:,}")
    for cls, count in sorted(identifiable.items()):
        table.add_row(f"identifiable: {cls}", f"{count:,}")
    table.add_row("facts", f"{totals['facts']:,}")
    table.add_row("bytes written", f"{totals['bytes_written']:,}")
    table.add_row("lag", _lag_text(settings))
    Console().print(table)


def _lag_text(settings: Settings) -> str:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=settings.consumer_group,
            enable_auto_commit=False,
            request_timeout_ms=5000,
        )
    except KafkaError as error:
        return f"broker unreachable ({type(error).__name__})"
    try:
        partitions = consumer.partitions_for_topic(settings.raw_topic) or set()
        tps = [TopicPartition(settings.raw_topic, p) for p in sorted(partitions)]
        ends = consumer.end_offsets(tps)
        behind = sum(ends[tp] - (consumer.committed(tp) or 0) for tp in tps)
        return f"{behind:,} records"
    finally:
        consumer.close()
