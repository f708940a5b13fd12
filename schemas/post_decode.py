"""The checks msgspec's typed decoder does not do, on a decoded event: IP syntax, the user
agent's UTF-8 length, control characters in text fields, an ``occurred_at`` that exists in
UTC and lies in its window. An event msgspec accepts is valid iff it passes them
(:func:`passes_post_decode_checks`); ``schemas.decode`` runs them per event, each as cheaply
as it can, and ``schemas.validate`` words their problems.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from schemas import jsonschema as contract
from schemas.bounds import (
    DEFAULT_TIME_BOUNDS,
    FORBIDDEN_IN_HEADER_TEXT,
    FORBIDDEN_IN_TEXT,
    InstantVerdict,
    TimeBounds,
    judge_instant,
)
from schemas.events import (
    HEADER_TEXT_PATTERN,
    MAX_USER_AGENT_BYTES,
    TEXT_PATTERN,
    Event,
    EventBase,
)

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


_FORBIDDEN: Final = {TEXT_PATTERN: FORBIDDEN_IN_TEXT, HEADER_TEXT_PATTERN: FORBIDDEN_IN_HEADER_TEXT}
TextField = tuple[tuple[str, ...], re.Pattern[str]]  # attribute path, characters it must not hold


def _text_fields(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Iterator[TextField]:
    # Read from the generated schema, so a new text field is checked without a list to update.
    for name, sub in schema.get("properties", {}).items():
        for branch in sub.get("anyOf", [sub]):
            if branch.get("pattern") in _FORBIDDEN:
                yield (name,), _FORBIDDEN[branch["pattern"]]
            ref = branch.get("$ref", "")
            if ref.startswith("#/$defs/"):
                nested = defs[ref.removeprefix("#/$defs/")]
                for path, forbidden in _text_fields(nested, defs):
                    yield (name, *path), forbidden


@functools.cache
def _text_fields_of(cls: type[EventBase]) -> tuple[TextField, ...]:
    name = cls.__struct_config__.tag
    assert isinstance(name, str)
    schema = contract.type_schema(name)
    return tuple(_text_fields(schema, schema.get("$defs", {})))


def has_control_characters(event: Event) -> bool:
    """True if a text field of ``event`` holds a character its kind of text must not.

    Costs a regex search per text field present; ``schemas.bounds.
    may_hold_control_characters`` on the event's bytes says when it can be skipped.
    """
    for attributes, forbidden in _text_fields_of(type(event)):
        value: Any = event
        for attribute in attributes:
            value = getattr(value, attribute, None)
            if value is None:
                break
        if isinstance(value, str) and forbidden.search(value):
            return True
    return False


def passes_post_decode_checks(
    event: Event,
    *,
    received_at_ms: int | None = None,
    backfill: bool = False,
    bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> bool:
    """The checks msgspec's typed decoder does not do; an accepted event passes them all."""
    if event.ip is not None and not is_valid_ip(event.ip):
        return False
    if event.user_agent is not None and not user_agent_fits(event.user_agent):
        return False
    if has_control_characters(event):
        return False
    verdict = judge_instant(event.occurred_at, received_at_ms, backfill, bounds)
    return verdict is InstantVerdict.OK


# -- jsonschema's ipv4 and ipv6 formats, for the schema evaluator --------------------------------


def is_ipv4(instance: object) -> bool:
    # jsonschema's "ipv4" format checker, minus its registry lookup (the tests compare them).
    return not isinstance(instance, str) or _is_ipv4_text(instance)


def is_ipv6(instance: object) -> bool:
    # jsonschema's "ipv6" format checker: a zone ("fe80::1%eth0") is no address.
    return not isinstance(instance, str) or _is_ipv6_text(instance)


@functools.lru_cache(maxsize=256)  # the predicate and the error search ask about one address
def _is_ipv4_text(instance: str) -> bool:
    if _IPV4.fullmatch(instance):
        return True
    try:
        ipaddress.IPv4Address(instance)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=256)
def _is_ipv6_text(instance: str) -> bool:
    try:
        address = ipaddress.IPv6Address(instance)
    except ValueError:
        return False
    return not getattr(address, "scope_id", "")
