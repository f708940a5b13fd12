"""Segment calls as Sieve events (streams.collector.segment) and the policy's custom event
declarations (streams.privacy.custom_events): pure, no HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streams.collector.batch import Undecodable, check_batch
from streams.collector.segment import (
    INVALID_TIMESTAMP,
    MISSING_FIELD,
    NOT_A_CALL,
    PROPERTY_MISFIT,
    UNSUPPORTED_CALL,
    MappedCalls,
    map_calls,
    segment_items,
)
from streams.errors import ConfigurationError
from streams.privacy.custom_events import CustomEvents, PropertyKind, parse_custom_events
from streams.privacy.retention import parse_policy, policy_text

ACCOUNT = "acct-1"
RECEIVED = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
RECEIVED_MS = int(RECEIVED.timestamp() * 1000)
CUSTOM = parse_custom_events(
    {
        "Video Played": {
            "properties": {
                "genre": "dimension",
                "seconds": "metric",
                "email": "identifiable",
                "title": "dropped",
            }
        },
        "identify": {"properties": {"plan": "dimension"}},
    }
)


def call(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": "m-1", "userId": "u-1", **fields}


def mapped(*calls: object, custom: CustomEvents = CUSTOM) -> MappedCalls:
    return map_calls(list(calls), ACCOUNT, RECEIVED_MS, custom)


def one(item: dict[str, Any], custom: CustomEvents = CUSTOM) -> dict[str, Any]:
    result = mapped(item, custom=custom).items[0]
    assert isinstance(result, dict), result
    # Every mapped event meets the contract exactly as /v1/events checks it.
    _events, problems = check_batch([result], ACCOUNT, received_at_ms=RECEIVED_MS)
    assert problems == [], problems
    return result


def refusal(item: object) -> Undecodable:
    result = mapped(item).items[0]
    assert isinstance(result, Undecodable), result
    return result


def test_the_envelope_comes_from_message_id_user_context_and_the_write_keys_account() -> None:
    event = one(
        call(
            "page",
            properties={"path": "/docs"},
            context={"ip": "203.0.113.9", "userAgent": "Mozilla/5.0"},
        )
    )
    assert event["event_id"] == "m-1"
    assert event["account_id"] == ACCOUNT
    assert event["user_id"] == "u-1"
    assert (event["ip"], event["user_agent"]) == ("203.0.113.9", "Mozilla/5.0")


def test_the_anonymous_id_stands_for_a_missing_user_id() -> None:
    event = one({"type": "screen", "messageId": "m", "anonymousId": "device-9", "name": "Home"})
    assert event["user_id"] == "device-9"
    assert (event["type"], event["path"]) == ("page_view", "screen:Home")


def test_the_device_clock_is_corrected_by_sent_at_as_segment_does() -> None:
    device_ahead = timedelta(hours=3)
    happened = RECEIVED - timedelta(minutes=5)
    event = one(
        call(
            "page",
            properties={"path": "/"},
            timestamp=(happened + device_ahead).isoformat(),
            sentAt=(RECEIVED + device_ahead).isoformat(),
        )
    )
    assert datetime.fromisoformat(event["occurred_at"]) == happened


def test_without_sent_at_the_timestamp_stands_and_without_either_the_arrival() -> None:
    stamp = (RECEIVED - timedelta(days=1)).isoformat()
    assert one(call("page", properties={"path": "/"}, timestamp=stamp))["occurred_at"] == stamp
    arrival = one(call("page", properties={"path": "/"}))["occurred_at"]
    assert datetime.fromisoformat(arrival) == RECEIVED


def test_the_batch_sent_at_corrects_every_call_without_its_own() -> None:
    body = {
        "sentAt": (RECEIVED + timedelta(hours=1)).isoformat(),
        "batch": [call("page", properties={"path": "/"}, timestamp=RECEIVED.isoformat())],
    }
    items, problem = segment_items(json.dumps(body).encode(), "batch", ACCOUNT, RECEIVED_MS, CUSTOM)
    assert problem is None
    (event,) = items.items
    assert isinstance(event, dict)
    assert datetime.fromisoformat(event["occurred_at"]) == RECEIVED - timedelta(hours=1)


@pytest.mark.parametrize("stamp", ["yesterday", "2026-05-04T10:00:00", 1714816800])
def test_a_timestamp_that_is_no_instant_is_refused(stamp: object) -> None:
    assert refusal(call("page", properties={"path": "/"}, timestamp=stamp)).code == (
        INVALID_TIMESTAMP
    )


def test_a_refused_consent_category_raises_gpc() -> None:
    refused = {"consent": {"categoryPreferences": {"Analytics": True, "Advertising": False}}}
    agreed = {"consent": {"categoryPreferences": {"Analytics": True}}}
    assert one(call("page", properties={"path": "/"}, context=refused))["gpc"] is True
    assert "gpc" not in one(call("page", properties={"path": "/"}, context=agreed))


def test_a_page_takes_its_path_from_properties_url_or_context() -> None:
    assert one(call("page", properties={"path": "/a"}))["path"] == "/a"
    assert one(call("page", properties={"url": "https://x.example/b?q=1"}))["path"] == "/b"
    page = {"page": {"path": "/c", "referrer": "https://r.example/"}}
    event = one(call("page", context=page))
    assert (event["path"], event["referrer"]) == ("/c", "https://r.example/")
    assert refusal(call("page")).code == MISSING_FIELD


def test_track_of_a_spec_name_becomes_its_sieve_type() -> None:
    order = call(
        "track",
        event="Order Completed",
        properties={"total": 29.99, "currency": "EUR", "order_id": "o-1", "provider": "stripe"},
    )
    event = one(order)
    assert event["type"] == "payment"
    assert (event["amount"], event["provider_reference"]) == ("29.99", "o-1")
    assert one(call("track", event="Signed In", properties={"method": "sso"}))["type"] == "login"
    assert one(call("track", event="upload", properties={"bytes": 10}))["type"] == "upload"


def test_properties_a_sieve_type_does_not_have_are_dropped_and_counted() -> None:
    result = mapped(call("track", event="Signed In", properties={"method": "sso", "x": 1}))
    (event,) = result.items
    assert isinstance(event, dict) and "x" not in event
    assert (result.undeclared, result.declared_dropped) == (1, 0)


def test_a_custom_event_keeps_only_what_the_policy_declares() -> None:
    result = mapped(
        call(
            "track",
            event="Video Played",
            properties={
                "genre": "drama",
                "seconds": 42,
                "email": "a@b.example",
                "title": "t",
                "card": "4111111111111111",
            },
        )
    )
    (event,) = result.items
    assert isinstance(event, dict)
    assert event["type"] == "custom" and event["name"] == "Video Played"
    assert event["properties"] == {"genre": "drama", "seconds": 42, "email": "a@b.example"}
    assert (result.undeclared, result.declared_dropped) == (1, 1)


def test_an_undeclared_custom_event_keeps_no_property() -> None:
    result = mapped(call("track", event="Button Clicked", properties={"a": 1, "b": "x"}))
    (event,) = result.items
    assert isinstance(event, dict) and "properties" not in event
    assert result.undeclared == 2


def test_identify_keeps_only_declared_traits() -> None:
    result = mapped(call("identify", traits={"plan": "pro", "email": "a@b.example"}))
    (event,) = result.items
    assert isinstance(event, dict)
    assert (event["type"], event["name"], event["properties"]) == (
        "custom",
        "identify",
        {"plan": "pro"},
    )
    assert result.undeclared == 1


def test_a_metric_that_is_no_number_is_refused_without_quoting_it() -> None:
    problem = refusal(call("track", event="Video Played", properties={"seconds": "secret-9"}))
    assert problem.code == PROPERTY_MISFIT
    assert "secret-9" not in problem.reason


@pytest.mark.parametrize(
    ("item", "code"),
    [
        ({"type": "page", "properties": {"path": "/"}}, MISSING_FIELD),  # no messageId
        (call("track"), MISSING_FIELD),  # no event name
        (call("screen"), MISSING_FIELD),  # no name
        (call("purchase"), UNSUPPORTED_CALL),
        ("not a call", NOT_A_CALL),
    ],
)
def test_calls_that_cannot_be_events_say_why(item: object, code: str) -> None:
    assert refusal(item).code == code


@pytest.mark.parametrize(
    ("body", "call_name"),
    [(b"[]", "batch"), (b'{"batch": 3}', "batch"), (b"{", "track"), (b'"x"', "page")],
)
def test_a_body_that_is_no_call_is_a_problem_of_the_whole_body(body: bytes, call_name: str) -> None:
    items, problem = segment_items(body, call_name, ACCOUNT, RECEIVED_MS, CUSTOM)
    assert problem is not None and problem.index is None
    assert items.items == []


def test_the_packaged_policy_loads_with_its_custom_events() -> None:
    text, _ = policy_text(None)
    declared = text + '\n[custom_events."Video Played"]\nproperties = { seconds = "metric" }\n'
    parse_policy(declared)  # the retention loader accepts and checks the table too
    assert CUSTOM.declared("Video Played")["seconds"] is PropertyKind.METRIC


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"E": {"properties": {"x": "secret"}}}, "must be one of"),
        ({"E": {"properties": {"bad\nname": "metric"}}}, "is not a property name"),
        ({"E": {"colour": "red"}}, "is not a custom event setting"),
        ({"E": "metric"}, "must be a table"),
    ],
)
def test_a_broken_declaration_names_its_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_custom_events(table)


def test_a_declared_retention_class_must_exist() -> None:
    text, _ = policy_text(None)
    broken = text + '\n[custom_events.E]\nretention_class = "forever"\n'
    with pytest.raises(ConfigurationError, match="retention_class"):
        parse_policy(broken)
