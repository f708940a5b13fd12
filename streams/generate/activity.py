"""The events of one unit of activity: a console session, a burst of API calls, a payment.

Each function returns ``(occurred_at µs, event)`` pairs in time order, all inside the
generation period. Times are integers (microseconds since the epoch) until the event is
built, so a logout's ``session_duration_s`` is exactly the difference of the two stamps.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, Literal, TypeVar, cast

from msgspec.structs import replace

from schemas.events import (
    AccountLifecycle,
    ConsentChange,
    Download,
    Event,
    EventBase,
    Geo,
    Login,
    Logout,
    PageView,
    Payment,
    Request,
    Upload,
)
from streams.generate import catalog
from streams.generate.population import Account, User, pool_of

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = 1_000_000

TimedEvent = tuple[int, Event]
T = TypeVar("T")
E = TypeVar("E", bound=EventBase)

_PAGE_PATHS, _PAGE_WEIGHTS = zip(*catalog.CONSOLE_PAGES, strict=True)
_PAGE_CUM: Final = tuple(itertools.accumulate(_PAGE_WEIGHTS))
_API_CALLS: Final = catalog.API_CALLS
_API_CUM: Final = tuple(itertools.accumulate(w for _, _, w in _API_CALLS))
_STATUS_CODES, _STATUS_WEIGHTS = zip(*catalog.STATUSES, strict=True)
_STATUS_CUM: Final = tuple(itertools.accumulate(_STATUS_WEIGHTS))
_UPLOAD_CUM: Final = tuple(itertools.accumulate(m.weight for m in catalog.UPLOAD_TYPES))
_DOWNLOAD_CUM: Final = tuple(itertools.accumulate(w for _, w, _ in catalog.DOWNLOAD_TYPES))
_EXTERNAL_REFERRERS: Final = (
    None, None, None, "https://www.google.com/", "https://github.com/", "https://www.bing.com/",
)  # fmt: skip

# What a session is made of, by share of its body (between login and logout).
_BODY_KINDS: Final = ("page_view", "request", "upload", "download", "consent")
_BODY_CUM: Final = (0.34, 0.86, 0.93, 0.993, 1.0)
LOGOUT_SHARE: Final = 0.85
GEO_SHARE: Final = 0.1


def to_datetime(t_us: int, tz: timezone = UTC) -> datetime:
    # The epoch in ``tz`` plus the offset: the same instant and fields as converting the
    # UTC time (offsets are fixed), without an astimezone per event.
    return (_EPOCH if tz is UTC else _epoch_in(tz)) + timedelta(0, 0, t_us)


@functools.cache
def _epoch_in(tz: timezone) -> datetime:
    return _EPOCH.astimezone(tz)


def to_us(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _SECOND + delta.microseconds


_UUID_VERSION_MASK: Final = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_V4_BITS: Final = (0x4000 << 64) | (0x8000 << 48)


def new_event_id(rng: random.Random) -> str:
    """A version-4 UUID from the seeded generator: random-looking, yet reproducible.

    The same string as ``str(uuid.UUID(int=rng.getrandbits(128), version=4))``, formatted
    by hand because the uuid module is a fifth of the generator's time.
    """
    h = ((rng.getrandbits(128) & _UUID_VERSION_MASK) | _UUID_V4_BITS).to_bytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# One event of each type a unit builds, each field a placeholder: every event is a copy of
# one of these with the unit's envelope and all its own fields replaced (see _Templates).
_PROTOTYPES: Final[dict[type[EventBase], EventBase]] = {
    cls: cls(schema_version=1, event_id="-", occurred_at=_EPOCH, account_id="-", **required)
    for cls, required in (
        (Request, {"path": "/"}),
        (PageView, {"path": "/"}),
        (Login, {}),
        (Logout, {"session_duration_s": 0.0}),
        (Upload, {"bytes": 0}),
        (Download, {"bytes": 0}),
        (ConsentChange, {"choice": "opt_out"}),
    )
}


class _Templates:
    """A unit's events, built as copies of per-type templates that carry its envelope.

    msgspec's constructor matches every keyword against the struct's fields, so an event
    built from its fourteen keywords costs several times a ``replace`` of the few that
    change (the traffic model's largest single cost before). Each call site replaces every
    field of its type beyond the envelope, so no placeholder of a prototype survives.
    """

    __slots__ = ("_by_type", "_envelope")

    def __init__(self, envelope: dict[str, Any]) -> None:
        self._envelope = envelope
        self._by_type: dict[type[EventBase], EventBase] = {}

    def of(self, cls: type[E]) -> E:
        template = self._by_type.get(cls)
        if template is None:
            template = self._by_type[cls] = replace(_PROTOTYPES[cls], **self._envelope)
        return cast(E, template)


def weighted(rng: random.Random, items: Sequence[T], cum_weights: Sequence[float]) -> T:
    """``rng.choices(items, cum_weights=cum_weights)[0]`` (same draw) without its overhead."""
    return items[bisect.bisect(cum_weights, rng.random() * cum_weights[-1], 0, len(items) - 1)]


def _fill(rng: random.Random, template: str) -> str:
    return template.replace("{id}", catalog.short_id(rng)) if "{id}" in template else template


def _api_call(rng: random.Random) -> tuple[str, str, int, int]:
    method, template, _ = weighted(rng, _API_CALLS, _API_CUM)
    status = weighted(rng, _STATUS_CODES, _STATUS_CUM)
    # Bodies: JSON listings of a few KB, empty on 204/304, small error documents.
    if status in (204, 304):
        size = 0
    elif status >= 400:
        size = 60 + rng.randrange(400)
    else:
        size = int(rng.lognormvariate(7.5, 1.2))
    return method, _fill(rng, template), status, size


def _geo(rng: random.Random, user: User) -> Geo:
    city = user.country.cities[rng.randrange(len(user.country.cities))]
    shape = rng.random()
    if shape < 0.4:
        return Geo(country=user.country.code)
    if shape < 0.8:
        return Geo(country=user.country.code, region=city.region, city=city.name)
    # Browser geolocation: coordinates near the city, rounded as browsers often report them.
    return Geo(
        lat=round(city.lat + rng.uniform(-0.05, 0.05), 4),
        lon=round(city.lon + rng.uniform(-0.05, 0.05), 4),
    )


def _session_offsets(rng: random.Random, body: int) -> list[tuple[int, str]]:
    """Offsets (µs after login) and kinds of the body events."""
    out = []
    t = 0
    draw, uniform, lognormal = rng.random, rng.uniform, rng.lognormvariate
    for _ in range(body):
        kind = _BODY_KINDS[bisect.bisect_right(_BODY_CUM, draw())]
        if kind == "request":
            # Console XHRs follow the page that issued them within a second.
            t += int(uniform(0.02, 0.9) * _SECOND)
        elif draw() < 0.04:
            t += int(uniform(300, 1800) * _SECOND)  # the user left the tab open
        else:
            t += int(lognormal(2.8, 1.0) * _SECOND)
        out.append((t, kind))
    return out


def session(
    rng: random.Random,
    account: Account,
    user: User,
    start_us: int,
    end_us: int,
    body: int,
    with_logout: bool,
) -> list[TimedEvent]:
    """A console session: login, ``body`` events, and a logout when ``with_logout``.

    If the session would run past ``end_us`` its timeline is compressed to fit, so every
    event stays inside the period and the logout's duration stays exact.
    """
    pool = pool_of(user.country)
    ip = user.home_ip if rng.random() < 0.7 else pool.pick(rng, ipv6=user.prefers_ipv6)
    envelope: dict[str, Any] = {
        "schema_version": 1,
        "account_id": account.account_id,
        "user_id": user.user_id,
        "session_id": f"ses_{rng.getrandbits(64):016x}",
        "ip": ip,
        "user_agent": user.user_agents[rng.randrange(len(user.user_agents))],
        "geo": _geo(rng, user) if rng.random() < GEO_SHARE else None,
        "dnt": user.dnt,
        "gpc": user.gpc,
    }
    tz = user.country.tz if user.local_offset else UTC
    offsets = _session_offsets(rng, body)
    logout_at = (offsets[-1][0] if offsets else 0) + int(rng.uniform(2, 90) * _SECOND)
    span = logout_at if with_logout else (offsets[-1][0] if offsets else 0)
    room = end_us - 1 - start_us
    if span > room:
        scale = room / span
        offsets = [(int(o * scale), k) for o, k in offsets]
        logout_at = int(logout_at * scale)

    login_method: Literal["password", "sso", "api_key"] = (
        "password" if rng.random() < 0.7 else ("sso" if rng.random() < 0.85 else "api_key")
    )
    templates = _Templates(envelope)
    login = templates.of(Login)
    events: list[TimedEvent] = [
        (
            start_us,
            replace(
                login,
                event_id=new_event_id(rng),
                occurred_at=to_datetime(start_us, tz),
                method=login_method,
            ),
        )
    ]
    page = "/console"
    epoch = to_datetime(0, tz)
    for offset, kind in offsets:
        t = start_us + offset
        at = epoch + timedelta(0, 0, t)  # to_datetime(t, tz), inlined: once per event
        eid = new_event_id(rng)
        ev: Event
        if kind == "page_view":
            previous = page
            page = _fill(rng, weighted(rng, _PAGE_PATHS, _PAGE_CUM))
            referrer = (
                catalog.CONSOLE_ORIGIN + previous
                if len(events) > 1
                else rng.choice(_EXTERNAL_REFERRERS)
            )
            ev = replace(
                templates.of(PageView), event_id=eid, occurred_at=at, path=page, referrer=referrer
            )
        elif kind == "request":
            method, path, status, size = _api_call(rng)
            ev = replace(
                templates.of(Request),
                event_id=eid,
                occurred_at=at,
                method=method,
                path=path,
                status=status,
                response_bytes=size,
                referrer=catalog.CONSOLE_ORIGIN + page,
            )
        elif kind == "upload":
            media = weighted(rng, catalog.UPLOAD_TYPES, _UPLOAD_CUM)
            r = rng.random()
            ev = replace(
                templates.of(Upload),
                event_id=eid,
                occurred_at=at,
                bytes=min(int(rng.lognormvariate(media.mu, media.sigma)), 1 << 40),
                content_type=media.content_type,
                source="device" if r < 0.7 else ("cloud" if r < 0.9 else "api"),
            )
        elif kind == "download":
            content_type, _, minimum = weighted(rng, catalog.DOWNLOAD_TYPES, _DOWNLOAD_CUM)
            size = min(int(minimum * rng.paretovariate(catalog.DOWNLOAD_PARETO_ALPHA)), 1 << 40)
            ev = replace(
                templates.of(Download),
                event_id=eid,
                occurred_at=at,
                bytes=size,
                content_type=content_type,
            )
        else:
            # Opt-out first; a later change of mind opts back in.
            choice: Literal["opt_out", "opt_in"] = "opt_in" if user.opted_out else "opt_out"
            user.opted_out = not user.opted_out
            ev = replace(templates.of(ConsentChange), event_id=eid, occurred_at=at, choice=choice)
        events.append((t, ev))
    if with_logout:
        t = start_us + logout_at
        duration = timedelta(microseconds=logout_at).total_seconds()
        events.append(
            (
                t,
                replace(
                    templates.of(Logout),
                    event_id=new_event_id(rng),
                    occurred_at=to_datetime(t, tz),
                    session_duration_s=duration,
                ),
            )
        )
    return events


def api_burst(
    rng: random.Random, account: Account, user_agent: str, start_us: int, end_us: int, n: int
) -> list[TimedEvent]:
    """``n`` server-to-server API calls with the account's key: no user, no session."""
    envelope: dict[str, Any] = {
        "schema_version": 1,
        "account_id": account.account_id,
        "ip": account.server_ip,
        "user_agent": user_agent,
    }
    template = _Templates(envelope).of(Request)
    events: list[TimedEvent] = []
    t = start_us
    for _ in range(n):
        method, path, status, size = _api_call(rng)
        events.append(
            (
                t,
                replace(
                    template,
                    event_id=new_event_id(rng),
                    occurred_at=to_datetime(t),
                    method=method,
                    path=path,
                    status=status,
                    response_bytes=size,
                    referrer=None,
                ),
            )
        )
        t = min(end_us - 1, t + int(rng.lognormvariate(-1.0, 1.2) * _SECOND))
    return events


def payment(rng: random.Random, account: Account, t_us: int) -> TimedEvent:
    """A charge (or, rarely, a refund) reported by the provider: no card data, no IP."""
    rate = catalog.CURRENCY_RATES.get(account.currency, 1.0)
    price = dict(catalog.PLAN_PRICES_USD)[account.plan]
    # Free plans pay usage overages only; paid plans sometimes add an overage line.
    usd = price + (rng.uniform(5, 60) if price == 0 or rng.random() < 0.2 else 0.0)
    amount = catalog.format_amount(usd * rate, account.currency)
    if rng.random() < 0.02:
        amount = "-" + amount
    provider = "stripe" if rng.random() < 0.7 else "paypal"
    return t_us, Payment(
        schema_version=1,
        event_id=new_event_id(rng),
        occurred_at=to_datetime(t_us),
        account_id=account.account_id,
        amount=amount,
        currency=account.currency,
        provider=provider,
        provider_reference=catalog.provider_reference(rng, provider),
    )


def lifecycle(
    rng: random.Random,
    account: Account,
    t_us: int,
    action: Literal["registered", "disabled", "terminated"],
) -> TimedEvent:
    """An account's registration (from its owner's browser) or its end (by the system)."""
    owner = account.users[0]
    by_owner = action == "registered"
    return t_us, AccountLifecycle(
        schema_version=1,
        event_id=new_event_id(rng),
        occurred_at=to_datetime(t_us),
        account_id=account.account_id,
        ip=owner.home_ip if by_owner else None,
        user_agent=owner.user_agents[0] if by_owner else None,
        action=action,
    )


def diurnal_weight(t_us: int, utc_offset_minutes: int) -> float:
    """Relative activity at local time of ``t_us``: a working-day curve, quieter weekends."""
    local_s = t_us // _SECOND + utc_offset_minutes * 60
    hour = (local_s // 3600) % 24
    # 1970-01-01 was a Thursday: day 0 -> Thursday, days 2 and 3 -> Saturday and Sunday.
    weekend = (local_s // 86_400) % 7 in (2, 3)
    level = 0.15 + 0.85 * math.exp(-(((hour - 14) / 4.5) ** 2))
    return level * (0.55 if weekend else 1.0)
