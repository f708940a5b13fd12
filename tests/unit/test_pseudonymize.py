"""Keyed pseudonyms: stable under one key, unrelated under another, separated by purpose and day."""

from __future__ import annotations

import hmac
import string
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.privacy.keyring import Keyring
from streams.privacy.pseudonymize import (
    PSEUDONYM_HEX_CHARS,
    _mac_function,
    consent_keys,
    derive_key,
    event_keys,
    subject_day_key,
    subject_keys,
)

# Identifiers per the schema: printable ASCII without space.
ids = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=24)
days = st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1))
HEX = set(string.hexdigits.lower())


def _keyring(seed: int, *, active: str = "p1") -> Keyring:
    return Keyring(
        pseudonymization={"p1": bytes([seed]) * 32, "p2": bytes([seed + 1]) * 32},
        pseudonymization_active=active,
        encryption={"e1": b"e" * 32},
        encryption_active="e1",
        consent="p1",
    )


KEYRING = _keyring(1)
OTHER = _keyring(7)


def _is_pseudonym(value: str | None) -> bool:
    return value is not None and len(value) == PSEUDONYM_HEX_CHARS and set(value) <= HEX


@given(st.binary(max_size=200), st.binary(max_size=300))
def test_mac_is_rfc2104_hmac_sha256_truncated(key: bytes, message: bytes) -> None:
    # The fast path precomputes pad states by hand: it must agree with the standard library
    # for every key length, including keys longer than the block (hashed first).
    expected = hmac.digest(key, message, "sha256")[:16].hex()
    assert _mac_function(key)(message) == expected


def test_event_key_is_hmac_of_the_id_under_the_event_purpose_key() -> None:
    purpose_key = derive_key(KEYRING.pseudonymization_key(), b"event\x00")
    expected = hmac.digest(purpose_key, b"evt-1", "sha256")[:16].hex()
    assert event_keys(["evt-1"], KEYRING) == [expected]


@given(st.lists(ids, max_size=30))
def test_event_keys_are_stable_aligned_and_independent_of_the_batch(event_ids: list[str]) -> None:
    keys = event_keys(event_ids, KEYRING)
    assert len(keys) == len(event_ids)
    assert all(_is_pseudonym(k) for k in keys)
    assert keys == event_keys(event_ids, KEYRING)
    # Hashing distinct values once must not change any single value's pseudonym.
    assert keys == [event_keys([event_id], KEYRING)[0] for event_id in event_ids]


@given(st.lists(ids, min_size=1, max_size=30, unique=True))
def test_event_keys_differ_under_another_key_and_do_not_collide(event_ids: list[str]) -> None:
    keys = event_keys(event_ids, KEYRING)
    assert len(set(keys)) == len(event_ids)
    other = event_keys(event_ids, OTHER)
    assert all(a != b for a, b in zip(keys, other, strict=True))


def test_event_keys_follow_the_active_key() -> None:
    rotated = _keyring(1, active="p2")
    assert event_keys(["evt-1"], rotated) != event_keys(["evt-1"], KEYRING)


@given(ids, ids, days)
def test_subject_keys_stable_within_a_day_and_unlinkable_across_days(
    account_id: str, user_id: str, day: date
) -> None:
    next_day = day + timedelta(days=1)
    keys = subject_keys([account_id] * 3, [user_id] * 3, [day, day, next_day], KEYRING)
    assert _is_pseudonym(keys[0])
    assert keys[0] == keys[1]
    assert keys[0] != keys[2]
    assert subject_keys([account_id], [user_id], [day], OTHER) != keys[:1]


@given(st.lists(st.tuples(ids, ids, days), min_size=1, max_size=30, unique=True))
def test_subject_keys_do_not_collide_on_distinct_inputs(
    triples: list[tuple[str, str, date]],
) -> None:
    accounts, users, on_days = (list(column) for column in zip(*triples, strict=True))
    keys = subject_keys(accounts, users, on_days, KEYRING)
    assert len(set(keys)) == len(triples)


def test_subject_key_is_none_without_a_user() -> None:
    keys = subject_keys(["a", "a"], [None, "u"], [date(2024, 1, 1)] * 2, KEYRING)
    assert keys[0] is None and _is_pseudonym(keys[1])


def test_subject_key_day_key_is_derived_from_the_date() -> None:
    day = date(2024, 2, 29)
    expected_key = hmac.digest(
        KEYRING.pseudonymization_key(), b"subject-day\x002024-02-29", "sha256"
    )
    assert subject_day_key(KEYRING, day) == expected_key


def test_account_user_boundary_is_unambiguous() -> None:
    day = date(2024, 1, 1)
    keys = subject_keys(["ab", "a"], ["c", "bc"], [day, day], KEYRING)
    assert keys[0] != keys[1]
    assert (
        consent_keys(["ab", "a"], ["c", "bc"], KEYRING)[0]
        != consent_keys(["a"], ["bc"], KEYRING)[0]
    )


@given(ids, ids)
def test_consent_keys_separate_accounts_from_people_and_from_other_purposes(
    account_id: str, user_id: str
) -> None:
    person, account = consent_keys([account_id, account_id], [user_id, None], KEYRING)
    assert _is_pseudonym(person) and _is_pseudonym(account)
    assert person != account
    # The same strings under the event or subject purpose give unrelated pseudonyms.
    assert account not in event_keys([account_id], KEYRING)
    assert person not in subject_keys([account_id], [user_id], [date(2024, 1, 1)], KEYRING)


@given(ids, st.one_of(st.none(), ids))
def test_consent_keys_survive_rotation_of_the_active_key(
    account_id: str, user_id: str | None
) -> None:
    # The consent state holds only these pseudonyms: if rotation changed them, every
    # opted-out person would be collected again.
    rotated = _keyring(1, active="p2")
    assert consent_keys([account_id], [user_id], rotated) == consent_keys(
        [account_id], [user_id], KEYRING
    )
    assert consent_keys([account_id], [user_id], OTHER) != consent_keys(
        [account_id], [user_id], KEYRING
    )


def test_misaligned_columns_are_rejected() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        subject_keys(["a"], ["u", "v"], [date(2024, 1, 1)], KEYRING)
    with pytest.raises(ValueError, match="differ in length"):
        consent_keys(["a"], [], KEYRING)
