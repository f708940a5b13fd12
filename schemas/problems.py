"""How a broken rule of the contract is named and worded: codes, paths and reasons.

Privacy: a reason never contains the value it is about. Reasons go into dead-letter
headers, collector answers and logs, and values are personal data (an IP address, a user
agent), so every reason is built here from the keyword, the field name and the schema;
jsonschema's own messages, which quote the instance, are never used. Field names taken
from the input (unknown fields) are shown only when they look like field names.

:func:`problems_of_errors` words schema errors, whether the jsonschema package or
:mod:`schemas.schema_subset` found them: both give errors the same shape, and the
validator's tests hold the two to the same answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any, Final, NamedTuple

from schemas.bounds import parse_datetime
from schemas.events import (
    EVENT_TYPES,
    HEADER_TEXT_PATTERN,
    MAX_EVENT_BYTES,
    MAX_NESTING_DEPTH,
    MAX_USER_AGENT_BYTES,
    TEXT_PATTERN,
)


class Problem(NamedTuple):
    """One way an event breaks the contract. ``reason`` never quotes the offending value."""

    path: str  # JSON path of the offending field: "$" (the message), "$.ip", "$.geo.country"
    code: str  # one of CODES: stable, for dead-letter headers and metrics
    reason: str  # one sentence for a person: what is wrong with which field


EMPTY_MESSAGE: Final = "empty_message"
TOO_LARGE: Final = "too_large"
TOO_DEEP: Final = "too_deep"
INVALID_JSON: Final = "invalid_json"
NOT_AN_OBJECT: Final = "not_an_object"
UNKNOWN_TYPE: Final = "unknown_type"
UNSUPPORTED_SCHEMA_VERSION: Final = "unsupported_schema_version"
MISSING_FIELD: Final = "missing_field"
UNKNOWN_FIELD: Final = "unknown_field"
WRONG_TYPE: Final = "wrong_type"
INVALID_VALUE: Final = "invalid_value"
INVALID_FORMAT: Final = "invalid_format"
CONTROL_CHARACTER: Final = "control_character"
TOO_LONG: Final = "too_long"
TOO_SHORT: Final = "too_short"
OUT_OF_RANGE: Final = "out_of_range"
NAIVE_TIMESTAMP: Final = "naive_timestamp"
INVALID_TIMESTAMP: Final = "invalid_timestamp"
TOO_FAR_AHEAD: Final = "too_far_ahead"
TOO_FAR_BEHIND: Final = "too_far_behind"
INVALID_IP: Final = "invalid_ip"

CODES: Final = frozenset(
    {
        EMPTY_MESSAGE,
        TOO_LARGE,
        TOO_DEEP,
        INVALID_JSON,
        NOT_AN_OBJECT,
        UNKNOWN_TYPE,
        UNSUPPORTED_SCHEMA_VERSION,
        MISSING_FIELD,
        UNKNOWN_FIELD,
        WRONG_TYPE,
        INVALID_VALUE,
        INVALID_FORMAT,
        CONTROL_CHARACTER,
        TOO_LONG,
        TOO_SHORT,
        OUT_OF_RANGE,
        NAIVE_TIMESTAMP,
        INVALID_TIMESTAMP,
        TOO_FAR_AHEAD,
        TOO_FAR_BEHIND,
        INVALID_IP,
    }
)

ALLOWED_TYPES: Final = ", ".join(sorted(EVENT_TYPES))

# -- problems of the whole message, and of the rules beyond the schema ------------------------

EMPTY_PROBLEM: Final = Problem("$", EMPTY_MESSAGE, "the message is empty (a tombstone?)")
INVALID_JSON_PROBLEM: Final = Problem("$", INVALID_JSON, "the message is not valid JSON in UTF-8")
TOO_DEEP_PROBLEM: Final = Problem(
    "$", TOO_DEEP, f"the event nests deeper than {MAX_NESTING_DEPTH} levels of JSON"
)
IP_PROBLEM: Final = Problem("$.ip", INVALID_IP, "ip is not a valid IPv4 or IPv6 address")
USER_AGENT_PROBLEM: Final = Problem(
    "$.user_agent", TOO_LONG, f"user_agent is longer than {MAX_USER_AGENT_BYTES} bytes in UTF-8"
)
UNREPRESENTABLE_PROBLEM: Final = Problem(
    "$.occurred_at",
    OUT_OF_RANGE,
    "occurred_at is not an instant of the years 0001-9999 once converted to UTC",
)


def too_large_problem(size: int) -> Problem:
    """The event is ``size`` bytes, over MAX_EVENT_BYTES (sizes are no personal data)."""
    return Problem(
        "$", TOO_LARGE, f"the event is {size} bytes; the limit is {MAX_EVENT_BYTES} bytes"
    )


def too_far_ahead_problem(max_ahead: timedelta) -> Problem:
    """occurred_at lies more than ``max_ahead`` after the event's arrival."""
    return Problem(
        "$.occurred_at",
        TOO_FAR_AHEAD,
        f"occurred_at is more than {duration_words(max_ahead)} after the event arrived"
        " (a clock ahead of time?)",
    )


