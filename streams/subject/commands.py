"""``sieve retention sweep``, ``sieve subject export`` and ``sieve subject erase``.

The edge of the identifiable side: settings, the key file, the policy and the clock are read
here and passed inward. Sweeps and erasures of one local data root take an exclusive lock
(``_locks/identifiable.lock``), so two of them never rewrite the same file at once; on an
object store the per-file change check of :mod:`streams.subject.identifiable_store` is what
remains.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import cast

import click
import pyarrow.fs as pafs
from rich.console import Console
from rich.table import Table

from streams.compaction.run import sweep_identifiable_leftovers
from streams.encryption import ParquetEncryption
from streams.errors import ConfigurationError, SieveError
from streams.privacy.keyring import Keyring
from streams.privacy.retention import RetentionPolicy, load_policy
from streams.settings import Settings, reads_settings
from streams.storage import open_data_root, write_private_atomic
from streams.subject.access import (
    DeadLetterTopic,
    find_dead_letters,
    iter_subject_tables,
    write_export,
)
from streams.subject.erasure import ErasureReport, erase_subject
from streams.subject.identifiable_store import Subject
from streams.subject.retention_sweep import SweepReport, account_ends_from_store, sweep

_LOCK_PATH = "_locks/identifiable.lock"


class MaintenanceBusyError(SieveError):
    """Another sweep or erasure holds the data root's lock."""


class ErasureIncompleteError(SieveError):
    """The erasure removed what it could reach; files in flight may still hold the person."""

    exit_code = 3


class ExportIncompleteError(SieveError):
    """The export was written, but files in flight could not be read."""

    exit_code = 3


# --- sieve retention ---------------------------------------------------------------------


@click.group("retention")
def retention() -> None:
    """Retention of identifiable records (the periods live in the policy file)."""


@reads_settings("data_root", "policy_file", "keyring_file")
@retention.command("sweep")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; change nothing.")
@click.option(
    "--now",
    "now_text",
    metavar="ISO",
    help="Sweep as of this instant: a date (2027-01-01, midnight UTC) or an ISO 8601 instant"
    " with its offset (2027-01-01T06:00:00+00:00, or Z); default: the current time.",
)
def sweep_command(dry_run: bool, now_text: str | None) -> None:
    """Delete every identifiable record whose retention period is over.

    Records with an expiry older than NOW go; account-bound records (content, account) go
    the class's days after their account's termination. Safe to interrupt and to repeat.
    """
    now = parse_now(now_text) if now_text else datetime.now(UTC)
    settings = _settings()
    policy, encryption = _policy(settings), _encryption(settings)
    filesystem, root = _data_root(settings)
    with maintenance_lock(filesystem, root):
        sweep_identifiable_leftovers(filesystem, root)
        ends = account_ends_from_store(filesystem, root, policy, encryption)
        report = sweep(filesystem, root, policy, encryption, now, ends, dry_run=dry_run)
    Console().print(_sweep_table(report, len(ends)))


# --- sieve subject -----------------------------------------------------------------------


@click.group("subject")
def subject() -> None:
    """Requests of one person: access (export) and erasure."""


