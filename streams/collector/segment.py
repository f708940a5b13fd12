"""Segment's HTTP Tracking API calls as Sieve events (pure: dicts in, event dicts out).

Existing SDKs (analytics.js, analytics-python, the mobile ones) post ``/v1/batch`` (a body
``{"batch": [<call>, ...], "sentAt"}``) or one call to ``/v1/track``, ``/v1/page``,
``/v1/identify``, ``/v1/screen``, ``/v1/group`` or ``/v1/alias``. Each call becomes one
event object of the contract, which then meets exactly the checks of ``/v1/events``
(``streams.collector.batch.check_batch``). The mapping (decisions documented in the
README's collector section):

* ``messageId`` -> ``event_id`` (required: it is what deduplication keys on).
* ``timestamp`` corrected for the device's clock as Segment does: with ``sentAt`` (the
  call's or the batch's), ``occurred_at = received + (timestamp - sentAt)``; without it,
  ``timestamp`` as sent; without either, the arrival. ``originalTimestamp`` stands for a
  missing ``timestamp``.
* ``userId`` -> ``user_id``; without one, ``anonymousId`` (a device or browser id,
  pseudonymous personal data like a user id: it is what Segment counts users by, and it
  gets the same pseudonymisation and consent handling).
* ``context.ip`` -> ``ip``, ``context.userAgent`` -> ``user_agent``.
* Consent: ``context.consent.categoryPreferences`` with any category refused (``false``)
  raises ``gpc``: Sieve has one consent level (identifiable records or not), and a person
  who refused any category has not agreed to be identified. The DNT and Sec-GPC headers
  apply as on ``/v1/events``.
* ``page`` -> ``page_view`` (``properties.path``, else the path of ``properties.url`` or
  ``context.page``); ``screen`` -> ``page_view`` of path ``screen:<name>``.
* ``track`` of a Sieve type name (``login``, ``upload``, ...) or of a Segment spec name
  (``Signed In``, ``Signed Out``, ``Order Completed``) -> that type, its fields taken from
  ``properties``; any other name -> ``custom``. ``identify``, ``group`` and ``alias`` ->
  ``custom`` named ``identify``, ``group``, ``alias``: traits are personal data, so only
  the traits the policy declares for that name are kept.
* Properties (and traits) the target does not declare are dropped and counted, never sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import urlsplit

from schemas.events import type_specific_fields
from streams.collector.batch import (
    EMPTY_BATCH,
    JSON,
    PROPERTY_MISFIT,
    BatchProblem,
    Undecodable,
    decode_batch,
)
from streams.privacy.custom_events import CustomEvents, PropertyKind

CALLS: Final = ("track", "page", "screen", "identify", "group", "alias")
BATCH: Final = "batch"

# Codes of problems only a Segment call can have (the contract's own come after mapping).
NOT_A_CALL: Final = "not_a_segment_call"
UNSUPPORTED_CALL: Final = "unsupported_call"
MISSING_FIELD: Final = "missing_field"
INVALID_TIMESTAMP: Final = "invalid_timestamp"

# Segment's spec event names with a Sieve type, and the properties renamed on the way
# (Segment's E-commerce and B2B SaaS specs).
SPEC_NAMES: Final[Mapping[str, tuple[str, Mapping[str, str]]]] = {
    "Signed In": ("login", {}),
    "Signed Out": ("logout", {}),
    "Order Completed": ("payment", {"total": "amount", "order_id": "provider_reference"}),
}
# Sieve types a track call may name directly (a custom event is named by the product).
TRACKABLE_TYPES: Final = frozenset(
    {
        "request",
        "page_view",
        "login",
        "logout",
        "upload",
        "download",
        "payment",
        "account",
        "consent",
    }
)
SCREEN_PATH_PREFIX: Final = "screen:"


@dataclass(frozen=True)
class MappedCalls:
    """One item per call (an event object, or an :class:`Undecodable` explaining why not),
    and how many properties were dropped: not declared, and declared ``dropped``."""

    items: list[object]
    undeclared: int
    declared_dropped: int


def calls_of(document: object, call: str) -> list[object] | Undecodable:
    """The calls of a body posted to ``/v1/<call>``: the ``batch`` array, or the one call."""
    if not isinstance(document, dict):
        return Undecodable("the body must be a JSON object", NOT_A_CALL)
    if call != BATCH:
        return [{**document, "type": call}]
    batch = document.get("batch")
    if not isinstance(batch, list):
        return Undecodable('the body must hold a "batch" array of calls', NOT_A_CALL)
    sent_at = document.get("sentAt")
    # The batch's sentAt is the device's clock when the batch left it: it corrects every
    # call that has none of its own.
    return [
        {"sentAt": sent_at, **item} if isinstance(item, dict) and sent_at is not None else item
        for item in batch
    ]


def map_calls(
    calls: list[object], account_id: str, received_at_ms: int, custom: CustomEvents
) -> MappedCalls:
    """Every call as a Sieve event object of ``account_id`` (or why not)."""
    items: list[object] = []
    undeclared = declared_dropped = 0
    for call in calls:
        if not isinstance(call, dict):
            items.append(Undecodable("a Segment call must be a JSON object", NOT_A_CALL))
            continue
        mapped = _map_call(call, account_id, received_at_ms, custom)
        if isinstance(mapped, Undecodable):
            items.append(mapped)
            continue
        event, counts = mapped
        items.append(event)
        undeclared += counts[0]
        declared_dropped += counts[1]
    return MappedCalls(items, undeclared, declared_dropped)


def _map_call(
    call: dict[str, Any], account_id: str, received_at_ms: int, custom: CustomEvents
) -> tuple[dict[str, object], tuple[int, int]] | Undecodable:
    kind = call.get("type")
    if kind not in CALLS:
        return Undecodable(f"type must be one of {', '.join(CALLS)}", UNSUPPORTED_CALL)
    envelope = _envelope(call, account_id, received_at_ms)
    if isinstance(envelope, Undecodable):
        return envelope
    context = _object(call.get("context"))
    if kind == "page":
        return _page(envelope, _object(call.get("properties")), _object(context.get("page")))
    if kind == "screen":
        name = call.get("name", _object(call.get("properties")).get("name"))
        if not isinstance(name, str) or not name:
            return Undecodable("a screen call needs a name", MISSING_FIELD)
        dropped = len(_object(call.get("properties")))
        return {**envelope, "type": "page_view", "path": SCREEN_PATH_PREFIX + name}, (dropped, 0)
    if kind == "track":
        name = call.get("event")
        if not isinstance(name, str) or not name:
            return Undecodable("a track call needs an event name", MISSING_FIELD)
        return _track(envelope, name, _object(call.get("properties")), custom)
    traits = _object(call.get("traits"))  # identify, group; alias has none
    return _custom(envelope, kind, traits, custom)


def _envelope(
    call: dict[str, Any], account_id: str, received_at_ms: int
) -> dict[str, object] | Undecodable:
    message_id = call.get("messageId")
    if message_id is None or message_id == "":
        return Undecodable("messageId is required (it becomes the event_id)", MISSING_FIELD)
    occurred = _occurred_at(call, received_at_ms)
    if isinstance(occurred, Undecodable):
        return occurred
    envelope: dict[str, object] = {
        "schema_version": 1,
        "event_id": _as_id(message_id),
        "occurred_at": occurred,
        "account_id": account_id,
    }
    user = call.get("userId")
    if user is None or user == "":
        user = call.get("anonymousId")
    if user is not None and user != "":
        envelope["user_id"] = _as_id(user)
    context = _object(call.get("context"))
    if context.get("ip") is not None:
        envelope["ip"] = context["ip"]
    if context.get("userAgent") is not None:
        envelope["user_agent"] = context["userAgent"]
    preferences = _object(_object(context.get("consent")).get("categoryPreferences"))
    if any(choice is False for choice in preferences.values()):
        envelope["gpc"] = True
    return envelope


def _occurred_at(call: dict[str, Any], received_at_ms: int) -> str | Undecodable:
    received = datetime.fromtimestamp(received_at_ms / 1000, UTC)
    stamp = call.get("timestamp", call.get("originalTimestamp"))
    if stamp is None:
        return received.isoformat()
    timestamp = _instant(stamp)
    if timestamp is None:
        return Undecodable(
            "timestamp must be an ISO 8601 instant with a time zone", INVALID_TIMESTAMP
        )
    sent_at = call.get("sentAt")
    if sent_at is None:
        return timestamp.isoformat()
    sent = _instant(sent_at)
    if sent is None:
        return Undecodable("sentAt must be an ISO 8601 instant with a time zone", INVALID_TIMESTAMP)
    try:
        return (received + (timestamp - sent)).isoformat()
    except OverflowError:
        return Undecodable("timestamp and sentAt are too far apart", INVALID_TIMESTAMP)


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # a wall-clock time of an unknown zone is no instant
    return parsed.astimezone(UTC)


def _page(
    envelope: dict[str, object], properties: dict[str, Any], page: dict[str, Any]
) -> tuple[dict[str, object], tuple[int, int]] | Undecodable:
    path = properties.get("path") or _url_path(properties.get("url"))
    path = path or page.get("path") or _url_path(page.get("url"))
    if not path:
        return Undecodable(
            "a page call needs properties.path, properties.url or context.page", MISSING_FIELD
        )
    event = {**envelope, "type": "page_view", "path": path}
    referrer = properties.get("referrer", page.get("referrer"))
    if referrer:
        event["referrer"] = referrer
    used = {"path", "url", "referrer"}
    return event, (sum(1 for key in properties if key not in used), 0)


def _url_path(url: object) -> str | None:
    if not isinstance(url, str):
        return None
    try:
        return urlsplit(url).path or None
    except ValueError:
        return None


def _track(
    envelope: dict[str, object], name: str, properties: dict[str, Any], custom: CustomEvents
) -> tuple[dict[str, object], tuple[int, int]] | Undecodable:
    if name in SPEC_NAMES:
        event_type, renamed = SPEC_NAMES[name]
    elif name in TRACKABLE_TYPES:
        event_type, renamed = name, {}
    else:
        return _custom(envelope, name, properties, custom)
    fields = set(type_specific_fields(event_type))
    event = {**envelope, "type": event_type}
    dropped = 0
    for key, value in properties.items():
        field_name = renamed.get(key, key)
        if field_name in fields and field_name not in event:
            event[field_name] = value
        else:
            dropped += 1
    if event_type == "payment" and isinstance(event.get("amount"), int | float):
        event["amount"] = _decimal(event["amount"])
    return event, (dropped, 0)


def _decimal(number: object) -> object:
    # Segment sends money as a JSON number; the contract's amount is a decimal string.
    try:
        return format(Decimal(repr(number)), "f")
    except InvalidOperation:
        return number  # inf or nan: the contract check reports it


def _custom(
    envelope: dict[str, object], name: str, properties: dict[str, Any], custom: CustomEvents
) -> tuple[dict[str, object], tuple[int, int]] | Undecodable:
    filtered = custom.filter(name, properties)
    if filtered.misfits:
        key, kind = filtered.misfits[0]
        what = "a number" if kind is PropertyKind.METRIC else "a string, number or boolean"
        return Undecodable(
            f"property {key!r} is declared {kind.value} and must be {what}", PROPERTY_MISFIT
        )
    event = {**envelope, "type": "custom", "name": name}
    if filtered.kept:
        event["properties"] = filtered.kept
    return event, (filtered.undeclared, filtered.declared_dropped)


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _as_id(value: object) -> object:
    # SDKs may send numeric ids; analytics-python stringifies them, others do not.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def segment_items(
    body: bytes, call: str, account_id: str, received_at_ms: int, custom: CustomEvents
) -> tuple[MappedCalls, BatchProblem | None]:
    """The event objects of a body posted to ``/v1/<call>``, or the problem of the whole
    body (not JSON, too deep, not an object, no ``batch`` array, no calls)."""
    nothing = MappedCalls([], 0, 0)
    if body.lstrip(b" \t\r\n")[:1] != b"{":
        return nothing, BatchProblem(None, "$", NOT_A_CALL, "the body must be a JSON object")
    documents, problem = decode_batch(body, JSON)
    if problem is not None:
        return nothing, problem
    calls = calls_of(documents[0], call)
    if isinstance(calls, Undecodable):
        return nothing, BatchProblem(None, "$", calls.code, calls.reason)
    if not calls:
        return nothing, BatchProblem(None, "$", EMPTY_BATCH, "the batch holds no calls")
    return map_calls(calls, account_id, received_at_ms, custom), None
