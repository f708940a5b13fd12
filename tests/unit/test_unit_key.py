"""The privacy unit of each fact (issue 8): the subject key for an event with a user, else a
per-day HMAC of the account and session, else of the account and IP address, else null."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, date, datetime

import pyarrow as pa

from schemas.arrow import FACTS
from schemas.events import Event, Login, PageView
from streams.privacy.keyring import Keyring
from streams.privacy.pseudonymize import subject_day_key, userless_unit_keys
from streams.privacy.retention import load_policy
from streams.privacy.split import Enrichment, split

KEYRING = Keyring.generate()
NOON = datetime(2026, 10, 30, 12, tzinfo=UTC)
NEXT_DAY = datetime(2026, 10, 31, 12, tzinfo=UTC)


def _view(n: int, *, at: datetime = NOON, account: str = "acct-1", **fields: object) -> Event:
    return PageView(
        schema_version=1, event_id=f"e{n}", occurred_at=at, account_id=account, path="/", **fields
    )  # type: ignore[arg-type]


def _facts(events: list[Event]) -> pa.Table:
    count = len(events)
    return split(
        events,
        keep_identifiable=[True] * count,
        received_at_ms=[0] * count,
        partition=0,
        offsets=list(range(count)),
        enrichment=Enrichment(
            country=["ZZ"] * count,
            device_class=["unknown"] * count,
            browser_family=["Other"] * count,
            os_family=["Other"] * count,
            is_bot=[False] * count,
        ),
        policy=load_policy(None),
        keyring=KEYRING,
    ).tables["facts"]


def _expected(prefix: bytes, account: str, value: str, day: date) -> str:
    # Computed apart from the module: HMAC-SHA256 under the subject key of the day, of the
    # prefixed, length-prefixed (account, value), truncated to 128 bits.
    message = prefix + b"%d:" % len(account.encode()) + account.encode() + value.encode()
    return hmac.new(subject_day_key(KEYRING, day), message, hashlib.sha256).digest()[:16].hex()


def test_unit_key_is_the_subject_key_the_session_the_ip_or_null() -> None:
    events = [
        _view(0, user_id="u1", session_id="s1", ip="10.0.0.1"),
        _view(1, session_id="s1", ip="10.0.0.1"),
        _view(2, session_id="s1", ip="10.9.9.9"),
        _view(3, session_id="s2", ip="10.0.0.1"),
        _view(4, ip="2001:DB8::1"),
        _view(5, ip="2001:db8:0::1"),
        _view(6),
        _view(7, session_id="s1", at=NEXT_DAY),
        _view(8, session_id="s1", account="acct-2"),
    ]
    facts = _facts(events)
    units = facts["unit_key"].to_pylist()
    subjects = facts["subject_key"].to_pylist()

    assert units[0] == subjects[0] is not None
    assert subjects[1:] == [None] * 8
    day = NOON.date()
    assert units[1] == units[2] == _expected(b"unit-session\x00", "acct-1", "s1", day)
    assert units[3] == _expected(b"unit-session\x00", "acct-1", "s2", day)
    assert units[4] == units[5] == _expected(b"unit-ip\x00", "acct-1", "2001:db8::1", day)
    assert units[6] is None
    assert units[7] == _expected(b"unit-session\x00", "acct-1", "s1", NEXT_DAY.date())
    assert len({units[1], units[3], units[4], units[7], units[8]}) == 5
    assert set(facts["key_id"].to_pylist()) == {KEYRING.pseudonymization_key_id}
    assert FACTS.field("unit_key").nullable


def test_no_raw_session_or_address_reaches_the_facts() -> None:
    events = [_view(1, session_id="sess-planted", ip="10.1.2.3"), _view(2, ip="10.4.5.6")]
    cells = {str(c) for column in _facts(events).columns for c in column.to_pylist()}
    assert not any("sess-planted" in c or "10.1.2.3" in c or "10.4.5.6" in c for c in cells)


def test_a_session_id_never_hashes_like_a_user_id() -> None:
    with_user = Login(
        schema_version=1, event_id="l1", occurred_at=NOON, account_id="acct-1", user_id="x"
    )
    without = Login(
        schema_version=1, event_id="l2", occurred_at=NOON, account_id="acct-1", session_id="x"
    )
    units = _facts([with_user, without])["unit_key"].to_pylist()
    assert units[0] != units[1]


def test_userless_unit_keys_is_aligned_and_prefers_the_session() -> None:
    day = NOON.date()
    keys = userless_unit_keys(
        ["a", "a", "a"], ["s", None, None], ["10.0.0.1", "10.0.0.1", None], [day] * 3, KEYRING
    )
    assert keys[0] == _expected(b"unit-session\x00", "a", "s", day)
    assert keys[1] == _expected(b"unit-ip\x00", "a", "10.0.0.1", day)
    assert keys[2] is None
