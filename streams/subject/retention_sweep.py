"""The retention sweep: delete every identifiable record whose retention period is over.

A record has expired when

* its ``expires_at`` is before ``now`` (a record expiring exactly at ``now`` stays), or
* its ``expires_at`` is null (an account-bound class: "while the account lives, then N
  days") and its account ended so long ago that ``policy.account_bound_expiry`` is before
  ``now``. When accounts ended comes from the store itself: :func:`account_ends_from_store`.

Most files are decided without reading a row: the file's encrypted footer carries the
minimum, maximum and null count of ``expires_at`` (decrypting it costs one small read), so a
file is either kept (earliest expiry not past; account-bound rows whose account has not
ended long enough), deleted whole (latest expiry past), or read and rewritten without its
expired rows. The footer is exact whatever the policy says today: a period shortened since
the rows were written never deletes them before the expiry stamped on them (tax records),
and a lengthened one never keeps them past it.

The hive path alone cannot decide a file, although it names the class and the event date:
the split counts expiry from the *earlier* of event time and arrival time (a client clock
set years ahead must not stretch how long its IP address is kept), so a row dated D can
expire long before D + period. Only the class from the path is used, for the period of
account-bound rows.

Guarantees: idempotent (a second sweep with the same ``now`` removes nothing); crash-safe
(every file is replaced by temporary file and rename, so after a crash, even ``kill -9``,
each file holds either all its rows or exactly the unexpired ones, and the next sweep
finishes the job). A sweep first deletes the temporary files that killed sweeps and
erasures left (they hold copies of rows, expired ones included); a worker's temporary files
are left to the worker (:mod:`streams.subject.identifiable_store`) and counted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from streams.encryption import ParquetEncryption
from streams.privacy.retention import RetentionClass, RetentionPolicy
from streams.subject.identifiable_store import (
    ExpiryBounds,
    FileChangedError,
    IdentifiableFile,
    delete_file,
    expiry_bounds,
    list_files,
    read_rows,
    remove_leftovers,
    rewrite_file,
)

_LIFECYCLE_TYPE = "account"  # the event type of registrations and terminations
_TERMINATED = "terminated"
_REGISTERED = "registered"
_ACCOUNT_END_COLUMNS = ["type", "occurred_at", "account_id", "user_id", "properties"]


class Plan(Enum):
    """What to do with one file before reading its rows."""

    KEEP = "keep"  # no row can have expired
    DELETE = "delete"  # every row has expired
    READ = "read"  # only the rows can tell


@dataclass
class ClassSweep:
    """What the sweep did to one retention class."""

    files_deleted: int = 0
    files_rewritten: int = 0
    rows_removed: int = 0


@dataclass(frozen=True)
class SweepReport:
    """Counts of one sweep; in a dry run, what it would have done."""

    now: datetime
    dry_run: bool
    by_class: dict[str, ClassSweep]
    files_seen: int
    files_decided_without_reading_rows: int
    # Temporary files of killed sweeps and erasures deleted (in a dry run: found).
    leftovers_removed: int
    # A worker's temporary files (a write in progress, or a killed worker's leftover that its
    # partition's recovery deletes): not the sweep's to touch, counted.
    in_flight_files: int
    # Classes found in files but missing from the policy: their rows only expire by their
    # own expires_at; rows of such a class without one are kept (and need a decision).
    unknown_classes: frozenset[str] = field(default_factory=frozenset)

    @property
    def rows_removed(self) -> int:
        return sum(c.rows_removed for c in self.by_class.values())


def sweep(
    filesystem: pafs.FileSystem,
    root: str,
    policy: RetentionPolicy,
    encryption: ParquetEncryption,
    now: datetime,
    account_ends: Mapping[str, datetime],
    *,
    dry_run: bool = False,
) -> SweepReport:
    """Delete every expired identifiable record under ``root`` (see the module docstring).

    ``account_ends`` maps account ids to when the account ended (terminated). ``dry_run``
    reads and counts but changes nothing.
    """
    _require_aware(now, "now")
    listing = list_files(filesystem, root)
    leftovers = len(listing.leftovers) if dry_run else remove_leftovers(filesystem, listing)
    by_class: dict[str, ClassSweep] = {}
    unknown: set[str] = set()
    without_rows = 0
    for file in listing.files:
        if file.retention_class is not None and file.retention_class not in policy.classes:
            unknown.add(file.retention_class)
        try:
            bounds = expiry_bounds(filesystem, file, encryption)
        except FileNotFoundError:
            continue  # deleted since it was listed (an erasure emptied it)
        cls = policy.classes.get(file.retention_class or "")
        plan = plan_file(bounds, cls, now, account_ends)
        rows = bounds.rows if bounds is not None else 0
        if plan is Plan.DELETE:
            try:
                if not dry_run:
                    delete_file(filesystem, file)
            except FileChangedError:
                # Rewritten since it was listed (an erasure): decide the new version by rows.
                plan = Plan.READ
            else:
                _count(by_class, file.retention_class, deleted=1, rows=rows)
        if plan is Plan.READ:
            _sweep_rows(
                filesystem, file, encryption, policy, now, account_ends, by_class, unknown, dry_run
            )
        else:
            without_rows += 1
    return SweepReport(
        now=now,
        dry_run=dry_run,
        by_class=by_class,
        files_seen=len(listing.files),
        files_decided_without_reading_rows=without_rows,
        leftovers_removed=leftovers,
        in_flight_files=len(listing.in_flight),
        unknown_classes=frozenset(unknown),
    )


def plan_file(
    bounds: ExpiryBounds | None,
    retention_class: RetentionClass | None,
    now: datetime,
    account_ends: Mapping[str, datetime],
) -> Plan:
    """Decide a file from its footer's ``expires_at`` statistics and its path's class (pure).

    Unstamped rows (account-bound) can only have expired if some account ended more than the
    class's period ago; which account a row belongs to needs the rows.
    """
    if bounds is None:
        return Plan.READ  # no usable statistics
    stamped = bounds.rows - bounds.nulls
    if stamped and (bounds.earliest is None or bounds.latest is None):
        return Plan.READ
    if bounds.nulls == 0:
        if bounds.latest is None or bounds.latest < now:
            return Plan.DELETE  # every expiry is past (or the file holds no row at all)
        return Plan.KEEP if bounds.earliest is not None and bounds.earliest >= now else Plan.READ
    if stamped and bounds.earliest is not None and bounds.earliest < now:
        return Plan.READ
    if retention_class is None:
        return Plan.READ  # a class the policy does not know: only the rows can tell
    period = timedelta(days=retention_class.days)
    if any(end + period < now for end in account_ends.values()):
        return Plan.READ
    return Plan.KEEP


def expired_mask(
    rows: pa.Table,
    policy: RetentionPolicy,
    now: datetime,
    account_ends: Mapping[str, datetime],
) -> pa.BooleanArray:
    """Which rows have expired at ``now`` (pure; see the module docstring for the rule)."""
    _require_aware(now, "now")
    expires = rows["expires_at"]
    stamped = pc.fill_null(pc.less(expires, pa.scalar(now, type=expires.type)), False)
    expired: list[bool] = stamped.to_pylist()
    unstamped = pc.indices_nonzero(pc.is_null(expires)).to_pylist()
    if unstamped:
        classes = rows["retention_class"].to_pylist()
        accounts = rows["account_id"].to_pylist()
        deadlines: dict[tuple[str, str], datetime | None] = {}
        for index in unstamped:
            pair = (classes[index], accounts[index])
            if pair not in deadlines:
                deadlines[pair] = _account_bound_deadline(policy, *pair, account_ends)
            deadline = deadlines[pair]
            expired[index] = deadline is not None and deadline < now
    return pa.array(expired, pa.bool_())


def account_ends(rows: pa.Table) -> dict[str, datetime]:
    """When each ended account ended, from its lifecycle records (pure).

    An account has ended when its latest account-level lifecycle record (type ``account``,
    no user id) with action ``registered`` or ``terminated`` is a termination; a
    re-registration after a termination means the account lives again. A user's own
    termination ends that user, not the account, and ``disabled`` is reversible: neither
    starts the account's countdown. On equal instants the termination wins.
    """
    latest: dict[str, tuple[datetime, bool]] = {}
    lifecycle = rows.filter(
        pc.and_(pc.equal(rows["type"], _LIFECYCLE_TYPE), pc.is_null(rows["user_id"]))
    )
    columns = lifecycle.select(["occurred_at", "account_id", "properties"]).to_pylist()
    for row in columns:
        action = _action(row["properties"])
        if action not in (_TERMINATED, _REGISTERED):
            continue
        candidate = (row["occurred_at"], action == _TERMINATED)
        current = latest.get(row["account_id"])
        if current is None or candidate > current:
            latest[row["account_id"]] = candidate
    return {account: at for account, (at, terminated) in latest.items() if terminated}


def account_ends_from_store(
    filesystem: pafs.FileSystem,
    root: str,
    policy: RetentionPolicy,
    encryption: ParquetEncryption,
) -> dict[str, datetime]:
    """:func:`account_ends` over every file of the class lifecycle records are kept in.

    Caveat: a termination record expires with the account-bound records it ends (the
    account class is account-bound too), so an account-bound record written *after* that
    sweep has no end to expire by and is kept until the account terminates again. The split
    stops collecting content at termination, but keeps account-class records (lifecycle,
    consent) despite it, so a lifecycle or consent event arriving more than 30 days after
    its account's termination is the case to watch.
    """
    lifecycle_class = policy.class_of(_LIFECYCLE_TYPE).name
    tables = []
    for file in list_files(filesystem, root).files:
        if file.retention_class not in (lifecycle_class, None):
            continue
        try:
            tables.append(read_rows(filesystem, file, encryption, columns=_ACCOUNT_END_COLUMNS))
        except FileNotFoundError:
            continue  # an uncommitted file a worker's recovery just removed
    if not tables:
        return {}
    return account_ends(pa.concat_tables(tables))


def _account_bound_deadline(
    policy: RetentionPolicy, class_name: str, account_id: str, ends: Mapping[str, datetime]
) -> datetime | None:
    cls = policy.classes.get(class_name)
    end = ends.get(account_id)
    if cls is None or end is None:
        return None
    if cls.account_bound:
        return policy.account_bound_expiry(class_name, end)
    # The class had no fixed period when this row was written (no expires_at) and has one
    # now: the row was account-bound; count its period from the account's end all the same.
    return end + timedelta(days=cls.days)


def _count(
    by_class: dict[str, ClassSweep],
    class_name: str | None,
    *,
    deleted: int = 0,
    rewritten: int = 0,
    rows: int = 0,
) -> None:
    counts = by_class.setdefault(class_name or "?", ClassSweep())
    counts.files_deleted += deleted
    counts.files_rewritten += rewritten
    counts.rows_removed += rows


def _sweep_rows(
    filesystem: pafs.FileSystem,
    file: IdentifiableFile,
    encryption: ParquetEncryption,
    policy: RetentionPolicy,
    now: datetime,
    ends: Mapping[str, datetime],
    by_class: dict[str, ClassSweep],
    unknown: set[str],
    dry_run: bool,
) -> None:
    result = rewrite_file(
        filesystem,
        file,
        encryption,
        lambda rows: expired_mask(rows, policy, now, ends),
        dry_run=dry_run,
    )
    unknown.update(
        c for c in set(result.rows["retention_class"].to_pylist()) if c not in policy.classes
    )
    if result.outcome in ("unchanged", "vanished"):
        return
    removed = Counter(result.removed_rows["retention_class"].to_pylist())
    for class_name, count in removed.items():
        _count(by_class, class_name, rows=count)
    # A file holds one class (its path says which); count the file under that class.
    owner = file.retention_class or removed.most_common(1)[0][0]
    if result.outcome == "deleted":
        _count(by_class, owner, deleted=1)
    else:
        _count(by_class, owner, rewritten=1)


def _action(properties: str | None) -> str | None:
    if not properties:
        return None
    try:
        document = json.loads(properties)
    except (ValueError, RecursionError):
        # RecursionError: nesting deeper than the interpreter's limit; it holds no action.
        return None
    action = document.get("action") if isinstance(document, dict) else None
    return action if isinstance(action, str) else None


def _require_aware(instant: datetime, name: str) -> None:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {instant!r}")
