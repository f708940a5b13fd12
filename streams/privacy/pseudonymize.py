"""Keyed pseudonyms (HMAC-SHA256, hex, truncated to 128 bits), vectorized over distinct values.

Each purpose gets its own key derived from the master pseudonymization key,
``HMAC(master, purpose)``, so a pseudonym of one purpose can never be matched against
another's (an event key is not a subject key of someone whose user id looks like an event
id), and a component that only needs one purpose (day keys in staging) can be handed only
that derived key.

- event keys: dedup and exactly-once checks without the raw event id.
- subject keys: distinct-people counts; the key is derived per UTC day, so the same person
  has unrelated keys on different days and the facts cannot be joined across days.
- unit keys: the privacy unit of an event that names no user (the differential privacy of
  the analytics bounds each unit's day): its session, else its IP address, each with its
  account, under the same per-day key as subject keys. The messages are prefixed, so a
  session or an address never hashes like a user id, and events with a user use their
  subject key.
- consent keys: the consent state; stable (not per day) and under the keyring's pinned
  consent key, so an opt-out survives days and key rotations.

Ids are printable ASCII per the schema, but the encodings below are unambiguous for any
string (the account id is length-prefixed), so no input can forge another's pseudonym.

Batches repeat ids heavily (one account, many events), so every function hashes each
distinct input once and maps the results back.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Sequence
from datetime import date
from typing import Final

from streams.privacy.keyring import Keyring

PSEUDONYM_HEX_CHARS: Final = 32  # 128 bits

_EVENT: Final = b"event\x00"
_SUBJECT_DAY: Final = b"subject-day\x00"
_UNIT_SESSION: Final = b"unit-session\x00"
_UNIT_IP: Final = b"unit-ip\x00"
_CONSENT_USER: Final = b"consent-user\x00"
_CONSENT_ACCOUNT: Final = b"consent-account\x00"


def derive_key(master: bytes, purpose: bytes) -> bytes:
    """The full 256-bit key of one purpose: ``HMAC-SHA256(master, purpose)``."""
    return hmac.digest(master, purpose, "sha256")


def subject_day_key(keyring: Keyring, day: date, key_id: str | None = None) -> bytes:
    """The key subject pseudonyms of ``day`` (UTC) are made with."""
    master = keyring.pseudonymization_key(key_id)
    return derive_key(master, _SUBJECT_DAY + day.isoformat().encode("ascii"))


def event_keys(event_ids: Sequence[str], keyring: Keyring, key_id: str | None = None) -> list[str]:
    """Pseudonym of every event id, aligned with input, under the pseudonymization key
    ``key_id`` (default: the active one; dedup asks for an older one after a rotation)."""
    mac = _mac_function(derive_key(keyring.pseudonymization_key(key_id), _EVENT))
    # Hashed as they come: ids repeat only in resends (~1 %), and finding the distinct ones
    # first cost more than hashing those twice.
    return [mac(event_id.encode()) for event_id in event_ids]


def subject_keys(
    account_ids: Sequence[str],
    user_ids: Sequence[str | None],
    days: Sequence[date],
    keyring: Keyring,
) -> list[str | None]:
    """Per-day pseudonym of every (account, user); None where the event names no user.

    ``days`` are the UTC dates of the events. The account is part of the input because user
    ids are only unique within an account.
    """
    _check_aligned(account_ids, user_ids, days)
    triples = list(zip(account_ids, user_ids, days, strict=True))
    macs: dict[date, Callable[[bytes], str]] = {}
    distinct: dict[tuple[str, str | None, date], str | None] = {}
    for triple in dict.fromkeys(triples):
        account_id, user_id, day = triple
        if user_id is None:
            distinct[triple] = None
            continue
        mac = macs.get(day)
        if mac is None:
            mac = macs[day] = _mac_function(subject_day_key(keyring, day))
        distinct[triple] = mac(_pair(account_id, user_id))
    return [distinct[triple] for triple in triples]


def userless_unit_keys(
    account_ids: Sequence[str],
    session_ids: Sequence[str | None],
    ips: Sequence[str | None],
    days: Sequence[date],
    keyring: Keyring,
) -> list[str | None]:
    """Per-day pseudonym of the privacy unit of every event that names no user: its
    (account, session) when it has a session, else its (account, IP address), else None.

    ``days`` are the UTC dates of the events, and the key is that of :func:`subject_keys`
    (same key id). The address is taken in its canonical form, so ``2001:DB8::1`` and
    ``2001:db8:0::1`` are one unit.
    """
    _check_aligned(account_ids, session_ids, ips, days)
    rows = list(zip(account_ids, session_ids, ips, days, strict=True))
    macs: dict[date, Callable[[bytes], str]] = {}
    distinct: dict[tuple[str, str | None, str | None, date], str | None] = {}
    for row in dict.fromkeys(rows):
        account_id, session_id, ip, day = row
        if session_id is not None:
            message = _UNIT_SESSION + _pair(account_id, session_id)
        elif ip is not None:
            message = _UNIT_IP + _pair(account_id, _canonical_ip(ip))
        else:
            distinct[row] = None
            continue
        mac = macs.get(day)
        if mac is None:
            mac = macs[day] = _mac_function(subject_day_key(keyring, day))
        distinct[row] = mac(message)
    return [distinct[row] for row in rows]


def _canonical_ip(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip  # the contract admits only addresses; should another reach here, as it is


def consent_keys(
    account_ids: Sequence[str], user_ids: Sequence[str | None], keyring: Keyring
) -> list[str]:
    """Stable pseudonym of every person (account, user), or of the account where user is None.

    Made with the keyring's consent key (pinned across rotations, see ``keyring``); account
    keys and person keys come from different derived keys, so they never collide.
    """
    _check_aligned(account_ids, user_ids)
    master = keyring.pseudonymization_key(keyring.consent_key_id)
    user_mac = _mac_function(derive_key(master, _CONSENT_USER))
    account_mac = _mac_function(derive_key(master, _CONSENT_ACCOUNT))
    pairs = list(zip(account_ids, user_ids, strict=True))
    distinct = {
        (account_id, user_id): account_mac(account_id.encode())
        if user_id is None
        else user_mac(_pair(account_id, user_id))
        for account_id, user_id in dict.fromkeys(pairs)
    }
    return [distinct[pair] for pair in pairs]


def _pair(account_id: str, user_id: str) -> bytes:
    # Length prefix: ("ab", "c") and ("a", "bc") must not encode alike.
    account = account_id.encode()
    return b"%d:" % len(account) + account + user_id.encode()


def _mac_function(key: bytes) -> Callable[[bytes], str]:
    """Truncated HMAC-SHA256 under ``key`` (RFC 2104), from precomputed pad states.

    Copying the hashed inner and outer pads is ~2.5x faster per short message than
    ``hmac.digest`` and ~1.2x faster than copying an ``hmac.HMAC``: the pseudonyms are
    the split's largest cost. Tests check the result equals ``hmac.digest``.
    """
    block = hashlib.sha256().block_size
    if len(key) > block:  # RFC 2104: long keys are hashed first
        key = hashlib.sha256(key).digest()
    padded = key.ljust(block, b"\x00")
    inner_pad = hashlib.sha256(bytes(byte ^ 0x36 for byte in padded))
    outer_pad = hashlib.sha256(bytes(byte ^ 0x5C for byte in padded))
    copy_inner, copy_outer = inner_pad.copy, outer_pad.copy

    def mac(message: bytes) -> str:
        inner = copy_inner()
        inner.update(message)
        outer = copy_outer()
        outer.update(inner.digest())
        return outer.digest()[:16].hex()

    return mac


def _check_aligned(*columns: Sequence[object]) -> None:
    lengths = {len(column) for column in columns}
    if len(lengths) > 1:
        raise ValueError(f"input columns differ in length: {sorted(lengths)}")
