"""Hypothesis strategies for valid events of every type (schema v1).

``events()`` draws any event, ``events_of("login")`` one type; every draw satisfies the whole
contract (``schemas.validate`` finds no problem in its encoding). Values mix realistic ones
(so enrichment and aggregation tests see plausible data) with arbitrary ones inside the
contract's limits (so codecs see the edges: Unicode, IPv6, far offsets, empty strings).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from schemas.events import (
    EVENT_TYPES,
    MAX_USER_AGENT_BYTES,
    AccountLifecycle,
    ConsentChange,
    Custom,
    Download,
    Event,
    Geo,
    Login,
    Logout,
    PageView,
    Payment,
    Request,
    Upload,
)

REALISTIC_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "curl/8.5.0",
    "python-requests/2.31.0",
)

_PRINTABLE_ASCII = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
# The characters text fields may hold (schemas.events): no C0 control, DEL or C1 control in
# URLs, names and references; a user agent (an HTTP field value) may hold a tab and C1.
_TEXT_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters=[
    *map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0))
])  # fmt: skip
_HEADER_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters=[
    *(chr(c) for c in range(0x20) if c != 0x09), "\x7f"
])  # fmt: skip


def texts(min_size: int = 0, max_size: int | None = None) -> st.SearchStrategy[str]:
    """Arbitrary text as URL, name and reference fields may hold it."""
    return st.text(alphabet=_TEXT_CHARS, min_size=min_size, max_size=max_size)


def identifiers() -> st.SearchStrategy[str]:
    """Identifiers as the contract allows them: 1-128 printable ASCII characters."""
    return st.one_of(
        st.from_regex(r"(acct|user|sess|evt)-[0-9a-f]{8,32}", fullmatch=True),
        st.text(alphabet=_PRINTABLE_ASCII, min_size=1, max_size=128),
    )


def occurred_ats() -> st.SearchStrategy[datetime]:
    """Aware instants 1990-2100 with whole-minute offsets (what RFC 3339 can write).

    Bounded so that code adding retention periods (7 years) never leaves datetime's range.
    """
    offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    )
    return st.builds(
        lambda naive, tz: naive.replace(tzinfo=tz),
        st.datetimes(min_value=datetime(1990, 1, 2), max_value=datetime(2099, 12, 30)),  # noqa: DTZ001
        st.one_of(st.just(UTC), offsets),
    )


def ip_addresses() -> st.SearchStrategy[str]:
    """IPv4 and IPv6 addresses as their canonical text."""
    return st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


def user_agents() -> st.SearchStrategy[str]:
    """Realistic user agents, and arbitrary text cut to MAX_USER_AGENT_BYTES in UTF-8."""
    arbitrary = st.text(alphabet=_HEADER_CHARS, max_size=MAX_USER_AGENT_BYTES).map(
        lambda s: s.encode("utf-8")[:MAX_USER_AGENT_BYTES].decode("utf-8", "ignore")
    )
    return st.one_of(st.sampled_from(REALISTIC_USER_AGENTS), arbitrary)


def geos() -> st.SearchStrategy[Geo]:
    """Geolocations with any subset of their fields."""
    return st.builds(
        Geo,
        country=st.none() | st.from_regex(r"[A-Z]{2}", fullmatch=True),
        region=st.none() | texts(max_size=64),
        city=st.none() | texts(max_size=128),
        lat=st.none() | st.floats(min_value=-90, max_value=90, allow_nan=False),
        lon=st.none() | st.floats(min_value=-180, max_value=180, allow_nan=False),
    )


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def _envelope() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "schema_version": st.just(1),
            "event_id": identifiers(),
            "occurred_at": occurred_ats(),
            "account_id": identifiers(),
        },
        optional={
            "user_id": _optional(identifiers()),
            "session_id": _optional(identifiers()),
            "ip": _optional(ip_addresses()),
            "user_agent": _optional(user_agents()),
            "geo": _optional(geos()),
            "dnt": st.booleans(),
            "gpc": st.booleans(),
        },
    )


_paths = st.one_of(
    st.from_regex(r"/(api/v1|console)(/[a-z0-9-]{1,12}){0,4}", fullmatch=True),
    texts(min_size=1, max_size=2048),
)
_referrers = _optional(st.one_of(st.just("https://console.example.com/"), texts(max_size=2048)))
_byte_counts = st.integers(min_value=0, max_value=1 << 50)
_content_types = st.one_of(
    st.sampled_from(["application/octet-stream", "image/png", "video/mp4", "text/csv"]),
    st.from_regex(r"[A-Za-z0-9_.+-]{1,100}/[A-Za-z0-9_.+-]{1,100}", fullmatch=True),
)

_TYPE_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "request": {
        "method": st.from_regex(r"[A-Z]{3,10}", fullmatch=True),
        "path": _paths,
        "status": st.integers(min_value=100, max_value=599),
        "response_bytes": _byte_counts,
        "referrer": _referrers,
    },
    "page_view": {"path": _paths, "referrer": _referrers},
    "login": {"method": st.sampled_from(["password", "sso", "api_key"])},
    "logout": {
        "session_duration_s": st.floats(min_value=0, max_value=31 * 24 * 3600, allow_nan=False)
    },
    "upload": {
        "bytes": _byte_counts,
        "content_type": _content_types,
        "source": st.sampled_from(["device", "cloud", "api"]),
    },
    "download": {"bytes": _byte_counts, "content_type": _content_types},
    "payment": {
        "amount": st.from_regex(r"-?[0-9]{1,15}(\.[0-9]{1,6})?", fullmatch=True),
        "currency": st.from_regex(r"[A-Z]{3}", fullmatch=True),
        "provider": texts(min_size=1, max_size=64),
        "provider_reference": texts(min_size=1, max_size=128),
    },
    "account": {"action": st.sampled_from(["registered", "disabled", "terminated"])},
    "consent": {"choice": st.sampled_from(["opt_out", "opt_in"])},
    "custom": {
        "name": texts(min_size=1, max_size=128),
        "properties": st.dictionaries(
            st.from_regex(r"[A-Za-z0-9_.:-][A-Za-z0-9_ .:-]{0,63}", fullmatch=True),
            st.one_of(
                st.booleans(),
                st.integers(min_value=-(1 << 53), max_value=1 << 53),
                st.floats(min_value=-1e15, max_value=1e15, allow_nan=False),
                texts(max_size=1024),
            ),
            max_size=8,
        ),
    },
}
# Fields the struct requires (no default); the others may be left to their defaults.
_REQUIRED: dict[str, frozenset[str]] = {
    "request": frozenset({"path"}),
    "page_view": frozenset({"path"}),
    "logout": frozenset({"session_duration_s"}),
    "upload": frozenset({"bytes"}),
    "download": frozenset({"bytes"}),
    "payment": frozenset({"amount", "currency", "provider", "provider_reference"}),
    "account": frozenset({"action"}),
    "consent": frozenset({"choice"}),
    "custom": frozenset({"name"}),
}
_CLASSES: dict[str, type[Any]] = {
    "request": Request,
    "page_view": PageView,
    "login": Login,
    "logout": Logout,
    "upload": Upload,
    "download": Download,
    "payment": Payment,
    "account": AccountLifecycle,
    "consent": ConsentChange,
    "custom": Custom,
}
assert set(_CLASSES) == set(EVENT_TYPES) == set(_TYPE_FIELDS), "a type has no strategy"


def events_of(type_name: str) -> st.SearchStrategy[Event]:
    """Valid events whose ``type`` is ``type_name`` (a key of schemas.events.EVENT_TYPES)."""
    if type_name not in _CLASSES:
        raise ValueError(f"unknown event type {type_name!r}; known: {sorted(_CLASSES)}")
    cls = _CLASSES[type_name]
    fields = _TYPE_FIELDS[type_name]
    required = _REQUIRED.get(type_name, frozenset())
    specific = st.fixed_dictionaries(
        {k: v for k, v in fields.items() if k in required},
        optional={k: v for k, v in fields.items() if k not in required},
    )
    return st.builds(lambda env, own: cls(**env, **own), _envelope(), specific)


def events() -> st.SearchStrategy[Event]:
    """Valid events of every type."""
    return st.one_of([events_of(name) for name in sorted(_CLASSES)])
