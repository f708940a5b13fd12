"""Every problem of one event, each with its JSON path, a stable code and a reason.

The checks are the JSON Schema of the event's ``type`` (draft 2020-12, formats checked),
built in memory by ``schemas.jsonschema`` (a test keeps the committed files equal to it, so
an installed package needs no data files), plus the rules JSON Schema cannot say: the size
of the event, the UTF-8 length of the user agent, the supported schema versions.

Privacy: a reason never contains the value it is about. Reasons go into dead-letter
headers and logs, and values are personal data (an IP address, a user agent), so every
reason is built here from the keyword and the field name; jsonschema's own messages, which
quote the instance, are never used. Field names taken from the input (unknown fields) are
shown only when they look like field names.

Agreement with the hot path: ``schemas.decode`` accepts exactly the events this module
finds no problem in. Two choices keep it so: an "integer" must be a JSON integer (msgspec
rejects 200.0, JSON Schema alone would not), and a date-time is checked with msgspec's own
RFC 3339 parser, which also accepts a space for "T" and "+hhmm" offsets (rejecting them in
the decoder would need a second pass over every message, ~25 % of its time). Producers
that follow the schema files (strict RFC 3339) are always accepted.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, Final, NamedTuple

import msgspec
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError

from schemas import jsonschema as contract
from schemas.events import (
    ENVELOPE_FIELDS,
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    MAX_USER_AGENT_BYTES,
    SUPPORTED_SCHEMA_VERSIONS,
    Event,
)
from streams.errors import InvalidEventError


class Problem(NamedTuple):
    """One way an event breaks the contract. ``reason`` never quotes the offending value."""

    path: str  # JSON path of the offending field: "$" (the message), "$.ip", "$.geo.country"
    code: str  # one of CODES: stable, for dead-letter headers and metrics
    reason: str  # one sentence for a person: what is wrong with which field


EMPTY_MESSAGE: Final = "empty_message"
TOO_LARGE: Final = "too_large"
INVALID_JSON: Final = "invalid_json"
NOT_AN_OBJECT: Final = "not_an_object"
UNKNOWN_TYPE: Final = "unknown_type"
UNSUPPORTED_SCHEMA_VERSION: Final = "unsupported_schema_version"
MISSING_FIELD: Final = "missing_field"
UNKNOWN_FIELD: Final = "unknown_field"
WRONG_TYPE: Final = "wrong_type"
INVALID_VALUE: Final = "invalid_value"
INVALID_FORMAT: Final = "invalid_format"
TOO_LONG: Final = "too_long"
TOO_SHORT: Final = "too_short"
OUT_OF_RANGE: Final = "out_of_range"
NAIVE_TIMESTAMP: Final = "naive_timestamp"
INVALID_TIMESTAMP: Final = "invalid_timestamp"
INVALID_IP: Final = "invalid_ip"

CODES: Final = frozenset(
    {
        EMPTY_MESSAGE,
        TOO_LARGE,
        INVALID_JSON,
        NOT_AN_OBJECT,
        UNKNOWN_TYPE,
        UNSUPPORTED_SCHEMA_VERSION,
        MISSING_FIELD,
        UNKNOWN_FIELD,
        WRONG_TYPE,
        INVALID_VALUE,
        INVALID_FORMAT,
        TOO_LONG,
        TOO_SHORT,
        OUT_OF_RANGE,
        NAIVE_TIMESTAMP,
        INVALID_TIMESTAMP,
        INVALID_IP,
    }
)

_ALLOWED_TYPES: Final = ", ".join(sorted(EVENT_TYPES))
_SUPPORTED: Final = ", ".join(str(v) for v in sorted(SUPPORTED_SCHEMA_VERSIONS))
# A key from the input is shown in a path only if it looks like a field name; anything else
# (an e-mail address used as a key, say) is personal data as much as a value is.
_SAFE_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_HIDDEN_KEY: Final = "[?]"
_MSGSPEC_PATH: Final = re.compile(r" - at `(\$[^`]*)`$")

_EVENT_DECODER: Final[msgspec.json.Decoder[Event]] = msgspec.json.Decoder(Event)
_DATETIME_DECODER: Final = msgspec.json.Decoder(datetime)


# -- the checks JSON Schema cannot do, shared with schemas.decode --------------------------


# Dotted-quad IPv4 exactly as ipaddress accepts it (no leading zeros, ASCII digits only):
# ~8x faster than the parser for the commonest case; anything else goes to the parser.
_IPV4: Final = re.compile(
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    r"(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
)


def is_valid_ip(value: str) -> bool:
    """True for an IPv4 or IPv6 address as jsonschema's ipv4/ipv6 formats accept it."""
    if _IPV4.fullmatch(value):
        return True
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    # jsonschema's ipv6 format rejects a zone ("fe80::1%eth0"); so do we, to agree with it.
    return not getattr(address, "scope_id", None)


