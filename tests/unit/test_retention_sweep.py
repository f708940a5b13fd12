"""The retention sweep over encrypted identifiable files in a temporary data root.

Rows and files come from ``tests.fixtures.identifiable``.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from schemas.arrow import IDENTIFIABLE
from streams import storage
from streams.encryption import ParquetEncryption
from streams.subject.identifiable_store import (
    ExpiryBounds,
    UnreadableFileError,
    list_files,
    read_rows,
    rewrite_file,
)
from streams.subject.retention_sweep import (
    Plan,
    account_ends,
    account_ends_from_store,
    expired_mask,
    plan_file,
    sweep,
)
from tests.fixtures.identifiable import (
    FS,
    NOW,
    POLICY,
    US,
    new_encryption,
    record,
    snapshot,
    stored_ids,
    write_identifiable,
)

# --- the sweep -------------------------------------------------------------------------------


def test_sweep_deletes_exactly_the_expired_rows(tmp_path: Path) -> None:
    enc = new_encryption()
    day = datetime(2024, 3, 1, tzinfo=UTC)  # traffic (30 days) expires on 2024-03-31
    write_identifiable(
        tmp_path,
        [
            record("t-1", occurred_at=day),  # expires 03-31 00:00 < now: expired
            record("t-2", occurred_at=day + timedelta(hours=12) - US),  # 1 µs before now: expired
            record("t-3", occurred_at=day + timedelta(hours=12)),  # expires == now: stays
            record("t-4", occurred_at=day + timedelta(hours=12) + US),  # stays
            # Expiry is stamped from the earlier of event and arrival time (the split's rule):
            # dated later, but stamped earlier, so expired.
            record("t-5", occurred_at=day + timedelta(hours=20), expires_at=NOW - US),
        ],
        enc,
    )
    report = sweep(FS, str(tmp_path), POLICY, enc, NOW, {})

    assert stored_ids(tmp_path, enc) == {"t-3", "t-4"}
    traffic = report.by_class["traffic"]
    assert (traffic.files_deleted, traffic.files_rewritten, traffic.rows_removed) == (0, 1, 3)
    assert set(report.by_class) == {"traffic"}


def test_whole_files_are_decided_from_the_footer_without_reading_rows(tmp_path: Path) -> None:
    enc = new_encryption()
    old, fresh = datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 3, 30, tzinfo=UTC)
    write_identifiable(
        tmp_path,
        [
            record("t-1", occurred_at=old),
            record("t-2", occurred_at=old + timedelta(hours=3)),
            record("a-3", type="page_view", occurred_at=fresh),
            record("t-4", occurred_at=fresh),
        ],
        enc,
    )
    kept_before = {k: v for k, v in snapshot(tmp_path).items() if "2024-03-30" in k}
    report = sweep(FS, str(tmp_path), POLICY, enc, NOW, {})

    assert stored_ids(tmp_path, enc) == {"a-3", "t-4"}
    assert report.by_class["traffic"].files_deleted == 1
    assert report.by_class["traffic"].rows_removed == 2
    assert report.files_seen == 3
    assert report.files_decided_without_reading_rows == 3
    # Kept files are not rewritten: same bytes (a rewrite would draw fresh data keys).
    assert {k: v for k, v in snapshot(tmp_path).items() if "2024-03-30" in k} == kept_before


def test_a_file_dated_long_ago_is_kept_while_its_stamped_expiry_is_ahead(tmp_path: Path) -> None:
    # Written under a policy with a longer period than today's: the path suggests
    # "all expired", the expiry stamped on the rows says otherwise, and the stamp wins.
    enc = new_encryption()
    old = datetime(2023, 6, 1, tzinfo=UTC)
    write_identifiable(
        tmp_path, [record("p-1", type="page_view", occurred_at=old, expires_at=NOW + US)], enc
    )
    report = sweep(FS, str(tmp_path), POLICY, enc, NOW, {})
    assert stored_ids(tmp_path, enc) == {"p-1"}
    assert report.rows_removed == 0


def test_account_bound_classes_expire_30_days_after_the_account_ends(tmp_path: Path) -> None:
    enc = new_encryption()
    ended = datetime(2024, 2, 1, 9, 30, tzinfo=UTC)
    registered = ended - timedelta(days=200)
    write_identifiable(
        tmp_path,
        [
            record(
                "acc-1",
                type="account",
                account_id="gone",
                user_id=None,
                occurred_at=registered,
                properties={"action": "registered"},
            ),
            record(
                "acc-2",
                type="account",
                account_id="gone",
                user_id=None,
                occurred_at=ended,
                properties={"action": "terminated"},
            ),
            record("up-3", type="upload", account_id="gone", occurred_at=registered),
            record("up-4", type="upload", account_id="gone", occurred_at=ended - timedelta(days=1)),
            record(
                "acc-5",
                type="account",
                account_id="alive",
                user_id=None,
                occurred_at=registered,
                properties={"action": "registered"},
            ),
            record("up-6", type="upload", account_id="alive", occurred_at=registered),
            # The user of an ended account whose own termination was recorded: same fate.
            record(
                "up-7",
                type="upload",
                account_id="gone",
                user_id="u-9",
                occurred_at=ended - timedelta(days=2),
            ),
        ],
        enc,
    )
    ends = account_ends_from_store(FS, str(tmp_path), POLICY, enc)
    assert ends == {"gone": ended}
    assert record("x", type="upload")["expires_at"] is None  # account-bound: unstamped

    deadline = ended + timedelta(days=30)
    at_deadline = sweep(FS, str(tmp_path), POLICY, enc, deadline, ends)
    assert at_deadline.rows_removed == 0  # expiry == now stays
    assert stored_ids(tmp_path, enc) == {"acc-1", "acc-2", "up-3", "up-4", "acc-5", "up-6", "up-7"}

    after = sweep(FS, str(tmp_path), POLICY, enc, deadline + US, ends)
    assert stored_ids(tmp_path, enc) == {"acc-5", "up-6"}
    assert after.by_class["content"].rows_removed == 3
    assert after.by_class["account"].rows_removed == 2


def test_sweep_is_idempotent(tmp_path: Path) -> None:
    enc = new_encryption()
    day = datetime(2024, 3, 1, tzinfo=UTC)
    write_identifiable(
        tmp_path,
        [
            record("t-1", occurred_at=day),
            record("t-2", occurred_at=day + timedelta(hours=18)),
            record("t-3", occurred_at=datetime(2024, 1, 1, tzinfo=UTC)),
        ],
        enc,
    )
    first = sweep(FS, str(tmp_path), POLICY, enc, NOW, {})
    after_first = snapshot(tmp_path)
    second = sweep(FS, str(tmp_path), POLICY, enc, NOW, {})

    assert first.rows_removed == 2
    assert second.rows_removed == 0 and second.by_class == {}
    assert snapshot(tmp_path) == after_first
    assert stored_ids(tmp_path, enc) == {"t-2"}


def test_dry_run_reports_the_same_and_changes_nothing(tmp_path: Path) -> None:
    enc = new_encryption()
    day = datetime(2024, 3, 1, tzinfo=UTC)
    write_identifiable(
        tmp_path,
        [
            record("t-1", occurred_at=day),
            record("t-2", occurred_at=day + timedelta(hours=18)),
            record("t-3", occurred_at=datetime(2024, 1, 1, tzinfo=UTC)),
        ],
        enc,
    )
    before = snapshot(tmp_path)
    dry = sweep(FS, str(tmp_path), POLICY, enc, NOW, {}, dry_run=True)
    assert snapshot(tmp_path) == before
    real = sweep(FS, str(tmp_path), POLICY, enc, NOW, {})
    assert dry.dry_run and not real.dry_run
    assert dry.by_class == real.by_class


def test_rewritten_files_are_unreadable_without_the_key(tmp_path: Path) -> None:
    enc = new_encryption()
    day = datetime(2024, 3, 1, tzinfo=UTC)
    write_identifiable(
        tmp_path,
        [
            record("t-1", occurred_at=day),
            record(
                "t-2",
                occurred_at=day + timedelta(hours=18),
                account_id="acct-secret",
                ip="198.51.100.77",
            ),
        ],
        enc,
    )
    report = sweep(FS, str(tmp_path), POLICY, enc, NOW, {})
    assert report.by_class["traffic"].files_rewritten == 1
    (path,) = tmp_path.rglob("*.parquet")

    raw = path.read_bytes()
    assert b"acct-secret" not in raw and b"198.51.100.77" not in raw
    with pytest.raises(OSError, match="encrypted"):
        pq.read_table(path)
    (file,) = list_files(FS, str(tmp_path)).files
    with pytest.raises(UnreadableFileError, match=re.escape(file.relative_path)):
        read_rows(FS, file, new_encryption())  # another key with the same id
    assert read_rows(FS, file, enc)["account_id"].to_pylist() == ["acct-secret"]


def test_a_workers_temporary_files_are_left_to_the_worker(tmp_path: Path) -> None:
    enc = new_encryption()
    (path,) = write_identifiable(
        tmp_path, [record("t-1", occurred_at=datetime(2024, 1, 1, tzinfo=UTC))], enc
    )
    in_flight = path.with_name(path.name + ".tmp-abc")
    in_flight.write_bytes(b"a worker is writing this")
    report = sweep(FS, str(tmp_path), POLICY, enc, NOW, {})
    assert report.in_flight_files == 1
    assert report.leftovers_removed == 0
    assert report.rows_removed == 1
    assert in_flight.read_bytes() == b"a worker is writing this"


def test_a_sweep_removes_the_copies_killed_runs_left_before_it_searches(tmp_path: Path) -> None:
    enc = new_encryption()
    (path,) = write_identifiable(tmp_path, [record("t-1"), record("t-2")], enc)
    leftover = path.with_name(path.name + ".tmp-subject-0123abcd")
    leftover.write_bytes(path.read_bytes())  # what a killed rewrite leaves: rows, encrypted
    dry = sweep(FS, str(tmp_path), POLICY, enc, NOW, {}, dry_run=True)
    assert dry.leftovers_removed == 1 and leftover.exists()  # a dry run changes nothing
    report = sweep(FS, str(tmp_path), POLICY, enc, NOW, {})
    assert report.leftovers_removed == 1
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [path.name]


# --- crash safety of a rewrite ---------------------------------------------------------------


def test_a_crash_before_the_rename_leaves_the_original_and_no_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = new_encryption()
    day = datetime(2024, 3, 1, tzinfo=UTC)
    write_identifiable(
        tmp_path,
        [record("t-1", occurred_at=day), record("t-2", occurred_at=day + timedelta(hours=18))],
        enc,
    )
    before = snapshot(tmp_path)

    def crash(*_args: object) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(storage, "sync_file", crash)
    with pytest.raises(RuntimeError, match="killed"):
        sweep(FS, str(tmp_path), POLICY, enc, NOW, {})
    assert snapshot(tmp_path) == before
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [
        Path(k).name for k in before
    ]  # no temporary file left behind
    monkeypatch.undo()
    assert sweep(FS, str(tmp_path), POLICY, enc, NOW, {}).rows_removed == 1  # finishes the job


def test_a_temporary_file_removed_by_a_worker_recovery_is_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = new_encryption()
    day = datetime(2024, 3, 1, tzinfo=UTC)
    write_identifiable(
        tmp_path,
        [record("t-1", occurred_at=day), record("t-2", occurred_at=day + timedelta(hours=18))],
        enc,
    )
    real_sync = storage.sync_file
    removed: list[str] = []

    def recovery_strikes_once(filesystem: pafs.FileSystem, path: str) -> None:
        if not removed:
            os.remove(path)  # what recover_partition does to "<stem>.parquet.tmp-*"
            removed.append(path)
        real_sync(filesystem, path)

    monkeypatch.setattr(storage, "sync_file", recovery_strikes_once)
    report = sweep(FS, str(tmp_path), POLICY, enc, NOW, {})
    assert removed and report.rows_removed == 1
    assert stored_ids(tmp_path, enc) == {"t-2"}


def test_a_file_changed_during_a_rewrite_is_read_again(tmp_path: Path) -> None:
    enc = new_encryption()
    rows = [record("t-1"), record("t-2"), record("t-3")]
    (path,) = write_identifiable(tmp_path, rows, enc)
    (file,) = list_files(FS, str(tmp_path)).files
    calls: list[int] = []

    def remove_t1(table: pa.Table) -> pa.BooleanArray:
        if not calls:
            # Another run replaces the file between our read and our rename (t-3 erased).
            write_identifiable(tmp_path, rows[:2], enc)
            os.utime(path, ns=(1, 1))
        calls.append(table.num_rows)
        return pa.array([event == "t-1" for event in table["event_id"].to_pylist()])

    result = rewrite_file(FS, file, enc, remove_t1)
    assert calls == [3, 2]  # the second attempt saw the other run's version
    assert result.outcome == "rewritten"
    assert stored_ids(tmp_path, enc) == {"t-2"}  # t-3 did not come back


def test_rewrites_move_files_onto_the_active_key(tmp_path: Path) -> None:
    old_key = os.urandom(32)
    before_rotation = ParquetEncryption({"e1": old_key}, "e1")
    write_identifiable(
        tmp_path,
        [
            record("t-1", occurred_at=datetime(2024, 3, 1, tzinfo=UTC)),
            record("t-2", occurred_at=datetime(2024, 3, 1, 23, tzinfo=UTC)),
        ],
        before_rotation,
    )
    new_key = os.urandom(32)
    rotated = ParquetEncryption({"e1": old_key, "e2": new_key}, "e2")
    sweep(FS, str(tmp_path), POLICY, rotated, NOW, {})
    only_new = ParquetEncryption({"e2": new_key}, "e2")
    assert stored_ids(tmp_path, only_new) == {"t-2"}


# --- the pure parts --------------------------------------------------------------------------


def test_expired_mask_boundary_and_account_bound_rows() -> None:
    ended = NOW - timedelta(days=30)
    rows = pa.Table.from_pylist(
        [
            record("t-1", expires_at=NOW - US),
            record("t-2", expires_at=NOW),
            record("c-3", type="upload", account_id="gone"),  # deadline == now: stays
            record("c-4", type="upload", account_id="gone-earlier"),
            record("c-5", type="upload", account_id="alive"),
        ],
        schema=IDENTIFIABLE,
    )
    ends = {"gone": ended, "gone-earlier": ended - US}
    assert expired_mask(rows, POLICY, NOW, ends).to_pylist() == [True, False, False, True, False]
    with pytest.raises(ValueError, match="timezone-aware"):
        expired_mask(rows, POLICY, NOW.replace(tzinfo=None), ends)


def _lifecycle(account: str, action: str, at: datetime, user: str | None = None) -> dict[str, Any]:
    return record(
        f"{account}-{action}-{at.isoformat()}",
        type="account",
        account_id=account,
        user_id=user,
        occurred_at=at,
        properties={"action": action},
    )


def test_account_ends_rules() -> None:
    t = datetime(2024, 1, 1, tzinfo=UTC)
    rows = pa.Table.from_pylist(
        [
            _lifecycle("a-terminated", "registered", t),
            _lifecycle("a-terminated", "terminated", t + timedelta(days=5)),
            _lifecycle("a-back", "terminated", t),
            _lifecycle("a-back", "registered", t + timedelta(days=1)),  # lives again
            _lifecycle("a-user-left", "terminated", t, user="u-1"),  # a user, not the account
            _lifecycle("a-disabled", "disabled", t),  # reversible
            _lifecycle("a-twice", "terminated", t),
            _lifecycle("a-twice", "registered", t + timedelta(days=1)),
            _lifecycle("a-twice", "terminated", t + timedelta(days=2)),
            _lifecycle("a-tie", "registered", t),
            _lifecycle("a-tie", "terminated", t),
            record(
                "x-1",
                type="consent",
                account_id="a-consent",
                user_id=None,
                properties={"choice": "opt_out"},
            ),
        ],
        schema=IDENTIFIABLE,
    )
    assert account_ends(rows) == {
        "a-terminated": t + timedelta(days=5),
        "a-twice": t + timedelta(days=2),
        "a-tie": t,
    }


@pytest.mark.parametrize(
    ("bounds", "account_bound", "ends", "plan"),
    [
        (ExpiryBounds(3, 0, NOW, NOW + US), False, {}, Plan.KEEP),  # earliest == now stays
        (ExpiryBounds(3, 0, NOW - US, NOW), False, {}, Plan.READ),
        (ExpiryBounds(3, 0, NOW - 2 * US, NOW - US), False, {}, Plan.DELETE),
        (ExpiryBounds(0, 0, None, None), False, {}, Plan.DELETE),  # an empty file
        (None, False, {}, Plan.READ),  # no statistics
        (ExpiryBounds(3, 3, None, None), True, {}, Plan.KEEP),  # no account ended
        (ExpiryBounds(3, 3, None, None), True, {"a": NOW - timedelta(days=30)}, Plan.KEEP),
        (ExpiryBounds(3, 3, None, None), True, {"a": NOW - timedelta(days=30) - US}, Plan.READ),
        (ExpiryBounds(3, 1, NOW - US, NOW - US), True, {}, Plan.READ),  # a stamped row expired
    ],
)
def test_plan_file(
    bounds: ExpiryBounds | None, account_bound: bool, ends: dict[str, datetime], plan: Plan
) -> None:
    cls = POLICY.classes["content" if account_bound else "traffic"]
    assert plan_file(bounds, cls, NOW, ends) is plan
