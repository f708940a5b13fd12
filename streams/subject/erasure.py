"""Erasure: remove one person from everything Sieve holds that identifies them.

Where Sieve holds identifiable data, and what erasure does there:

* **Identifiable files** (every class, region and date, committed or not): the person's
  rows are removed; a file is rewritten without them (temporary file and rename), or
  deleted when nothing else is left in it.
* **Dead letters**: every dead letter whose current value names the person (the broad
  search of :func:`streams.subject.access.mentions`) gets a tombstone, its key with a null value,
  on the partition it lives in. The topic is compacted, so readers stop seeing the letter at
  once (the latest value of the key is null) and the broker drops the old value when it
  cleans the segment that holds it.
* **Staging and aggregates are left as they are, on purpose.** Anonymized facts hold no user
  id, IP or user agent; their ``subject_key`` is an HMAC under a key derived per UTC day, so
  it cannot be joined across days or matched to a person without the pseudonymization
  key, and published aggregates hold counts of at least k people. Erasing a person's facts
  would change metering, i.e. falsify invoices already issued, and republish analytics
  cells by subtraction. Facts and aggregates therefore stay valid after an erasure.

**Billing records are retained**: payment transactions must be kept for years under tax law
(the policy's Data Retention section; the class of the ``payment`` event type). They are
counted in the report as retained, not erased, unless ``include_billing`` is set (when the
legal duty has ended, or by a decision the operator answers for).

Not reached by erasure: the raw topic, which holds raw events until its retention
(``SIEVE_RAW_RETENTION_HOURS``) deletes them, being neither compacted nor keyed by person;
and events that arrive after the erasure, which are collected again unless the person opted
out or the account was terminated first. Erase after the opt-out or termination.

Temporary files (:mod:`streams.subject.identifiable_store`): leftovers of killed sweeps and
erasures are deleted before anything is searched (they may hold the person's rows: a sweep's
copy keeps everyone's unexpired rows). A worker's temporary files are read, never deleted:
one that holds the person's rows, or cannot be read yet, is reported in
``in_flight_not_erased`` and the erasure is not complete; it is renamed into a final file
within seconds (which a second run erases) or removed by its partition's recovery.

Guarantees: idempotent (a second run removes nothing and tombstones nothing, since
tombstoned keys are no longer current); after a crash (even ``kill -9``) every file is
either untouched or without the person's rows, and running the erasure again finishes it
and leaves no copy behind.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from schemas.datasets import Dataset
from streams.encryption import ParquetEncryption
from streams.errors import TransientError
from streams.privacy.retention import RetentionPolicy
from streams.subject.access import DeadLetterRecord, DeadLetterTopic, find_dead_letters
from streams.subject.identifiable_store import (
    Subject,
    list_files,
    read_in_flight,
    remove_leftovers,
    rewrite_file,
    subject_mask,
)

# The event type whose class the law makes Sieve keep (tax records).
_PAYMENT_TYPE = "payment"
# Listings per erasure at most: the first, and one per round of files renamed into place.
_LISTINGS = 4


@dataclass(frozen=True)
class ErasureReport:
    """What an erasure removed (in a dry run: would remove) and what it kept, and why."""

    subject: Subject
    dry_run: bool
    rows_removed: dict[str, int]  # by retention class
    # The person's rows kept under a legal obligation (billing), by class.
    rows_retained: dict[str, int]
    files_rewritten: int
    files_deleted: int
    dead_letters_tombstoned: int | None  # None: the dead-letter topic was not searched
    # Temporary files of killed sweeps and erasures deleted (in a dry run: found).
    leftovers_removed: int
    # Worker temporary files that hold the person's rows or cannot be read yet (relative
    # paths): not erased, see the module docstring.
    in_flight_not_erased: tuple[str, ...] = ()

    @property
    def total_removed(self) -> int:
        return sum(self.rows_removed.values())

    @property
    def complete(self) -> bool:
        """Whether nothing of the person is left outside the legally held classes."""
        return not self.in_flight_not_erased


def legal_hold_classes(policy: RetentionPolicy) -> frozenset[str]:
    """Classes kept through an erasure by default: the class of payment transactions."""
    return frozenset({policy.class_of(_PAYMENT_TYPE).name})


def erase_subject(
    filesystem: pafs.FileSystem,
    root: str,
    encryption: ParquetEncryption,
    policy: RetentionPolicy,
    account_id: str,
    user_id: str | None = None,
    *,
    include_billing: bool = False,
    dead_letters: DeadLetterTopic | None = None,
    dry_run: bool = False,
) -> ErasureReport:
    """Erase one person (``user_id`` None: the whole account) everywhere; see the module.

    Files first, then dead letters (``dead_letters`` None skips the topic and reports None).
    If the broker fails after the files were done, the error says so and a second run
    finishes the job (it is idempotent).
    """
    subject = Subject(account_id, user_id)
    held = frozenset() if include_billing else legal_hold_classes(policy)
    removed: Counter[str] = Counter()
    retained: Counter[str] = Counter()
    rewritten = deleted = leftovers = 0
    seen: set[str] = set()
    # A second listing catches files a worker renamed into place during the first pass (its
    # temporary files were in flight then); stop when a listing shows nothing new.
    for _pass in range(_LISTINGS):
        listing = list_files(filesystem, root)
        if dry_run:
            leftovers = max(leftovers, len(listing.leftovers))
        else:
            leftovers += remove_leftovers(filesystem, listing)
        new = [file for file in listing.files if file.path not in seen]
        if not new and _pass > 0:
            break
        for file in new:
            seen.add(file.path)
            result = rewrite_file(
                filesystem,
                file,
                encryption,
                partial(erasure_mask, subject=subject, held=held, dataset=file.dataset),
                dry_run=dry_run,
            )
            removed.update(result.removed_rows["retention_class"].to_pylist())
            held_rows = _held_rows(result.rows, subject, held, file.dataset)
            retained.update(held_rows["retention_class"].to_pylist())
            rewritten += result.outcome == "rewritten"
            deleted += result.outcome == "deleted"
    not_erased = tuple(
        file.relative_path
        for file in listing.in_flight
        if _may_hold(read_in_flight(filesystem, file, encryption), subject, held, file.dataset)
    )
    tombstoned = None
    if dead_letters is not None:
        tombstoned = tombstone_dead_letters(dead_letters, subject, dry_run=dry_run)
    return ErasureReport(
        subject=subject,
        dry_run=dry_run,
        rows_removed=dict(sorted(removed.items())),
        rows_retained=dict(sorted(retained.items())),
        files_rewritten=rewritten,
        files_deleted=deleted,
        dead_letters_tombstoned=tombstoned,
        leftovers_removed=leftovers,
        in_flight_not_erased=not_erased,
    )


def erasure_mask(
    rows: pa.Table, subject: Subject, held: frozenset[str], dataset: Dataset
) -> pa.BooleanArray:
    """Rows of ``dataset`` to erase (pure): the subject's rows outside the legally held
    classes."""
    mask = subject_mask(rows, subject, dataset)
    if held:
        in_held = pc.is_in(rows["retention_class"], value_set=pa.array(sorted(held), pa.string()))
        mask = pc.and_(mask, pc.invert(in_held))
    return mask


def tombstone_dead_letters(
    source: DeadLetterTopic, subject: Subject, *, dry_run: bool = False
) -> int:
    """Produce a tombstone for every current dead letter naming ``subject``; return how many.

    Every tombstone goes to the partition its letter is on (same key, so compaction pairs
    them whatever partitioner wrote the letter) and is acknowledged by all in-sync replicas
    before this returns. Raises :class:`TransientError` when the broker fails; what was
    acknowledged stays done, and a second run tombstones the rest.
    """
    letters = find_dead_letters(source, subject, broad=True)
    if not dry_run and letters:
        _produce_tombstones(source, letters)
    return len(letters)


def _produce_tombstones(source: DeadLetterTopic, letters: list[DeadLetterRecord]) -> None:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    timeout_ms = int(source.timeout_seconds * 1000)
    try:
        producer = KafkaProducer(
            bootstrap_servers=source.bootstrap_servers,
            acks="all",
            request_timeout_ms=timeout_ms,
            allow_auto_create_topics=False,  # tombstones go to the dead-letter topic or nowhere
        )
    except KafkaError as error:
        raise TransientError(f"cannot reach Kafka at {source.bootstrap_servers}: {error}") from None
    try:
        futures = [
            producer.send(source.topic, key=letter.key, value=None, partition=letter.partition)
            for letter in letters
        ]
        producer.flush(timeout=source.timeout_seconds)
        for future in futures:
            future.get(timeout=source.timeout_seconds)
    except KafkaError as error:
        raise TransientError(
            f"tombstoning dead letters on {source.topic!r} failed: {error}; run the erasure again"
        ) from None
    finally:
        producer.close(timeout=source.timeout_seconds)


def _may_hold(
    rows: pa.Table | None, subject: Subject, held: frozenset[str], dataset: Dataset
) -> bool:
    if rows is None:
        return True  # not readable (yet): it may
    if not rows.num_rows:
        return False
    return bool(pc.any(erasure_mask(rows, subject, held, dataset)).as_py())


def _held_rows(
    rows: pa.Table, subject: Subject, held: frozenset[str], dataset: Dataset
) -> pa.Table:
    if not held or rows.num_rows == 0:
        return rows.slice(0, 0)
    in_held = pc.is_in(rows["retention_class"], value_set=pa.array(sorted(held), pa.string()))
    return rows.filter(pc.and_(subject_mask(rows, subject, dataset), in_held))