def user_agent_fits(value: str) -> bool:
    """True if the user agent is at most MAX_USER_AGENT_BYTES in UTF-8."""
    # A character is at most 4 bytes: short strings (nearly all) need no encoding.
    if len(value) * 4 <= MAX_USER_AGENT_BYTES:
        return True
    return len(value.encode("utf-8", "surrogatepass")) <= MAX_USER_AGENT_BYTES


# The problems of the two checks above, worded once for the validator and the decoder.
IP_PROBLEM: Final = Problem("$.ip", INVALID_IP, "ip is not a valid IPv4 or IPv6 address")
USER_AGENT_PROBLEM: Final = Problem(
    "$.user_agent", TOO_LONG, f"user_agent is longer than {MAX_USER_AGENT_BYTES} bytes in UTF-8"
)


def passes_post_decode_checks(event: Event) -> bool:
    """The checks msgspec's typed decoder does not do; an accepted event passes them all."""
    if event.ip is not None and not is_valid_ip(event.ip):
        return False
    return event.user_agent is None or user_agent_fits(event.user_agent)


def _parse_datetime(text: str) -> datetime | None:
    # The very parser the typed decoder uses, so both agree on every string.
    try:
        return _DATETIME_DECODER.decode(msgspec.json.encode(text))
    except msgspec.DecodeError:
        return None


# -- validators built from the generated schemas -------------------------------------------


def _is_json_integer(_checker: object, instance: object) -> bool:
    # JSON Schema counts 200.0 as an integer; msgspec's int fields do not, and neither do we.
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_aware_datetime(instance: object) -> bool:
    if not isinstance(instance, str):
        return True  # formats apply to strings only; "type" reports the rest
    parsed = _parse_datetime(instance)
    return parsed is not None and parsed.tzinfo is not None


_Validator: Final[Any] = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_json_integer),
)


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=("ipv4", "ipv6"))
    checker.checks("date-time")(_is_aware_datetime)
    return checker


def _envelope_schema(any_type_schema: dict[str, Any]) -> dict[str, Any]:
    # For an event of unknown type: check the envelope, let the other fields be.
    schema = {k: v for k, v in any_type_schema.items() if k != "additionalProperties"}
    schema["properties"] = {
        k: v for k, v in any_type_schema["properties"].items() if k in ENVELOPE_FIELDS
    }
    schema["required"] = [k for k in any_type_schema["required"] if k in ENVELOPE_FIELDS]
    return schema


@functools.cache
def _validators() -> tuple[dict[str, Any], Any]:
    """Per-type validators and the envelope-only one; built once (the schemas never change)."""
    formats = _format_checker()
    per_type = {name: contract.type_schema(name) for name in EVENT_TYPES}
    by_type = {
        name: _Validator(schema, format_checker=formats) for name, schema in per_type.items()
    }
    envelope = _Validator(_envelope_schema(next(iter(per_type.values()))), format_checker=formats)
    return by_type, envelope


# -- public API -----------------------------------------------------------------------------


def validate_event_bytes(data: bytes) -> list[Problem]:
    """Every problem of one encoded event; empty if and only if the event is valid.

    An event over MAX_EVENT_BYTES gets that one problem: parsing it further would let one
    oversized message cost what thousands of valid ones do.
    """
    if not data:
        return [Problem("$", EMPTY_MESSAGE, "the message is empty (a tombstone?)")]
    if len(data) > MAX_EVENT_BYTES:
        return [
            Problem(
                "$",
                TOO_LARGE,
                f"the event is {len(data)} bytes; the limit is {MAX_EVENT_BYTES} bytes",
            )
        ]
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return [Problem("$", INVALID_JSON, "the message is not valid JSON in UTF-8")]
    problems = _problems(obj)
    if problems:
        return problems
    return _typed_decoder_problems(data)


