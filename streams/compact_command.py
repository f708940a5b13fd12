"""``sieve compact``: a thin adapter over streams.compaction (it takes the publish lock and
the subject tools' maintenance lock, reads the manifest, loads the keyring)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from importlib.metadata import version
from typing import cast

import click

from aggregations.manifest import publish_lock, read_manifest
from aggregations.storage import resolve_root
from streams.compaction.run import compact_published
from streams.encryption import ParquetEncryption
from streams.privacy.keyring import Keyring
from streams.settings import Settings, reads_settings


@reads_settings(
    "data_root",
    "grace_period",
    "keyring_file",
    "dp_epsilon",
    "dp_delta",
    "dp_late_batches",
    "dp_late_share",
    "dp_late_interval",
    "dp_max_events_per_person_day",
    "dp_userless_unit",
)
@click.command("compact")
@click.option(
    "--identifiable/--facts-only",
    default=True,
    show_default=True,
    help="Merge identifiable files too (needs SIEVE_KEYRING_FILE; they are encrypted again"
    " with the active key), or merge facts only and keep identifiable files as they are.",
)
def compact_command(identifiable: bool) -> None:
    """Merge the small range files of closed days into one file per folder, and their commit
    markers into one per run of ranges.

    A day is closed once `sieve publish` has released its last analytics slot (so run
    publish first; publish also compacts facts after each run). Safe to kill at any point:
    readers see the ranges or the compaction, never both or neither, and the next run
    removes what a killed one left.
    """
    from aggregations.analytics import privacy_of
    from streams.subject.commands import maintenance_lock

    settings = cast(Callable[[], Settings], Settings)()
    root = resolve_root(settings.data_root)
    encryption = None
    if identifiable:
        if settings.keyring_file is None:
            raise click.UsageError(
                "SIEVE_KEYRING_FILE is not set: identifiable files are merged decrypted and"
                " encrypted again with its keys (or pass --facts-only)"
            )
        encryption = ParquetEncryption(*Keyring.load(settings.keyring_file).encryption_keys())
    with ExitStack() as locks:
        locks.enter_context(publish_lock(root))
        if encryption is not None:
            # An erasure or sweep rewriting a file this run merges would see its rows come
            # back in the merged file: the subject tools' lock keeps them apart.
            locks.enter_context(maintenance_lock(root.fs, root.path))
        manifest = read_manifest(root)
        budget = privacy_of(settings).budget
        report = compact_published(
            root.fs,
            root.path,
            watermark=manifest.watermark,
            held=frozenset(manifest.pending_days) | frozenset(manifest.waiting_days),
            cursor=manifest.cursor,
            grace=settings.grace_period,
            late_batches=budget.late_batches,
            late_interval=budget.late_interval,
            encryption=encryption,
            sieve_version=version("sieve"),
        )
    if report is None:
        click.echo("nothing published yet: run `sieve publish` first (it closes the days)")
        return
    click.echo(
        f"{report.compactions} compactions replaced {report.ranges_replaced} markers:"
        f" {report.files_merged} files merged into {report.files_written};"
        f" {report.swept} leftovers removed"
    )