def too_far_behind_problem(max_behind: timedelta, *, backfill: bool) -> Problem:
    """occurred_at lies more than ``max_behind`` before the event's arrival."""
    what = "a backfill" if backfill else "live traffic; `sieve replay` sends backfills"
    return Problem(
        "$.occurred_at",
        TOO_FAR_BEHIND,
        f"occurred_at is more than {duration_words(max_behind)} before the event arrived"
        f" (the limit for {what})",
    )


def duration_words(span: timedelta) -> str:
    """A setting's duration as a person reads it: "1 day", "400 days", "36 hours"."""
    seconds = int(span.total_seconds())
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}" if count == 1 else f"{count} {unit}s"
    return f"{seconds} second" if seconds == 1 else f"{seconds} seconds"


# -- schema errors as problems ----------------------------------------------------------------

# A key from the input is shown in a path only if it looks like a field name; anything else
# (an e-mail address used as a key, say) is personal data as much as a value is.
_SAFE_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_HIDDEN_KEY: Final = "[?]"

# Errors that the rules beyond the schema word better: schema_version's enum, the user
# agent's length in characters (more than 2048 characters is always more than 2048 bytes).
_SUPERSEDED: Final = frozenset({(("schema_version",), "enum"), (("user_agent",), "maxLength")})

_BOUNDS: Final = {
    "minimum": ">=",
    "maximum": "<=",
    "exclusiveMinimum": ">",
    "exclusiveMaximum": "<",
}
# The patterns that only forbid control characters (schemas.events says which fields).
_CONTROL_PATTERNS: Final = {
    TEXT_PATTERN: "a control character (U+0000-U+001F, U+007F-U+009F)",
    HEADER_TEXT_PATTERN: "a control character (U+0000-U+001F other than tab, or U+007F)",
}


def problems_of_errors(errors: Iterable[Any], type_name: str | None) -> Iterator[Problem]:
    """The problems that schema ``errors`` (jsonschema's or the subset's) stand for.

    ``type_name`` is the event's type, or None when only the envelope was checked.
    """
    for error in errors:
        for leaf in _leaves(error):
            yield from _translate(leaf, type_name)


def _leaves(error: Any) -> Iterator[Any]:
    """The errors that explain ``error``: inside anyOf/oneOf, those of the branches that apply."""
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        if (tuple(error.absolute_path), error.validator) not in _SUPERSEDED:
            yield error
        return
    branches: dict[object, list[Any]] = {}
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


def _translate(error: Any, type_name: str | None) -> Iterator[Problem]:
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
    elif keyword == "pattern" and expected in _CONTROL_PATTERNS:
        yield Problem(path, CONTROL_CHARACTER, f"{field} holds {_CONTROL_PATTERNS[expected]}")
    elif keyword == "pattern":
        yield Problem(path, INVALID_FORMAT, f"{field} does not match the pattern {expected}")
    elif keyword in _BOUNDS:
        yield Problem(path, OUT_OF_RANGE, f"{field} must be {_BOUNDS[keyword]} {expected}")
    else:
        yield Problem(path, INVALID_VALUE, f"{field} breaks the {keyword} rule of the schema")


def _format_problem(path: str, field: str, fmt: str, instance: object) -> Problem:
    if fmt == "date-time":
        parsed = parse_datetime(instance) if isinstance(instance, str) else None
        if parsed is not None and parsed.tzinfo is None:
            return Problem(path, NAIVE_TIMESTAMP, f"{field} has no timezone offset")
        return Problem(
            path, INVALID_TIMESTAMP, f"{field} is not an RFC 3339 date-time with an offset"
        )
    if fmt in ("ipv4", "ipv6"):
        # Only "ip" has these formats: this is IP_PROBLEM, the decoder's wording (tested).
        return Problem(path, INVALID_IP, f"{field} is not a valid IPv4 or IPv6 address")
    return Problem(path, INVALID_FORMAT, f"{field} is not a valid {fmt}")


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


def field_name(path: str) -> str:
    """The field of a problem path as a person reads it ("geo.country", "the event")."""
    return path.removeprefix("$.") if path != "$" else "the event"


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


def json_type_words(value: object) -> str:
    """What kind of JSON value ``value`` is, for a reason ("an array", "null")."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    return "null"