def validate_event(obj: dict[str, Any]) -> list[Problem]:
    """Every problem of one event given as a JSON-like dict (datetimes are encoded first)."""
    try:
        data = msgspec.json.encode(obj)
    except (TypeError, ValueError, OverflowError):
        return [Problem("$", INVALID_JSON, "the object cannot be written as JSON")]
    return validate_event_bytes(data)


def parse_event(data: bytes) -> Event:
    """The event in ``data``, or InvalidEventError listing every (path, reason) found."""
    if len(data) <= MAX_EVENT_BYTES:
        # Fast path (msgspec plus the checks it cannot do): the decision equals
        # validate_event_bytes's, which then only runs to explain a rejection.
        try:
            event = _EVENT_DECODER.decode(data)
        except msgspec.DecodeError:
            pass
        else:
            if passes_post_decode_checks(event):
                return event
    problems = validate_event_bytes(data) or [
        Problem("$", INVALID_VALUE, "the event does not satisfy the contract")
    ]
    raise InvalidEventError([(p.path, p.reason) for p in problems])


# -- how problems are found and worded ------------------------------------------------------


def _problems(obj: object) -> list[Problem]:
    if not isinstance(obj, dict):
        return [Problem("$", NOT_AN_OBJECT, f"an event is a JSON object, not {_json_type(obj)}")]
    by_type, envelope = _validators()
    found: list[Problem] = []
    type_name = obj.get("type")
    validator = by_type.get(type_name) if isinstance(type_name, str) else None
    if validator is None:
        if "type" not in obj:
            found.append(
                Problem("$.type", MISSING_FIELD, f"type is required (one of: {_ALLOWED_TYPES})")
            )
        else:
            found.append(Problem("$.type", UNKNOWN_TYPE, f"type must be one of: {_ALLOWED_TYPES}"))
        validator = envelope
        type_name = None
    for error in validator.iter_errors(obj):
        for leaf in _leaves(error):
            found.extend(_translate(leaf, type_name))
    found.extend(_extra_problems(obj))
    # One problem per (path, code), in path order: stable for tests, headers and people.
    unique = {(p.path, p.code): p for p in reversed(found)}
    return sorted(unique.values(), key=lambda p: (p.path, p.code))


def _extra_problems(obj: dict[str, Any]) -> Iterator[Problem]:
    if "schema_version" in obj:
        version = obj["schema_version"]
        if not _is_json_integer(None, version):
            yield Problem("$.schema_version", WRONG_TYPE, "schema_version must be an integer")
        elif version not in SUPPORTED_SCHEMA_VERSIONS:
            # The one reason that may quote its value: a small version number is no personal
            # data; a long number might be (a phone number), so it is not shown.
            shown = f"schema_version {version}" if 0 <= version < 1000 else "this schema_version"
            yield Problem(
                "$.schema_version",
                UNSUPPORTED_SCHEMA_VERSION,
                f"{shown} is not supported (supported: {_SUPPORTED})",
            )
    user_agent = obj.get("user_agent")
    if isinstance(user_agent, str) and not user_agent_fits(user_agent):
        yield USER_AGENT_PROBLEM


# Errors that _extra_problems words better: schema_version's enum, the user agent's length
# in characters (more than 2048 characters is always more than 2048 bytes).
_SUPERSEDED: Final = frozenset({(("schema_version",), "enum"), (("user_agent",), "maxLength")})


