"""``sieve worker`` and ``sieve status``."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import click
from rich.console import Console

from schemas.commits import iter_markers, range_count
from schemas.datasets import FACTS_DATASET, IDENTIFIABLE_DATASET
from streams.errors import ConfigurationError
from streams.settings import Settings, reads_settings
from streams.storage import open_data_root


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
    "roll_max_bytes",
    "dedup_horizon",
    "state_dir",
    "session_timeout_seconds",
    "metrics_port",
    "metrics_host",
    "status_interval_seconds",
    "honour_dnt",
    "honour_gpc",
    "policy_file",
    "geoip_database",
    "keyring_file",
    "event_max_ahead",
    "event_max_behind",
    "backfill_max_behind",
    "internal_referrer_hosts",
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
    opened = open_data_root(data_root, create=True)
    filesystem, root = opened.fs, opened.path
    totals: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    identifiable: Counter[str] = Counter()
    ranges = 0
    for marker in iter_markers(filesystem, root, topic):
        ranges += range_count(marker)
        counts = marker.counts
        totals.update(
            raw=counts.raw,
            accepted=counts.accepted,
            duplicates=counts.duplicates,
            facts=counts.rows(FACTS_DATASET.name),
            bytes_written=counts.bytes_written,
        )
        if counts.properties_dropped:
            totals["properties_dropped"] += counts.properties_dropped
        dead.update(counts.dead_lettered)
        identifiable.update(counts.rows_by(IDENTIFIABLE_DATASET.name))
    return totals, dead, identifiable, ranges


@reads_settings("data_root", "bootstrap_servers", "raw_topic", "consumer_group")
@click.command("status")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output: a table for people, json for programs.",
)
def status_command(fmt: str) -> None:
    """What the workers have committed so far, and how far behind they are.

    The counts come from the commit markers; the lag from Kafka. With no broker answering
    within 2 s the lag is unknown: the counts are printed all the same, then the reason,
    and the exit code is 1.
    """
    from streams.worker.status import LagUnknownError, query_lag, status_document, status_table

    settings = Settings()
    totals = committed_totals(settings.data_root, settings.raw_topic)
    lag: dict[int, int] | None = None
    unknown: LagUnknownError | None = None
    try:
        lag = query_lag(settings.bootstrap_servers, settings.consumer_group, settings.raw_topic)
    except LagUnknownError as error:
        unknown = error
    document = status_document(
        settings.raw_topic, *totals, lag=lag, lag_error=None if unknown is None else str(unknown)
    )
    if fmt == "json":
        click.echo(json.dumps(document, indent=2))
    else:
        Console().print(status_table(document))
    if unknown is not None:
        raise unknown