@reads_settings("data_root", "bootstrap_servers", "dead_letter_topic", "keyring_file")
@subject.command("export")
@click.argument("account_id")
@click.option(
    "--user", "user_id", metavar="USER_ID", help="One user of the account (default: all)."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the JSON lines here (mode 0600) instead of to standard output.",
)
@click.option(
    "--dead-letters",
    is_flag=True,
    help="Also search the dead-letter topic (reads all of it from the broker).",
)
def export_command(
    account_id: str, user_id: str | None, out: Path | None, dead_letters: bool
) -> None:
    """Export everything held about ACCOUNT_ID (or one of its users), decrypted, as JSON lines.

    One line per identifiable record (and dead letter), then a summary line; the summary is
    also printed to standard error.
    """
    settings = _settings()
    encryption = _encryption(settings)
    filesystem, root = _data_root(settings)
    person = Subject(account_id, user_id)
    letters = find_dead_letters(_dead_letter_topic(settings), person) if dead_letters else None
    # Under the lock: a killed compaction's merged copies are removed before reading (they
    # would be read twice), and no compaction merges files while they are read.
    with maintenance_lock(filesystem, root):
        sweep_identifiable_leftovers(filesystem, root)
        tables = iter_subject_tables(filesystem, root, encryption, person)
        if out is None:
            summary = write_export(tables, letters, person, sys.stdout)
        else:
            # The export is decrypted personal data: private file, and never half of one.
            summary = write_private_atomic(
                out, lambda handle: write_export(tables, letters, person, handle)
            )
    table = Table(title=f"Export of {person}")
    table.add_column("held")
    table.add_column("records", justify="right")
    for cls, count in summary.rows_by_class.items():
        table.add_row(f"identifiable: {cls}", f"{count:,}")
    table.add_row("identifiable, total", f"{summary.rows:,}")
    shown = "not searched" if summary.dead_letters is None else f"{summary.dead_letters:,}"
    table.add_row("dead letters", shown)
    if tables.in_flight_unreadable:
        # A worker is writing them: they are renamed (and readable) within seconds.
        table.add_row(
            "worker files in flight, not readable yet", f"{len(tables.in_flight_unreadable):,}"
        )
    if tables.leftover_copies:
        table.add_row(
            "leftover copies (rows also in their originals)", f"{tables.leftover_copies:,}"
        )
    Console(stderr=True).print(table)
    if tables.in_flight_unreadable:
        raise ExportIncompleteError(
            f"{len(tables.in_flight_unreadable)} file(s) a worker was writing could not be read"
            f" ({', '.join(tables.in_flight_unreadable[:3])}); run the export again"
        )


@reads_settings(
    "data_root", "bootstrap_servers", "dead_letter_topic", "policy_file", "keyring_file"
)
@subject.command("erase")
@click.argument("account_id")
@click.option(
    "--user", "user_id", metavar="USER_ID", help="One user of the account (default: all)."
)
@click.option(
    "--include-billing",
    is_flag=True,
    help="Erase payment records too (kept by default: tax law requires them).",
)
@click.option(
    "--dead-letters/--no-dead-letters",
    default=True,
    show_default=True,
    help="Tombstone the person's dead letters on the dead-letter topic.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def erase_command(
    account_id: str, user_id: str | None, include_billing: bool, dead_letters: bool, yes: bool
) -> None:
    """Erase ACCOUNT_ID (or one of its users) from identifiable files and dead letters.

    Anonymized facts and published aggregates stay as they are (they identify no one, and
    changing them would falsify invoices). Idempotent: after an error, run it again.
    """
    settings = _settings()
    policy, encryption = _policy(settings), _encryption(settings)
    filesystem, root = _data_root(settings)
    topic = _dead_letter_topic(settings) if dead_letters else None
    with maintenance_lock(filesystem, root):
        sweep_identifiable_leftovers(filesystem, root)

        def run(dry_run: bool) -> ErasureReport:
            return erase_subject(
                filesystem,
                root,
                encryption,
                policy,
                account_id,
                user_id,
                include_billing=include_billing,
                dead_letters=topic,
                dry_run=dry_run,
            )

        if not yes:
            preview = run(dry_run=True)
            Console(stderr=True).print(_erasure_table(preview))
            click.confirm(f"Erase {preview.subject} as shown?", abort=True, err=True)
        report = run(dry_run=False)
    Console().print(_erasure_table(report))
    if not report.complete:
        raise ErasureIncompleteError(
            f"{len(report.in_flight_not_erased)} file(s) a worker is writing, or that a killed"
            f" worker left ({', '.join(report.in_flight_not_erased[:3])}), may hold rows of"
            f" {report.subject}; a worker commits or removes them (its partition's recovery),"
            " then run the erasure again"
        )


# --- helpers ---------------------------------------------------------------------------------


def parse_now(text: str) -> datetime:
    """``--now``: a date (its midnight UTC) or an ISO 8601 instant with an offset.

    A date and time without an offset is refused rather than guessed (the sweep deletes
    data); the message suggests the same instant in UTC, in a form this function accepts.
    """
    text = text.strip()
    try:
        return datetime.combine(date.fromisoformat(text), time(0), tzinfo=UTC)
    except ValueError:
        pass  # not a bare date
    try:
        now = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a date (2027-01-01) nor an ISO 8601 instant with its offset"
            " (2027-01-01T06:00:00+00:00)",
            param_hint="--now",
        ) from None
    if now.tzinfo is None or now.utcoffset() is None:
        suggestion = now.replace(tzinfo=UTC).isoformat()
        raise click.BadParameter(
            f"{text!r} has no UTC offset; if it is UTC, write {suggestion}", param_hint="--now"
        )
    return now.astimezone(UTC)


