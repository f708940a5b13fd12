"""Erasure of one person from the identifiable files (dead letters: the integration test)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from schemas.arrow import FACTS, IDENTIFIABLE
from schemas.commits import OutputCounts, RangeCounts
from schemas.datasets import IDENTIFIABLE_DATASET
from streams.privacy.retention import load_policy
from streams.subject.erasure import erase_subject, erasure_mask, legal_hold_classes
from streams.subject.identifiable_store import Subject, list_files
from streams.worker.sink import RangeWriter
from tests.fixtures.identifiable import (
    new_encryption,
    record,
    snapshot,
    stored_ids,
    write_identifiable,
)

FS = pafs.LocalFileSystem()
POLICY = load_policy()
T = datetime(2024, 3, 20, 8, tzinfo=UTC)
ENC = new_encryption()


def _store(root: Path) -> None:
    write_identifiable(
        root,
        [
            # The person, in every class.
            record("mine-traffic", occurred_at=T),
            record("mine-activity", type="page_view", occurred_at=T),
            record("mine-content", type="upload", occurred_at=T),
            record("mine-billing", type="payment", occurred_at=T, properties={"amount": "9.90"}),
            record("mine-consent", type="consent", occurred_at=T),
            # Alone in its file: the file goes.
            record("mine-old", occurred_at=T - timedelta(days=2)),
            # Others, sharing those files.
            record("colleague-traffic", user_id="user-2", occurred_at=T),
            record("colleague-billing", type="payment", user_id="user-2", occurred_at=T),
            record("account-level", type="account", user_id=None, occurred_at=T),
            record("namesake", account_id="acct-2", occurred_at=T),
        ],
        ENC,
    )


def test_erasure_removes_exactly_the_person_and_keeps_billing(tmp_path: Path) -> None:
    _store(tmp_path)
    report = erase_subject(FS, str(tmp_path), ENC, POLICY, "acct-1", "user-1")

    assert stored_ids(tmp_path, ENC) == {
        "mine-billing",  # retained: tax
        "colleague-traffic",
        "colleague-billing",
        "account-level",
        "namesake",
    }
    assert report.rows_removed == {"account": 1, "activity": 1, "content": 1, "traffic": 2}
    assert report.rows_retained == {"billing": 1}
    assert report.files_deleted == 3  # activity, content, the old traffic day: only theirs
    assert report.files_rewritten == 2  # traffic and account files shared with others
    assert report.dead_letters_tombstoned is None  # topic not searched
    assert not report.dry_run


def test_include_billing_erases_payment_records_too(tmp_path: Path) -> None:
    _store(tmp_path)
    report = erase_subject(FS, str(tmp_path), ENC, POLICY, "acct-1", "user-1", include_billing=True)
    assert "mine-billing" not in stored_ids(tmp_path, ENC)
    assert "colleague-billing" in stored_ids(tmp_path, ENC)
    assert report.rows_removed["billing"] == 1
    assert report.rows_retained == {}


def test_erasure_without_a_user_erases_the_whole_account(tmp_path: Path) -> None:
    _store(tmp_path)
    report = erase_subject(FS, str(tmp_path), ENC, POLICY, "acct-1")
    assert stored_ids(tmp_path, ENC) == {"mine-billing", "colleague-billing", "namesake"}
    assert report.rows_retained == {"billing": 2}
    assert report.total_removed == 7


def test_erasure_is_idempotent_and_a_dry_run_changes_nothing(tmp_path: Path) -> None:
    _store(tmp_path)
    before = snapshot(tmp_path)
    dry = erase_subject(FS, str(tmp_path), ENC, POLICY, "acct-1", "user-1", dry_run=True)
    assert snapshot(tmp_path) == before

    real = erase_subject(FS, str(tmp_path), ENC, POLICY, "acct-1", "user-1")
    assert (dry.rows_removed, dry.rows_retained, dry.files_deleted, dry.files_rewritten) == (
        real.rows_removed,
        real.rows_retained,
        real.files_deleted,
        real.files_rewritten,
    )
    after = snapshot(tmp_path)
    again = erase_subject(FS, str(tmp_path), ENC, POLICY, "acct-1", "user-1")
    assert again.rows_removed == {} and again.files_deleted == again.files_rewritten == 0
    assert again.rows_retained == {"billing": 1}  # still reported as held
    assert snapshot(tmp_path) == after


def test_files_written_by_the_worker_sink_are_erased(tmp_path: Path) -> None:
    # The real writer: same layout, schema and encryption as production.
    rows = pa.Table.from_pylist(
        [record("mine-1", occurred_at=T), record("other-2", user_id="user-2", occurred_at=T)],
        schema=IDENTIFIABLE,
    )
    RangeWriter(FS, str(tmp_path), ENC, "test").commit(
        topic="sieve.raw",
        partition=3,
        first_offset=10,
        last_offset=11,
        tables={"identifiable": rows, "facts": FACTS.empty_table()},
        counts=RangeCounts(
            raw=2,
            accepted=2,
            duplicates=0,
            dead_lettered={},
            outputs={"identifiable": OutputCounts(2, {"traffic": 2}), "facts": OutputCounts(0)},
            bytes_written=0,
        ),
        watermark=None,
        consent_changes=[],
    )
    (file,) = list_files(FS, str(tmp_path)).files
    assert file.relative_path == (
        "identifiable/retention_class=traffic/region=eu/date=2024-03-20/sieve.raw+3+10-11.parquet"
    )
    report = erase_subject(FS, str(tmp_path), ENC, POLICY, "acct-1", "user-1")
    assert report.rows_removed == {"traffic": 1}
    assert stored_ids(tmp_path, ENC) == {"other-2"}


def test_erasure_mask_is_pure_and_exact() -> None:
    rows = pa.Table.from_pylist(
        [
            record("a", occurred_at=T),
            record("b", type="payment", occurred_at=T),
            record("c", user_id=None, occurred_at=T),  # the account, not this user
            record("d", account_id="acct-10", occurred_at=T),
        ],
        schema=IDENTIFIABLE,
    )
    held = legal_hold_classes(POLICY)
    assert held == frozenset({"billing"})
    person = Subject("acct-1", "user-1")
    assert erasure_mask(rows, person, held, IDENTIFIABLE_DATASET).to_pylist() == [
        True,
        False,
        False,
        False,
    ]
    assert erasure_mask(rows, person, frozenset(), IDENTIFIABLE_DATASET).to_pylist() == [
        True,
        True,
        False,
        False,
    ]
    assert erasure_mask(rows, Subject("acct-1"), frozenset(), IDENTIFIABLE_DATASET).to_pylist() == [
        True,
        True,
        True,
        False,
    ]
