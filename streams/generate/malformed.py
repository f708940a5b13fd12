"""Records that break the contract, one rule each, built from a valid event.

Each corruption breaks exactly one rule, the one its reason code names, so a test can
check the dead-letter topic reason by reason. The template event gets a fresh
``event_id`` first: a malformed record must never share an id with a valid event, or a
consumer that dedups before validating would count it as a duplicate.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Final

import msgspec

from schemas.events import MAX_USER_AGENT_BYTES, Event
from streams.generate.records import MALFORMED_REASONS, MalformedReason

# What real clients get wrong: IPv4 with an octet out of range or missing, a mangled
# IPv6, a host name where an address belongs.
_BAD_IPS: Final = (
    "256.12.7.1", "10.0.0", "192.168.1.300", "2001:db8::g1", "2001:db8:::1",
    "localhost", "1.2.3.4.5", "::ffff:999.1.1.1",
)  # fmt: skip
# Fields the policy never promised to collect; a test card number, never a real one.
_FORBIDDEN_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("card_number", "4111111111111111"),
    ("card_number", "4000 0566 5566 5556"),
    ("email", "jane.doe@example.com"),
    ("password", "hunter2"),
)


def _invalid_json(doc: dict[str, Any], rng: random.Random) -> bytes:
    raw = msgspec.json.encode(doc)
    if rng.random() < 0.7:
        # A message cut short in transit: every strict prefix of a JSON object is invalid.
        return raw[: rng.randrange(1, len(raw) - 1)]
    # A hand-rolled serializer's trailing comma.
    return raw[:-1] + b",}"


def _unsupported_version(doc: dict[str, Any], rng: random.Random) -> bytes:
    doc["schema_version"] = rng.choice((0, 2, 3))
    return msgspec.json.encode(doc)


def _missing_event_id(doc: dict[str, Any], rng: random.Random) -> bytes:
    del doc["event_id"]
    return msgspec.json.encode(doc)


def _naive_timestamp(doc: dict[str, Any], rng: random.Random) -> bytes:
    # "2024-05-01T12:00:00.123456Z" or "...+02:00" without its offset.
    stamp: str = doc["occurred_at"]
    doc["occurred_at"] = stamp[:-1] if stamp.endswith("Z") else stamp[:-6]
    return msgspec.json.encode(doc)


def _invalid_ip(doc: dict[str, Any], rng: random.Random) -> bytes:
    doc["ip"] = rng.choice(_BAD_IPS)
    return msgspec.json.encode(doc)


def _oversized_user_agent(doc: dict[str, Any], rng: random.Random) -> bytes:
    base = doc.get("user_agent") or "Mozilla/5.0 (X11; Linux x86_64)"
    repeats = (MAX_USER_AGENT_BYTES + 1) // (len(base) + 1) + 1 + rng.randrange(3)
    doc["user_agent"] = " ".join([base] * repeats)
    return msgspec.json.encode(doc)


def _unknown_field(doc: dict[str, Any], rng: random.Random) -> bytes:
    name, value = rng.choice(_FORBIDDEN_FIELDS)
    doc[name] = value
    return msgspec.json.encode(doc)


_CORRUPTIONS: Final[dict[str, Callable[[dict[str, Any], random.Random], bytes]]] = {
    "invalid_json": _invalid_json,
    "unsupported_schema_version": _unsupported_version,
    "missing_field": _missing_event_id,
    "naive_timestamp": _naive_timestamp,
    "invalid_ip": _invalid_ip,
    "too_long": _oversized_user_agent,
    "unknown_field": _unknown_field,
}
assert set(_CORRUPTIONS) == set(MALFORMED_REASONS)


def corrupt(
    template: Event, fresh_event_id: str, rng: random.Random
) -> tuple[MalformedReason, bytes]:
    """A random reason and the bytes of ``template`` broken for that reason alone."""
    reason = MALFORMED_REASONS[rng.randrange(len(MALFORMED_REASONS))]
    doc = msgspec.to_builtins(template)
    doc["event_id"] = fresh_event_id
    return reason, _CORRUPTIONS[reason](doc, rng)
