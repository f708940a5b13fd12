"""The event contract as typed records (schema version 1).

One JSON object per event, flat: the envelope fields every event has, then the fields of
its ``type``. These structs are the single source of the contract: the JSON Schema files in
``schemas/json/v1/`` are generated from them (``python -m schemas.jsonschema``) and a test
fails when the committed files drift.

Unknown fields are errors (``forbid_unknown_fields``): that is what keeps card numbers,
e-mail addresses and other data the policy never promised to collect out of the pipeline.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

SCHEMA_VERSION: Final = 1
SUPPORTED_SCHEMA_VERSIONS: Final = frozenset({1})

MAX_EVENT_BYTES: Final = 64 * 1024
MAX_USER_AGENT_BYTES: Final = 2 * 1024
# The deepest an event's JSON may nest (the event object is level 1, ``geo`` level 2). A
# parser recurses once per level, and ~1,000 levels under 64 KB crashed the worker
# (issue 14); 32 leaves room for nested records to come. schemas.bounds enforces it.
MAX_NESTING_DEPTH: Final = 32

# How far ``occurred_at`` may lie from the event's arrival (schemas.bounds.TimeBounds; the
# settings SIEVE_EVENT_MAX_AHEAD, SIEVE_EVENT_MAX_BEHIND and SIEVE_BACKFILL_MAX_BEHIND
# override them). Ahead: a day covers every time zone and any sane clock skew, while an
# event claiming next year would switch deduplication off for its partition. Behind: 400
# days takes a phone that was offline for months and a generator run over last month, and
# more than a year of lateness is a broken clock. A backfill (a record carrying
# BACKFILL_HEADER, which `sieve replay` sets) may be 50 years old: any log since the web
# began.
DEFAULT_EVENT_MAX_AHEAD: Final = timedelta(days=1)
DEFAULT_EVENT_MAX_BEHIND: Final = timedelta(days=400)
DEFAULT_BACKFILL_MAX_BEHIND: Final = timedelta(days=18_262)
# The Kafka record header (value b"1") that marks a record as a backfill.
BACKFILL_HEADER: Final = "sieve.backfill"


def python_pattern(ecma: str) -> str:
    """The Python regex meaning what the JSON Schema (ECMA-262) pattern ``ecma`` means.

    ECMA-262's "$" matches only at the end of the text; Python's also matches before a
    final newline, so "acct-1\\n" passed ``^[\\x21-\\x7e]+$`` in msgspec and in the
    jsonschema package (which uses ``re.search``). Python gets the pattern with a final
    ``\\Z``; the schema files keep the portable "$" (``schemas.jsonschema`` turns it back).
    """
    if ecma.endswith("$") and not ecma.endswith("\\$"):
        return ecma[:-1] + "\\Z"
    return ecma


def _matching(ecma: str, **constraints: Any) -> Meta:
    """A string pattern (ECMA-262, as in the JSON Schema files) that msgspec checks."""
    return Meta(pattern=python_pattern(ecma), **constraints)


# Which characters text may hold, per kind of field (checked after msgspec, see
# schemas.bounds; the JSON Schema files carry the same patterns):
# - identifiers, codes, methods, content types: printable ASCII by their own patterns;
# - URLs, place names, payment provider names and references: no C0 control (U+0000 to
#   U+001F), no DEL and no C1 control (U+0080 to U+009F). None of them can come from a URL,
#   an IRI (RFC 3987 excludes C1 too) or a name a person typed; they can come from a broken
#   encoder or from someone injecting line breaks into logs and reports.
# - the user agent: an HTTP field value (RFC 9110, 5.5), which may hold a tab and
#   obs-text (bytes 0x80-0xFF, read as U+0080-U+00FF) but no other control and no DEL.
TEXT_PATTERN: Final = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"
HEADER_TEXT_PATTERN: Final = "^[^\\x00-\\x08\\x0a-\\x1f\\x7f]*$"
_TEXT: Final = {"pattern": TEXT_PATTERN}

Identifier = Annotated[str, _matching("^[\\x21-\\x7e]+$", min_length=1, max_length=128)]
AwareDatetime = Annotated[datetime, Meta(tz=True)]
# IP syntax is checked after decoding (``schemas.validate``): a regex for IPv6 would be
# unreadable, and the standard library's parser is the reference.
IpAddress = Annotated[
    str,
    Meta(
        max_length=45,
        extra_json_schema={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
    ),
]
UserAgent = Annotated[
    str, Meta(max_length=MAX_USER_AGENT_BYTES, extra_json_schema={"pattern": HEADER_TEXT_PATTERN})
]
UrlPath = Annotated[str, Meta(min_length=1, max_length=2048, extra_json_schema=_TEXT)]
Referrer = Annotated[str, Meta(max_length=2048, extra_json_schema=_TEXT)]
# ASCII classes, not ``\w``: Python's ``\w`` matches any Unicode letter while ECMA-262 (the
# regex dialect of JSON Schema) matches ASCII only, so producers in other languages would
# disagree with Sieve about the same content type.
ContentType = Annotated[str, _matching("^[A-Za-z0-9_.+-]+/[A-Za-z0-9_.+-]+$", max_length=255)]
ByteCount = Annotated[int, Meta(ge=0, le=1 << 50)]
CountryCode = Annotated[str, _matching("^[A-Z]{2}$")]
CurrencyCode = Annotated[str, _matching("^[A-Z]{3}$")]
# Money is a decimal string, never a float: invoices must be exact to the cent.
DecimalAmount = Annotated[str, _matching("^-?[0-9]{1,15}(\\.[0-9]{1,6})?$")]
HttpMethod = Annotated[str, _matching("^[A-Z]{3,10}$")]


# gc=False: events hold only scalars (and Geo), so they can never be part of a reference
# cycle; untracked, the ~10k events of every batch cost the cyclic collector nothing.
class Geo(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True, gc=False):
    """Client-supplied geolocation: any of country, region, city or coordinates."""

    country: CountryCode | None = None
    region: Annotated[str, Meta(max_length=64, extra_json_schema=_TEXT)] | None = None
    city: Annotated[str, Meta(max_length=128, extra_json_schema=_TEXT)] | None = None
    lat: Annotated[float, Meta(ge=-90, le=90)] | None = None
    lon: Annotated[float, Meta(ge=-180, le=180)] | None = None


class EventBase(
    msgspec.Struct,
    tag_field="type",
    forbid_unknown_fields=True,
    omit_defaults=True,
    kw_only=True,
    frozen=True,
    gc=False,
):
    """The envelope every event carries."""

    schema_version: Literal[1]
    event_id: Identifier
    occurred_at: AwareDatetime
    account_id: Identifier
    user_id: Identifier | None = None
    session_id: Identifier | None = None
    ip: IpAddress | None = None
    user_agent: UserAgent | None = None
    geo: Geo | None = None
    dnt: bool = False
    gpc: bool = False


# Subclasses repeat frozen=True: msgspec inherits it, but mypy (dataclass_transform) does not
# and reports "non-frozen dataclass cannot inherit from a frozen dataclass" otherwise.
class Request(EventBase, tag="request", kw_only=True, frozen=True):
    """An HTTP request to the service (API call or asset)."""

    method: HttpMethod = "GET"
    path: UrlPath
    status: Annotated[int, Meta(ge=100, le=599)] = 200
    response_bytes: ByteCount = 0
    referrer: Referrer | None = None


class PageView(EventBase, tag="page_view", kw_only=True, frozen=True):
    """A web page (or a specific piece of content on it) viewed in the console."""

    path: UrlPath
    referrer: Referrer | None = None


class Login(EventBase, tag="login", kw_only=True, frozen=True):
    """A user logged in; starts a session."""

    method: Literal["password", "sso", "api_key"] = "password"


class Logout(EventBase, tag="logout", kw_only=True, frozen=True):
    """A user logged out; carries how long the session lasted."""

    session_duration_s: Annotated[float, Meta(ge=0, le=31 * 24 * 3600)]


class Upload(EventBase, tag="upload", kw_only=True, frozen=True):
    """Content uploaded to the service."""

    bytes: ByteCount
    content_type: ContentType = "application/octet-stream"
    source: Literal["device", "cloud", "api"] = "device"


class Download(EventBase, tag="download", kw_only=True, frozen=True):
    """Content downloaded from (delivered by) the service."""

    bytes: ByteCount
    content_type: ContentType = "application/octet-stream"


class Payment(EventBase, tag="payment", kw_only=True, frozen=True):
    """A payment transaction as reported by the payment provider. Never card data."""

    amount: DecimalAmount
    currency: CurrencyCode
    provider: Annotated[str, Meta(min_length=1, max_length=64, extra_json_schema=_TEXT)]
    provider_reference: Annotated[str, Meta(min_length=1, max_length=128, extra_json_schema=_TEXT)]


class AccountLifecycle(EventBase, tag="account", kw_only=True, frozen=True):
    """Registration and lifecycle of an account (no ``user_id``) or of one of its users."""

    action: Literal["registered", "disabled", "terminated"]


class ConsentChange(EventBase, tag="consent", kw_only=True, frozen=True):
    """A person's choice about identifiable collection (opt-out stops it, opt-in resumes)."""

    choice: Literal["opt_out", "opt_in"]