def _settings() -> Settings:
    # Every Settings field has a default, but mypy sees that only with the pydantic plugin
    # (the same idiom as the other commands).
    return cast(Callable[[], Settings], Settings)()


def _data_root(settings: Settings) -> tuple[pafs.FileSystem, str]:
    root = open_data_root(settings.data_root, create=True)
    return root.fs, root.path


def _policy(settings: Settings) -> RetentionPolicy:
    return load_policy(settings.policy_file)


def _encryption(settings: Settings) -> ParquetEncryption:
    if settings.keyring_file is None:
        raise ConfigurationError(
            "SIEVE_KEYRING_FILE is not set: identifiable files are encrypted with its keys"
        )
    # Every encryption key, not only the active one (as the worker does): files written
    # before a rotation must still open, and each rewrite moves a file onto the active key.
    return ParquetEncryption(*Keyring.load(settings.keyring_file).encryption_keys())


def _dead_letter_topic(settings: Settings) -> DeadLetterTopic:
    return DeadLetterTopic(settings.bootstrap_servers, settings.dead_letter_topic)


@contextmanager
def maintenance_lock(filesystem: pafs.FileSystem, root: str) -> Iterator[None]:
    if not isinstance(filesystem, pafs.LocalFileSystem) or os.name != "posix":
        yield
        return
    import fcntl

    path = Path(root) / _LOCK_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MaintenanceBusyError(
                f"another retention sweep or erasure is running on {root}; try again when it ends"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _sweep_table(report: SweepReport, ended_accounts: int) -> Table:
    verb = "would remove" if report.dry_run else "removed"
    table = Table(title=f"Retention sweep as of {report.now.isoformat()} ({verb})")
    for name in ("class", "files deleted", "files rewritten", "rows removed"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for cls, counts in sorted(report.by_class.items()):
        table.add_row(
            cls,
            f"{counts.files_deleted:,}",
            f"{counts.files_rewritten:,}",
            f"{counts.rows_removed:,}",
        )
    table.caption = (
        f"{report.files_seen:,} files seen, {report.files_decided_without_reading_rows:,} decided"
        f" without reading rows; {ended_accounts:,} ended accounts"
        + (
            f"; {report.leftovers_removed} leftover copies of killed runs"
            f" {'found' if report.dry_run else 'removed'}"
            if report.leftovers_removed
            else ""
        )
        + (
            f"; {report.in_flight_files} worker files in flight left to the worker"
            if report.in_flight_files
            else ""
        )
        + (
            f"; classes not in the policy: {sorted(report.unknown_classes)}"
            if report.unknown_classes
            else ""
        )
    )
    return table


def _erasure_table(report: ErasureReport) -> Table:
    verb = "would be" if report.dry_run else "was"
    table = Table(title=f"Erasure of {report.subject} (what {verb} done)")
    table.add_column("what")
    table.add_column("records", justify="right")
    for cls, count in report.rows_removed.items():
        table.add_row(f"erased: {cls}", f"{count:,}")
    table.add_row("erased, total", f"{report.total_removed:,}")
    for cls, count in report.rows_retained.items():
        table.add_row(f"retained (legal obligation): {cls}", f"{count:,}")
    table.add_row(
        "files rewritten / deleted", f"{report.files_rewritten:,} / {report.files_deleted:,}"
    )
    tombstoned = report.dead_letters_tombstoned
    table.add_row(
        "dead letters tombstoned", "not searched" if tombstoned is None else f"{tombstoned:,}"
    )
    if report.leftovers_removed:
        verb = "found" if report.dry_run else "removed"
        table.add_row(f"leftover copies of killed runs {verb}", f"{report.leftovers_removed:,}")
    if report.in_flight_not_erased:
        table.add_row("worker files in flight, not erased", f"{len(report.in_flight_not_erased):,}")
    table.caption = "anonymized facts and published aggregates are kept (they identify no one)"
    return table
