"""Access requests: exactly the person's records, across classes, as JSON lines."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from streams.subject.access import (
    DeadLetterRecord,
    export_subject,
    iter_subject_tables,
    mentions,
    write_export,
)
from streams.subject.identifiable_store import Subject
from tests.fixtures.identifiable import new_encryption, record, write_identifiable

FS = pafs.LocalFileSystem()
T = datetime(2024, 3, 20, 8, tzinfo=UTC)
ENC = new_encryption()


def _store(root: Path) -> None:
    """The person (acct-1, user-1) in every class, next to people who look alike."""
    rows = [
        record("mine-traffic", occurred_at=T),
        record("mine-activity", type="page_view", occurred_at=T + timedelta(hours=1)),
        record("mine-content", type="upload", occurred_at=T - timedelta(days=3)),
        record("mine-billing", type="payment", occurred_at=T - timedelta(days=40)),
        record(
            "mine-account",
            type="consent",
            occurred_at=T + timedelta(hours=2),
            properties={"choice": "opt_out"},
        ),
        record("mine-us", occurred_at=T + timedelta(minutes=5), region="us"),
        # Same account, another user; the account itself (no user); same user id elsewhere.
        record("colleague", user_id="user-2", occurred_at=T),
        record(
            "account-level",
            type="account",
            user_id=None,
            occurred_at=T,
            properties={"action": "registered"},
        ),
        record("namesake", account_id="acct-2", occurred_at=T),
        record("prefix", account_id="acct-10", user_id="user-1", occurred_at=T),
    ]
    write_identifiable(root, rows, ENC)


def test_export_returns_exactly_the_persons_rows_across_classes(tmp_path: Path) -> None:
    _store(tmp_path)
    export = export_subject(FS, str(tmp_path), ENC, "acct-1", "user-1")

    assert export.rows["event_id"].to_pylist() == [
        # Ordered by event time.
        "mine-billing",
        "mine-content",
        "mine-traffic",
        "mine-us",
        "mine-activity",
        "mine-account",
    ]
    assert export.rows_by_class == {
        "account": 1,
        "activity": 1,
        "billing": 1,
        "content": 1,
        "traffic": 2,
    }
    assert export.dead_letters is None  # not searched unless asked
    # Decrypted: the traffic record's IP address is there in clear.
    by_id = {row["event_id"]: row for row in export.rows.to_pylist()}
    assert by_id["mine-traffic"]["ip"] == "192.0.2.1"
    assert by_id["mine-traffic"]["account_id"] == "acct-1"


def test_export_without_a_user_is_the_whole_account(tmp_path: Path) -> None:
    _store(tmp_path)
    export = export_subject(FS, str(tmp_path), ENC, "acct-1")
    assert set(export.rows["event_id"].to_pylist()) == {
        "mine-traffic",
        "mine-activity",
        "mine-content",
        "mine-billing",
        "mine-account",
        "mine-us",
        "colleague",
        "account-level",
    }


def test_export_of_someone_unknown_is_empty(tmp_path: Path) -> None:
    _store(tmp_path)
    export = export_subject(FS, str(tmp_path), ENC, "acct-1", "nobody")
    assert export.rows.num_rows == 0
    assert export.rows_by_class == {}


def test_json_lines_hold_every_record_then_a_summary(tmp_path: Path) -> None:
    _store(tmp_path)
    subject = Subject("acct-1", "user-1")
    letter = DeadLetterRecord(
        partition=1,
        offset=7,
        timestamp_ms=1_710_000_000_000,
        key=b"sieve.raw+0+42",
        value=b'{"account_id": "acct-1", "user_id": "user-1", "ip": "300.1.1.1"}',
        headers=(("sieve.error.code", b"invalid_ip"), ("binary", b"\xff\xfe")),
    )
    out = io.StringIO()
    summary = write_export(
        iter_subject_tables(FS, str(tmp_path), ENC, subject), [letter], subject, out
    )
    lines = [json.loads(line) for line in out.getvalue().splitlines()]

    records = [line for line in lines if line["kind"] == "identifiable"]
    assert sorted(r["event_id"] for r in records) == sorted(
        ["mine-traffic", "mine-activity", "mine-content", "mine-billing", "mine-account", "mine-us"]
    )
    consent = next(r for r in records if r["event_id"] == "mine-account")
    assert consent["properties"] == {"choice": "opt_out"}  # parsed, not a string
    assert consent["occurred_at"] == "2024-03-20T10:00:00+00:00"
    (dead,) = [line for line in lines if line["kind"] == "dead_letter"]
    assert dead["key"] == "sieve.raw+0+42" and dead["offset"] == 7
    # Every header, in order (a name may repeat); a binary value as base64.
    assert dead["headers"] == [["sieve.error.code", "invalid_ip"], ["binary", {"base64": "//4="}]]
    assert lines[-1] == {
        "kind": "summary",
        "account_id": "acct-1",
        "user_id": "user-1",
        "identifiable_rows_by_class": {
            "account": 1,
            "activity": 1,
            "billing": 1,
            "content": 1,
            "traffic": 2,
        },
        "dead_letters": 1,
        "in_flight_unreadable": [],
        "leftover_copies": 0,
    }
    assert summary.rows == 6 and summary.dead_letters == 1


# --- which dead letters are about a person ---------------------------------------------------

PERSON = Subject("acct-1", "user-1")


@pytest.mark.parametrize(
    ("value", "headers", "subject", "exported", "erased"),
    [
        (b'{"account_id":"acct-1","user_id":"user-1","ip":"x"}', (), PERSON, True, True),
        # JSON escapes are undone before comparing.
        (b'{"account_id":"acct\\u002d1","user_id":"user-1"}', (), PERSON, True, True),
        # Both ids are needed: user ids are unique only within an account.
        (b'{"account_id":"acct-2","user_id":"user-1"}', (), PERSON, False, False),
        (b'{"account_id":"acct-1","user_id":"user-2"}', (), PERSON, False, False),
        (b'{"account_id":"acct-1"}', (), Subject("acct-1"), True, True),
        # Whole tokens only: acct-10 is someone else.
        (b'{"account_id":"acct-10","user_id":"user-1"}', (), PERSON, False, False),
        (b'{"account_id":"acct-1","user_id":"user-10"}', (), PERSON, False, False),
        # A colleague's letter that mentions the person inside a longer string: erased, but
        # never exported to the person (it is the colleague's data).
        (b'{"account_id":"acct-1","user_id":"user-2","path":"/u/user-1"}', (), PERSON, False, True),
        # Not JSON (cut): the ids as tokens in the raw bytes.
        (b'{"account_id":"acct-1","user_id":"user-1","pa', (), PERSON, True, True),
        (b'{"account_id":"acct-1","user_id":"user-12","pa', (), PERSON, False, False),
        (b"\xff\xfe not even text acct-1 user-1", (), PERSON, True, True),
        # A misspelled field name still holds the id as a value.
        (b'{"account_id":"acct-1","userId":"user-1"}', (), PERSON, True, True),
        # In an original header rather than the value.
        (b"garbage", (("x-user", b"user-1"), ("x-account", b"acct-1")), PERSON, True, True),
        (b'{"account_id":"acct-1"}', (("x-user", b"user-1"),), PERSON, True, True),
        (b"", (), Subject("acct-1"), False, False),
    ],
)
def test_mentions(
    value: bytes,
    headers: tuple[tuple[str, bytes], ...],
    subject: Subject,
    exported: bool,
    erased: bool,
) -> None:
    assert mentions(value, headers, subject) is exported
    assert mentions(value, headers, subject, broad=True) is erased