def _leaves(error: ValidationError) -> Iterator[ValidationError]:
    """The errors that explain ``error``: inside anyOf/oneOf, those of the branches that apply."""
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        if (tuple(error.absolute_path), error.validator) not in _SUPERSEDED:
            yield error
        return
    branches: dict[object, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    here = list(error.absolute_path)
    # An optional field is anyOf [T, null]; a branch whose type the value does not have
    # (the null branch for a string) explains nothing.
    relevant = [
        errors
        for errors in branches.values()
        if not any(e.validator == "type" and list(e.absolute_path) == here for e in errors)
    ]
    if not relevant:
        yield error  # the value has none of the branch types: reported as wrong_type
        return
    for errors in relevant:
        for sub in errors:
            yield from _leaves(sub)


def _translate(error: ValidationError, type_name: str | None) -> Iterator[Problem]:
    parts = list(error.absolute_path)
    path, field = _path(parts), _field(parts)
    keyword, expected = error.validator, error.validator_value
    if keyword == "required":
        for name in expected:
            if name not in error.instance:
                yield Problem(
                    _path([*parts, name]), MISSING_FIELD, f"{_field([*parts, name])} is required"
                )
    elif keyword == "additionalProperties":
        owner = f"{type_name} events" if not parts and type_name else field
        for key in error.instance:
            if key not in error.schema.get("properties", {}):
                where = _path([*parts, key])
                name = (
                    _field([*parts, key])
                    if _is_safe_key(key)
                    else "a field whose name is not shown"
                )
                yield Problem(where, UNKNOWN_FIELD, f"{name} is not a field of {owner}")
    elif keyword == "format":
        yield _format_problem(path, field, expected, error.instance)
    elif keyword in ("enum", "const"):
        allowed = expected if keyword == "enum" else [expected]
        words = ", ".join(_literal(v) for v in allowed)
        yield Problem(path, INVALID_VALUE, f"{field} must be one of: {words}")
    elif keyword == "type":
        yield Problem(path, WRONG_TYPE, f"{field} must be {_type_words([expected])}")
    elif keyword in ("anyOf", "oneOf"):
        types = [e.validator_value for e in error.context or () if e.validator == "type"]
        yield Problem(path, WRONG_TYPE, f"{field} must be {_type_words(types)}")
    elif keyword == "maxLength":
        yield Problem(path, TOO_LONG, f"{field} is longer than {expected} characters")
    elif keyword == "minLength":
        yield Problem(path, TOO_SHORT, f"{field} is shorter than {expected} character(s)")
    elif keyword == "pattern":
        yield Problem(path, INVALID_FORMAT, f"{field} does not match the pattern {expected}")
    elif keyword in _BOUNDS:
        yield Problem(path, OUT_OF_RANGE, f"{field} must be {_BOUNDS[keyword]} {expected}")
    else:
        yield Problem(path, INVALID_VALUE, f"{field} breaks the {keyword} rule of the schema")


_BOUNDS: Final = {
    "minimum": ">=",
    "maximum": "<=",
    "exclusiveMinimum": ">",
    "exclusiveMaximum": "<",
}


def _format_problem(path: str, field: str, fmt: str, instance: object) -> Problem:
    if fmt == "date-time":
        parsed = _parse_datetime(instance) if isinstance(instance, str) else None
        if parsed is not None and parsed.tzinfo is None:
            return Problem(path, NAIVE_TIMESTAMP, f"{field} has no timezone offset")
        return Problem(
            path, INVALID_TIMESTAMP, f"{field} is not an RFC 3339 date-time with an offset"
        )
    if fmt in ("ipv4", "ipv6"):
        # Only "ip" has these formats: this is IP_PROBLEM, the decoder's wording (tested).
        return Problem(path, INVALID_IP, f"{field} is not a valid IPv4 or IPv6 address")
    return Problem(path, INVALID_FORMAT, f"{field} is not a valid {fmt}")


def _typed_decoder_problems(data: bytes) -> list[Problem]:
    # A last guard so this module never accepts what the decoder rejects. Nothing known
    # reaches it except conflicting duplicate "type" keys (msgspec checks each one, a dict
    # keeps the last). msgspec's message quotes values: only its path is kept.
    try:
        _EVENT_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        match = _MSGSPEC_PATH.search(str(exc))
        path = match.group(1) if match else "$"
        field = path.removeprefix("$.") if path != "$" else "the event"
        return [Problem(path, INVALID_VALUE, f"{field} does not satisfy the contract")]
    return []


def _is_safe_key(key: object) -> bool:
    return isinstance(key, str) and _SAFE_KEY.fullmatch(key) is not None


def _path(parts: Iterable[object]) -> str:
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_safe_key(part):
            out += f".{part}"
        else:
            out += _HIDDEN_KEY
    return out


def _field(parts: list[object]) -> str:
    """The field as a person reads it: "geo.country"; "the event" for the root."""
    return _path(parts).removeprefix("$.") if parts else "the event"


def _literal(value: object) -> str:
    # Allowed values come from the schema, never from the input.
    return f"'{value}'" if isinstance(value, str) else str(value)


def _type_words(types: Iterable[object]) -> str:
    words: list[str] = []
    for t in types:
        for name in t if isinstance(t, list) else [t]:
            word = {"null": "null", "object": "an object", "integer": "an integer"}.get(
                str(name), f"a {name}"
            )
            if word not in words:
                words.append(word)
    return " or ".join(words) if words else "of another type"


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"
