"""schemas.validate: every problem, with its path and code, and no reason quoting a value."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import FormatChecker

from schemas.events import EVENT_TYPES, MAX_EVENT_BYTES, Event, encode
from schemas.validate import (
    CODES,
    IP_PROBLEM,
    USER_AGENT_PROBLEM,
    Problem,
    is_valid_ip,
    parse_event,
    schema_problems,
    validate_event,
    validate_event_bytes,
)
from streams.errors import InvalidEventError
from tests.fixtures.strategies import events

ENVELOPE: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "evt-0001",
    "occurred_at": "2024-05-01T12:30:00.250+02:00",
    "account_id": "acct-42",
    "user_id": "user-7",
    "session_id": "sess-9",
    "ip": "203.0.113.9",
    "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "geo": {"country": "DE", "region": "BE", "city": "Berlin", "lat": 52.52, "lon": 13.4},
    "dnt": False,
    "gpc": True,
}

VALID: dict[str, dict[str, Any]] = {
    "request": {"method": "POST", "path": "/api/v1/items", "status": 201, "response_bytes": 512},
    "page_view": {"path": "/console/projects", "referrer": "https://console.example.com/"},
    "login": {"method": "sso"},
    "logout": {"session_duration_s": 1832.5},
    "upload": {"bytes": 1048576, "content_type": "image/png", "source": "cloud"},
    "download": {"bytes": 2048, "content_type": "video/mp4"},
    "payment": {
        "amount": "49.90",
        "currency": "EUR",
        "provider": "stripe",
        "provider_reference": "pi_3PQ",
    },
    "account": {"action": "registered"},
    "consent": {"choice": "opt_out"},
    "custom": {"name": "Video Played", "properties": {"genre": "drama", "seconds": 42}},
}


def event(type_name: str = "request", /, **changes: Any) -> dict[str, Any]:
    """A valid event of ``type_name`` as a dict, with ``changes`` applied (None deletes)."""
    obj = {"type": type_name, **ENVELOPE, **VALID[type_name], **changes}
    return {k: v for k, v in obj.items() if v is not None}


def problems_of(obj: Any) -> list[Problem]:
    return validate_event_bytes(msgspec.json.encode(obj))


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


def test_examples_cover_every_type() -> None:
    assert set(VALID) == set(EVENT_TYPES)


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
def test_valid_example_of_each_type_is_accepted(type_name: str) -> None:
    data = msgspec.json.encode(event(type_name))
    assert validate_event_bytes(data) == []
    parsed = parse_event(data)
    assert isinstance(parsed, EVENT_TYPES[type_name])


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
def test_minimal_event_of_each_type_is_accepted(type_name: str) -> None:
    # Only the required fields: every optional one has a default.
    optional = {"user_id", "session_id", "ip", "user_agent", "geo", "dnt", "gpc"}
    obj = {k: v for k, v in event(type_name).items() if k not in optional}
    assert problems_of(obj) == []


def test_too_large() -> None:
    data = msgspec.json.encode(event()) + b" " * MAX_EVENT_BYTES
    problem = only(validate_event_bytes(data))
    assert (problem.path, problem.code) == ("$", "too_large")


def test_event_at_the_size_limit_is_accepted() -> None:
    data = msgspec.json.encode(event())
    padded = data + b" " * (MAX_EVENT_BYTES - len(data))
    assert len(padded) == MAX_EVENT_BYTES
    assert validate_event_bytes(padded) == []


def test_user_agent_over_2_kib_in_utf8_is_too_long() -> None:
    # 1,500 characters (under msgspec's character limit) but 3,000 bytes in UTF-8.
    problem = only(problems_of(event(user_agent="é" * 1500)))
    assert (problem.path, problem.code) == ("$.user_agent", "too_long")
    assert "bytes" in problem.reason


def test_user_agent_of_exactly_2_kib_is_accepted() -> None:
    assert problems_of(event(user_agent="é" * 1024)) == []


def test_unsupported_schema_version() -> None:
    problem = only(problems_of(event(schema_version=2)))
    assert problem == Problem(
        "$.schema_version",
        "unsupported_schema_version",
        "schema_version 2 is not supported (supported: 1)",
    )


def test_schema_version_written_as_float_is_a_wrong_type() -> None:
    # 1.0 equals 1 for JSON Schema's enum, but msgspec's decoder rejects it: so must we.
    problem = only(problems_of(event(schema_version=1.0)))
    assert (problem.path, problem.code) == ("$.schema_version", "wrong_type")


def test_missing_event_id() -> None:
    problem = only(problems_of(event(event_id=None)))
    assert (problem.path, problem.code) == ("$.event_id", "missing_field")


def test_every_missing_field_is_reported() -> None:
    found = {(p.path, p.code) for p in problems_of({"type": "payment"})}
    expected = {
        "schema_version",
        "event_id",
        "occurred_at",
        "account_id",
        "amount",
        "currency",
        "provider",
        "provider_reference",
    }
    assert found == {(f"$.{name}", "missing_field") for name in expected}


def test_naive_timestamp() -> None:
    problem = only(problems_of(event(occurred_at="2024-05-01T12:30:00")))
    assert problem == Problem(
        "$.occurred_at", "naive_timestamp", "occurred_at has no timezone offset"
    )


def test_unparseable_timestamp() -> None:
    problem = only(problems_of(event(occurred_at="2024-13-01T00:00:00Z")))
    assert (problem.path, problem.code) == ("$.occurred_at", "invalid_timestamp")


@pytest.mark.parametrize("ip", ["999.1.2.3", "1.2.3", "01.2.3.4", "fe80::1%eth0", "::g", ""])
def test_invalid_ip(ip: str) -> None:
    problem = only(problems_of(event(ip=ip)))
    assert (problem.path, problem.code) == ("$.ip", "invalid_ip")


@pytest.mark.parametrize(
    "ip", ["0.0.0.0", "255.255.255.255", "::1", "2001:db8::8a2e:370:7334", "::ffff:192.0.2.1"]
)
def test_valid_ips(ip: str) -> None:
    assert problems_of(event(ip=ip)) == []


@pytest.mark.parametrize(
    "data", [b"{", b"not json", b'{"a": NaN}', b"\xff\xfe", b'{"a":"\\ud800"}']
)
def test_invalid_json(data: bytes) -> None:
    problem = only(validate_event_bytes(data))
    assert (problem.path, problem.code) == ("$", "invalid_json")


@pytest.mark.parametrize("value", [[1, 2], "event", 3, None, True])
def test_not_an_object(value: object) -> None:
    problem = only(problems_of(value))
    assert (problem.path, problem.code) == ("$", "not_an_object")


def test_unknown_field() -> None:
    problem = only(problems_of(event(card_number="4111111111111111")))
    assert (problem.path, problem.code) == ("$.card_number", "unknown_field")
    assert "4111" not in problem.reason


def test_unknown_field_in_geo_has_its_nested_path() -> None:
    problem = only(problems_of(event(geo={"country": "DE", "zip": "10115"})))
    assert (problem.path, problem.code) == ("$.geo.zip", "unknown_field")


def test_unknown_field_whose_name_looks_like_data_is_not_named() -> None:
    problem = only(problems_of(event(**{"jane.doe@example.com": 1})))
    assert problem.code == "unknown_field"
    assert "jane" not in problem.path
    assert "jane" not in problem.reason


def test_type_specific_field_of_another_type_is_unknown() -> None:
    problem = only(problems_of(event("login", bytes=5)))
    assert (problem.path, problem.code) == ("$.bytes", "unknown_field")


def test_unknown_type_is_one_problem_naming_the_allowed_types() -> None:
    problem = only(problems_of(event(type="click")))
    assert (problem.path, problem.code) == ("$.type", "unknown_type")
    for name in EVENT_TYPES:
        assert name in problem.reason


def test_missing_type_is_one_problem_naming_the_allowed_types() -> None:
    problem = only(problems_of(event(type=None)))
    assert (problem.path, problem.code) == ("$.type", "missing_field")
    assert all(name in problem.reason for name in EVENT_TYPES)


def test_unknown_type_still_reports_envelope_problems() -> None:
    found = {(p.path, p.code) for p in problems_of(event(type="click", ip="999.1.2.3"))}
    assert found == {("$.type", "unknown_type"), ("$.ip", "invalid_ip")}


def test_nested_pattern_problem_has_its_path() -> None:
    problem = only(problems_of(event(geo={"country": "Germany"})))
    assert (problem.path, problem.code) == ("$.geo.country", "invalid_format")


@pytest.mark.parametrize(
    ("changes", "path", "code"),
    [
        ({"status": 200.0}, "$.status", "wrong_type"),  # msgspec rejects floats for ints
        ({"status": "200"}, "$.status", "wrong_type"),
        ({"status": 99}, "$.status", "out_of_range"),
        ({"response_bytes": -1}, "$.response_bytes", "out_of_range"),
        ({"path": ""}, "$.path", "too_short"),
        ({"event_id": "x" * 129}, "$.event_id", "too_long"),
        ({"dnt": "yes"}, "$.dnt", "wrong_type"),
        ({"geo": "DE"}, "$.geo", "wrong_type"),
        ({"ip": 3232235777}, "$.ip", "wrong_type"),
    ],
)
def test_field_problems(changes: dict[str, Any], path: str, code: str) -> None:
    problem = only(problems_of(event("request", **changes)))
    assert (problem.path, problem.code) == (path, code)


def test_enum_problem() -> None:
    problem = only(problems_of(event("login", method="magic_link")))
    assert (problem.path, problem.code) == ("$.method", "invalid_value")


def test_every_problem_is_reported_in_path_order() -> None:
    obj = event(ip="999.1.2.3", occurred_at="2024-05-01T12:30:00", schema_version=3, extra=1)
    found = [(p.path, p.code) for p in problems_of(obj)]
    assert found == [
        ("$.extra", "unknown_field"),
        ("$.ip", "invalid_ip"),
        ("$.occurred_at", "naive_timestamp"),
        ("$.schema_version", "unsupported_schema_version"),
    ]


def test_conflicting_duplicate_type_keys_are_rejected() -> None:
    # A dict keeps the last "type" (upload: valid); msgspec checks both and rejects.
    obj = event("download")
    data = msgspec.json.encode(obj)[:-1] + b',"type":"upload"}'
    problem = only(validate_event_bytes(data))
    assert problem.path == "$.type"


def test_empty_message() -> None:
    assert only(validate_event_bytes(b"")).code == "empty_message"


def test_validate_event_takes_a_dict_and_encodes_datetimes() -> None:
    assert validate_event(event(occurred_at=datetime(2024, 5, 1, tzinfo=UTC))) == []
    naive = event(occurred_at=datetime(2024, 5, 1))  # noqa: DTZ001
    assert only(validate_event(naive)).code == "naive_timestamp"


def test_validate_event_with_unencodable_value() -> None:
    assert only(validate_event(event(user_id=object()))).code == "invalid_json"


def test_parse_event_raises_with_every_problem() -> None:
    data = msgspec.json.encode(event(ip="999.1.2.3", event_id=None))
    with pytest.raises(InvalidEventError) as caught:
        parse_event(data)
    assert caught.value.problems == [
        ("$.event_id", "event_id is required"),
        ("$.ip", "ip is not a valid IPv4 or IPv6 address"),
    ]


# -- privacy: no reason or path quotes a value -----------------------------------------------

PLANTED = "ZQX9"  # a marker no schema keyword, field name or reason template contains


@pytest.mark.parametrize(
    "changes",
    [
        {"ip": "999.1.2.3"},
        {"ip": f"{PLANTED}:1.2.3.4"},
        {"user_agent": f"Mozilla/5.0 {PLANTED} " + "é" * 1500},
        {"user_agent": 42},
        {"event_id": f"has space {PLANTED}"},
        {"occurred_at": f"2024-05-01T12:30:00{PLANTED}"},
        {"geo": {"country": PLANTED, "city": PLANTED * 40}},
        {"method": f"get{PLANTED}"},
        {"status": 9999},
        {"extra_field": PLANTED},
        {"type": PLANTED},
        {"schema_version": 4915112345678},
    ],
)
def test_reasons_never_quote_the_value(changes: dict[str, Any]) -> None:
    found = problems_of(event(**changes))
    assert found
    for problem in found:
        for value in (PLANTED, "999.1.2.3", "Mozilla", "9999", "4915112345678", "42"):
            assert value not in problem.reason, problem
            assert value not in problem.path, problem


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=5,
)
_FIELDS = sorted({*ENVELOPE, *(k for fields in VALID.values() for k in fields), "type"})


@given(
    type_name=st.sampled_from(sorted(VALID)),
    field=st.sampled_from(_FIELDS),
    value=st.text(min_size=1).map(lambda s: f"{s}{PLANTED}{s}") | _json_values,
)
def test_no_reason_quotes_any_planted_value(type_name: str, field: str, value: Any) -> None:
    for problem in problems_of(event(type_name, **{field: value})):
        assert problem.code in CODES
        assert PLANTED not in problem.reason
        assert PLANTED not in problem.path


_odd_values = st.one_of(
    _json_values,
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -0.0, 1.0, 1e308, -1e308, 2**63, 2**64, True, False, None, "", " "]),
    st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=12),
)


@given(
    type_name=st.sampled_from([*sorted(VALID), "click"]),
    changes=st.dictionaries(st.sampled_from(_FIELDS), _odd_values, max_size=4),
)
def test_the_fast_evaluator_and_jsonschema_find_the_same_problems(
    type_name: str, changes: dict[str, Any]
) -> None:
    obj = {**event(type_name if type_name in VALID else "request"), **changes}
    if type_name == "click":
        obj["type"] = "click"
    assert schema_problems(obj) == schema_problems(obj, use_jsonschema=True)


# -- round trip ------------------------------------------------------------------------------


@given(events())
def test_encoded_events_are_valid_and_decode_to_an_equal_struct(ev: Event) -> None:
    data = encode(ev)
    assert validate_event_bytes(data) == []
    assert parse_event(data) == ev
    assert msgspec.json.decode(data, type=Event) == ev


# -- the post-decode checks the decoder shares ------------------------------------------------

_IP_LIKE = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,4}){3}", fullmatch=True),
    st.text(alphabet="0123456789abcdefABCDEF.:%/ \n", max_size=24),
    st.text(max_size=8),
)


@given(_IP_LIKE)
def test_is_valid_ip_agrees_with_the_jsonschema_formats(value: str) -> None:
    formats = FormatChecker(formats=("ipv4", "ipv6"))
    expected = formats.conforms(value, "ipv4") or formats.conforms(value, "ipv6")
    assert is_valid_ip(value) == expected


def test_decoder_wording_of_post_decode_problems_is_the_validators() -> None:
    assert only(problems_of(event(ip="999.1.2.3"))) == IP_PROBLEM
    assert only(problems_of(event(user_agent="é" * 1500))) == USER_AGENT_PROBLEM
