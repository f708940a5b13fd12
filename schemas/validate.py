"""Every problem of one event, each with its JSON path, a stable code and a reason.

The checks are the JSON Schema of the event's ``type`` (draft 2020-12, formats checked),
built in memory by ``schemas.jsonschema`` (a test keeps the committed files equal to it, so
an installed package needs no data files), plus the rules JSON Schema cannot say
(:mod:`schemas.bounds`): the size and nesting depth of the event, the UTF-8 length of the
user agent, the supported schema versions, an ``occurred_at`` that exists in UTC and lies
in its window around the arrival, when the caller knows the arrival.

Never raises, whatever the bytes: every input gets problems or none. Codes and wording are
:mod:`schemas.problems`'s; reasons never quote a value.

Speed: the schema is evaluated by :mod:`schemas.schema_subset` (a few microseconds), not
by the jsonschema package (~0.1 ms), which is kept for schemas using keywords the subset
does not implement and as the reference the tests hold the subset to.

Agreement with the hot path: ``schemas.decode`` accepts exactly the events this module
finds no problem in. Three choices keep it so: an "integer" must be a JSON integer (msgspec
rejects 200.0, JSON Schema alone would not); a date-time is checked with msgspec's own
RFC 3339 parser, which also accepts a space for "T" and "+hhmm" offsets (rejecting them in
the decoder would need a second pass over every message, ~25 % of its time); and a pattern
ending in "$" means the end of the text, as in ECMA-262, not Python's "or before a final
newline". Producers that follow the schema files (strict RFC 3339) are always accepted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Final

import msgspec
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError

from schemas import jsonschema as contract
from schemas.bounds import (
    DEFAULT_TIME_BOUNDS,
    InstantVerdict,
    TimeBounds,
    judge_instant,
    nests_deeper_than,
    parse_datetime,
)
from schemas.errors import InvalidEventError
from schemas.events import (
    ENVELOPE_FIELDS,
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    MAX_NESTING_DEPTH,
    SUPPORTED_SCHEMA_VERSIONS,
    Event,
)
from schemas.post_decode import (
    has_control_characters,
    is_ipv4,
    is_ipv6,
    is_valid_ip,
    passes_post_decode_checks,
    user_agent_fits,
)
from schemas.problems import (
    ALLOWED_TYPES,
    CODES,
    CONTROL_CHARACTER,
    EMPTY_MESSAGE,
    EMPTY_PROBLEM,
    INVALID_FORMAT,
    INVALID_IP,
    INVALID_JSON,
    INVALID_JSON_PROBLEM,
    INVALID_TIMESTAMP,
    INVALID_VALUE,
    IP_PROBLEM,
    MISSING_FIELD,
    NAIVE_TIMESTAMP,
    NOT_AN_OBJECT,
    OUT_OF_RANGE,
    TOO_DEEP,
    TOO_DEEP_PROBLEM,
    TOO_FAR_AHEAD,
    TOO_FAR_BEHIND,
    TOO_LARGE,
    TOO_LONG,
    TOO_SHORT,
    UNKNOWN_FIELD,
    UNKNOWN_TYPE,
    UNREPRESENTABLE_PROBLEM,
    UNSUPPORTED_SCHEMA_VERSION,
    USER_AGENT_PROBLEM,
    WRONG_TYPE,
    Problem,
    field_name,
    json_type_words,
    problems_of_errors,
    too_far_ahead_problem,
    too_far_behind_problem,
    too_large_problem,
)
from schemas.schema_subset import (
    SchemaError,
    SubsetValidator,
    UnsupportedSchema,
    compiled_pattern,
)

__all__ = [
    "CODES",
    "CONTROL_CHARACTER",
    "EMPTY_MESSAGE",
    "INVALID_FORMAT",
    "INVALID_IP",
    "INVALID_JSON",
    "INVALID_TIMESTAMP",
    "INVALID_VALUE",
    "IP_PROBLEM",
    "MISSING_FIELD",
    "NAIVE_TIMESTAMP",
    "NOT_AN_OBJECT",
    "OUT_OF_RANGE",
    "TOO_DEEP",
    "TOO_FAR_AHEAD",
    "TOO_FAR_BEHIND",
    "TOO_LARGE",
    "TOO_LONG",
    "TOO_SHORT",
    "UNKNOWN_FIELD",
    "UNKNOWN_TYPE",
    "UNSUPPORTED_SCHEMA_VERSION",
    "USER_AGENT_PROBLEM",
    "WRONG_TYPE",
    "Problem",
    "first_problem",
    "has_control_characters",
    "is_valid_ip",
    "parse_event",
    "passes_post_decode_checks",
    "schema_problems",
    "user_agent_fits",
    "validate_event",
    "validate_event_bytes",
]

_SUPPORTED: Final = ", ".join(str(v) for v in sorted(SUPPORTED_SCHEMA_VERSIONS))
_MSGSPEC_PATH: Final = re.compile(r" - at `(\$[^`]*)`$")
_EVENT_DECODER: Final[msgspec.json.Decoder[Event]] = msgspec.json.Decoder(Event)


# -- the schema, evaluated by the subset or by jsonschema ---------------------------------------


def _is_json_integer(_checker: object, instance: object) -> bool:
    # JSON Schema counts 200.0 as an integer; msgspec's int fields do not, and neither do we.
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_aware_datetime(instance: object) -> bool:
    if not isinstance(instance, str):
        return True  # formats apply to strings only; "type" reports the rest
    parsed = parse_datetime(instance)
    return parsed is not None and parsed.tzinfo is not None


def _ecma_pattern_keyword(validator: Any, pattern: str, instance: object, schema: Any) -> Any:
    # jsonschema's own "pattern" uses re.search with Python's "$" (see schemas.events).
    if isinstance(instance, str) and not compiled_pattern(pattern).search(instance):
        yield ValidationError(f"does not match {pattern!r}")


_Validator: Final[Any] = validators.extend(
    Draft202012Validator,
    validators={"pattern": _ecma_pattern_keyword},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_json_integer),
)


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=("ipv4", "ipv6"))
    checker.checks("date-time")(_is_aware_datetime)
    return checker


def _subset_format_check(checker: FormatChecker) -> Callable[[str, object], bool]:
    direct: dict[str, Callable[[object], bool]] = {
        "date-time": _is_aware_datetime,
        "ipv4": is_ipv4,
        "ipv6": is_ipv6,
    }

    def conforms(fmt: str, instance: object) -> bool:
        check = direct.get(fmt)
        return check(instance) if check is not None else checker.conforms(instance, fmt)

    return conforms


def _envelope_schema(any_type_schema: dict[str, Any]) -> dict[str, Any]:
    # For an event of unknown type: check the envelope, let the other fields be.
    schema = {k: v for k, v in any_type_schema.items() if k != "additionalProperties"}
    schema["properties"] = {
        k: v for k, v in any_type_schema["properties"].items() if k in ENVELOPE_FIELDS
    }
    schema["required"] = [k for k in any_type_schema["required"] if k in ENVELOPE_FIELDS]
    return schema


_Validators = tuple[dict[str, Any], Any]


@functools.cache
def _validators(use_jsonschema: bool) -> _Validators:
    """Per-type validators and the envelope-only one; built once (the schemas never change).

    The subset evaluator where it supports the schema, jsonschema otherwise (or when asked).
    """
    formats = _format_checker()
    schemas = {name: contract.type_schema(name) for name in EVENT_TYPES}
    schemas[""] = _envelope_schema(next(iter(schemas.values())))

    def build(schema: dict[str, Any]) -> Any:
        if not use_jsonschema:
            try:
                return SubsetValidator(schema, _subset_format_check(formats))
            except UnsupportedSchema:
                pass
        return _Validator(schema, format_checker=formats)

    built = {name: build(schema) for name, schema in schemas.items()}
    envelope = built.pop("")
    return built, envelope


# -- public API -----------------------------------------------------------------------------


def validate_event_bytes(
    data: bytes,
    *,
    received_at_ms: int | None = None,
    backfill: bool = False,
    bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> list[Problem]:
    """Every problem of one encoded event; empty if and only if the event is valid.

    ``received_at_ms`` is the event's arrival (ms since the epoch; the Kafka record
    timestamp): given, ``occurred_at`` must lie within ``bounds`` of it (the backfill window
    if ``backfill``). None (or negative: a record without timestamp): no window.

    An event over MAX_EVENT_BYTES, or nesting deeper than MAX_NESTING_DEPTH, gets that one
    problem: parsing it further would let one message cost what thousands of valid ones do.
    """
    if not data:
        return [EMPTY_PROBLEM]
    if len(data) > MAX_EVENT_BYTES:
        return [too_large_problem(len(data))]
    if nests_deeper_than(data, MAX_NESTING_DEPTH):
        return [TOO_DEEP_PROBLEM]
    try:
        obj = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return [INVALID_JSON_PROBLEM]
    problems = _problems(obj, _validators(False), received_at_ms, backfill, bounds)
    if problems:
        return problems
    return _typed_decoder_problems(data)


def first_problem(
    data: bytes,
    *,
    received_at_ms: int | None = None,
    backfill: bool = False,
    bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> Problem | None:
    """``validate_event_bytes(data, ...)[0]`` (None when valid), for less work: what a
    rejection carries (``schemas.decode``).

    Problems are sorted by (path, code), and every path of a field starts with "$.<field>",
    so fields are checked in that order and the search stops at the first field that cannot
    hold a smaller problem than one already found: on average half the fields.
    """
    if not data:
        return EMPTY_PROBLEM
    if len(data) > MAX_EVENT_BYTES:
        return too_large_problem(len(data))
    if nests_deeper_than(data, MAX_NESTING_DEPTH):
        return TOO_DEEP_PROBLEM
    try:
        obj = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return INVALID_JSON_PROBLEM
    by_type, envelope = _validators(False)
    type_name = obj.get("type") if isinstance(obj, dict) else None
    typed = isinstance(type_name, str) and type_name in by_type
    validator = by_type[str(type_name)] if typed else envelope
    if not isinstance(obj, dict) or not isinstance(validator, SubsetValidator):
        problems = _problems(obj, _validators(False), received_at_ms, backfill, bounds)
        found = problems[0] if problems else None
    else:
        found = _first_problem(obj, validator, typed, (received_at_ms, backfill, bounds))
    if found is not None:
        return found
    return next(iter(_typed_decoder_problems(data)), None)


def _first_problem(
    obj: dict[str, Any],
    validator: SubsetValidator,
    typed: bool,
    arrival: tuple[int | None, bool, TimeBounds],
) -> Problem | None:
    """The smallest (path, code) of ``_problems(obj)``, evaluating fields lazily."""
    schema = validator.root
    type_name = obj["type"] if typed else None
    known = validator.property_checks
    # Problems known without evaluating anything: the type, missing and unknown fields.
    found: list[Problem] = []
    if not typed:
        found.append(_type_problem(obj))
    for name in validator.required:
        if name not in obj:
            found.append(Problem("$." + name, MISSING_FIELD, f"{name} is required"))
    if validator.closed:
        unknown = {key: None for key in obj if key not in known}
        if unknown:
            error = SchemaError("additionalProperties", False, unknown, schema, ())
            found.extend(problems_of_errors([error], type_name))
    best = min(found, key=_order) if found else None
    # Fields to evaluate, each with the smallest path it could report a problem at: every
    # path of a field's problems starts with "$.<field>".
    pending = sorted(
        [("$." + name, name) for name in obj if name in known]
        + [(path, "") for path, field in _EXTRA_PATHS if field in obj]
    )
    extra: list[Problem] | None = None
    for lower, name in pending:
        if best is not None and lower > best.path:
            break
        if name:
            sub, holds = known[name]
            value = obj[name]
            if holds(value):
                continue
            errors = validator.errors_under(sub, value, name)
            problems = list(problems_of_errors(errors, type_name))
        else:
            if extra is None:
                extra = list(_extra_problems(obj, *arrival))
            problems = [p for p in extra if p.path == lower]
        for problem in problems:
            if best is None or _order(problem) < _order(best):
                best = problem
    return best


def _order(problem: Problem) -> tuple[str, str]:
    return (problem.path, problem.code)


# Where the rules beyond the schema report their problems, and the field each looks at.
_EXTRA_PATHS: Final = (
    ("$.occurred_at", "occurred_at"),
    ("$.schema_version", "schema_version"),
    ("$.user_agent", "user_agent"),
)


def _type_problem(obj: dict[str, Any]) -> Problem:
    if "type" not in obj:
        return Problem("$.type", MISSING_FIELD, f"type is required (one of: {ALLOWED_TYPES})")
    return Problem("$.type", UNKNOWN_TYPE, f"type must be one of: {ALLOWED_TYPES}")


def validate_event(
    obj: dict[str, Any],
    *,
    received_at_ms: int | None = None,
    backfill: bool = False,
    bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> list[Problem]:
    """Every problem of one event given as a JSON-like dict (datetimes are encoded first)."""
    try:
        data = msgspec.json.encode(obj)
    except RecursionError:
        return [TOO_DEEP_PROBLEM]
    except (TypeError, ValueError, OverflowError, UnicodeError):
        return [Problem("$", INVALID_JSON, "the object cannot be written as JSON")]
    return validate_event_bytes(
        data, received_at_ms=received_at_ms, backfill=backfill, bounds=bounds
    )


def schema_problems(obj: object, *, use_jsonschema: bool = False) -> list[Problem]:
    """The problems of a decoded event by the schema and the arrival-free rules, found by
    the fast subset evaluator or (``use_jsonschema``) by the jsonschema package.

    Both must always agree: the tests compare them, and this is what they compare.
    """
    return _problems(obj, _validators(use_jsonschema), None, False, DEFAULT_TIME_BOUNDS)


def parse_event(
    data: bytes,
    *,
    received_at_ms: int | None = None,
    backfill: bool = False,
    bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> Event:
    """The event in ``data``, or InvalidEventError listing every (path, reason) found.

    The arrival arguments are those of :func:`validate_event_bytes`.
    """
    if len(data) <= MAX_EVENT_BYTES:
        # Fast path (msgspec plus the checks it cannot do): the decision equals
        # validate_event_bytes's, which then only runs to explain a rejection.
        try:
            event = _EVENT_DECODER.decode(data)
        except (msgspec.DecodeError, RecursionError):
            pass
        else:
            if passes_post_decode_checks(
                event, received_at_ms=received_at_ms, backfill=backfill, bounds=bounds
            ):
                return event
    problems = validate_event_bytes(
        data, received_at_ms=received_at_ms, backfill=backfill, bounds=bounds
    ) or [Problem("$", INVALID_VALUE, "the event does not satisfy the contract")]
    raise InvalidEventError([(p.path, p.reason) for p in problems])


# -- how problems are found -------------------------------------------------------------------


def _problems(
    obj: object,
    validators_: _Validators,
    received_at_ms: int | None,
    backfill: bool,
    bounds: TimeBounds,
) -> list[Problem]:
    if not isinstance(obj, dict):
        return [
            Problem("$", NOT_AN_OBJECT, f"an event is a JSON object, not {json_type_words(obj)}")
        ]
    by_type, envelope = validators_
    found: list[Problem] = []
    type_name = obj.get("type")
    validator = by_type.get(type_name) if isinstance(type_name, str) else None
    if validator is None:
        found.append(_type_problem(obj))
        validator = envelope
        type_name = None
    found.extend(problems_of_errors(validator.iter_errors(obj), type_name))
    found.extend(_extra_problems(obj, received_at_ms, backfill, bounds))
    # One problem per (path, code), in path order: stable for tests, headers and people.
    unique = {(p.path, p.code): p for p in reversed(found)}
    return sorted(unique.values(), key=lambda p: (p.path, p.code))


def _extra_problems(
    obj: dict[str, Any], received_at_ms: int | None, backfill: bool, bounds: TimeBounds
) -> Iterator[Problem]:
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
    occurred_at = obj.get("occurred_at")
    if isinstance(occurred_at, str):
        instant = parse_datetime(occurred_at)
        if instant is not None and instant.tzinfo is not None:
            yield from _instant_problems(instant, received_at_ms, backfill, bounds)


def _instant_problems(
    instant: datetime, received_at_ms: int | None, backfill: bool, bounds: TimeBounds
) -> Iterator[Problem]:
    verdict = judge_instant(instant, received_at_ms, backfill, bounds)
    if verdict is InstantVerdict.UNREPRESENTABLE:
        yield UNREPRESENTABLE_PROBLEM
    elif verdict is InstantVerdict.TOO_FAR_AHEAD:
        yield too_far_ahead_problem(bounds.max_ahead)
    elif verdict is InstantVerdict.TOO_FAR_BEHIND:
        behind = bounds.backfill_max_behind if backfill else bounds.max_behind
        yield too_far_behind_problem(behind, backfill=backfill)


def _typed_decoder_problems(data: bytes) -> list[Problem]:
    # A last guard so this module never accepts what the decoder rejects. Nothing known
    # reaches it except conflicting duplicate "type" keys (msgspec checks each one, a dict
    # keeps the last). msgspec's message quotes values: only its path is kept.
    try:
        _EVENT_DECODER.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        match = _MSGSPEC_PATH.search(str(exc))
        path = match.group(1) if match else "$"
        return [Problem(path, INVALID_VALUE, f"{field_name(path)} does not satisfy the contract")]
    return []