# A custom event's properties: names a policy file can declare (streams/privacy/policy.toml,
# [custom_events]) and scalar values. No nesting: a property is a dimension, a metric or an
# identifiable value, each one column wide; a nested object would be an undeclared bag.
MAX_CUSTOM_PROPERTIES: Final = 64
CustomEventName = Annotated[str, Meta(min_length=1, max_length=128, extra_json_schema=_TEXT)]
PropertyName = Annotated[str, _matching("^[A-Za-z0-9_.:-][A-Za-z0-9_ .:-]*$", max_length=64)]
PropertyValue = (
    bool
    | Annotated[int, Meta(ge=-(1 << 53), le=1 << 53)]
    | Annotated[float, Meta(ge=-1e15, le=1e15)]
    | Annotated[str, Meta(max_length=1024, extra_json_schema=_TEXT)]
)


class Custom(EventBase, tag="custom", kw_only=True, frozen=True):
    """An event of the product's own (a Segment ``track`` call Sieve has no type for),
    carrying only the properties the policy declares for its ``name``; the collector drops
    and counts every other one before the event is sent."""

    name: CustomEventName
    properties: Annotated[
        dict[PropertyName, PropertyValue], Meta(max_length=MAX_CUSTOM_PROPERTIES)
    ] = msgspec.field(default_factory=dict)


Event = (
    Request
    | PageView
    | Login
    | Logout
    | Upload
    | Download
    | Payment
    | AccountLifecycle
    | ConsentChange
    | Custom
)

EVENT_TYPES: Final[dict[str, type[EventBase]]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        Request,
        PageView,
        Login,
        Logout,
        Upload,
        Download,
        Payment,
        AccountLifecycle,
        ConsentChange,
        Custom,
    )
}

ENVELOPE_FIELDS: Final = frozenset(EventBase.__struct_fields__)


def type_specific_fields(event_type: str) -> tuple[str, ...]:
    """The fields of ``event_type`` beyond the envelope, in declaration order."""
    cls = EVENT_TYPES[event_type]
    return tuple(f for f in cls.__struct_fields__ if f not in ENVELOPE_FIELDS)


def encode(event: Event) -> bytes:
    """The canonical JSON bytes of an event (what producers send)."""
    return msgspec.json.encode(event)
