"""The retention policy as data: classes, periods, event type mapping, storage regions.

The rules live in ``policy.toml`` beside this module (or the file ``SIEVE_POLICY_FILE``
names); this module only reads and checks them and answers questions about them. Nothing
here reads the clock: expiries are computed from instants the caller passes.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from schemas.events import EVENT_TYPES
from streams.errors import ConfigurationError
from streams.privacy.custom_events import POLICY_KEY, CustomEvents, parse_custom_events

UNKNOWN_COUNTRY: Final = "ZZ"
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # class and region names become folder names


@dataclass(frozen=True, slots=True)
class RetentionClass:
    """One kind of identifiable record and how long it is kept."""

    name: str
    description: str
    # Days after the event, or after the account ends when ``account_bound``.
    days: int
    # "While the account lives, then ``days``": no fixed expiry at collection time.
    account_bound: bool
    # Kept even when consent stopped identifiable collection (legal duty, proof of a choice).
    keep_despite_opt_out: bool


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """The loaded policy. Immutable; every lookup is total over the contract's event types."""

    version: str
    classes: Mapping[str, RetentionClass]
    # Event type (schemas.events tag) -> class name.
    event_classes: Mapping[str, str]
    # The class IP addresses and user agents are always stored in.
    traffic_class: str
    # Country (ISO2) -> storage region; anything else is ``default_region``.
    regions: Mapping[str, str]
    default_region: str
    # The custom events the policy declares: what each property may become.
    custom_events: CustomEvents = field(default_factory=CustomEvents)

    def class_of(self, event_type: str) -> RetentionClass:
        """The retention class of an event type (KeyError on a type outside the contract)."""
        return self.classes[self.event_classes[event_type]]

    def region_of(self, country: str | None) -> str:
        """The storage region of a country code; unknown, ``ZZ`` or None -> default region."""
        if country is None:
            return self.default_region
        return self.regions.get(country, self.default_region)

    def expires_at(self, retention_class: str, occurred_at: datetime) -> datetime | None:
        """When a record of the class collected for an event at ``occurred_at`` expires.

        None for account-bound classes: they expire ``days`` after the account ends, which
        is unknown at collection time (see :meth:`account_bound_expiry`).
        """
        _require_aware(occurred_at, "occurred_at")
        cls = self.classes[retention_class]
        if cls.account_bound:
            return None
        return occurred_at + timedelta(days=cls.days)

    def account_bound_expiry(self, retention_class: str, account_ended_at: datetime) -> datetime:
        """When an account-bound record expires, given when its account ended."""
        _require_aware(account_ended_at, "account_ended_at")
        cls = self.classes[retention_class]
        if not cls.account_bound:
            raise ValueError(
                f"class {retention_class!r} is not account-bound; its records carry expires_at"
            )
        return account_ended_at + timedelta(days=cls.days)


def load_policy(path: Path | None = None) -> RetentionPolicy:
    """Read and check a policy file; None reads the packaged ``policy.toml``."""
    text, source = policy_text(path)
    return parse_policy(text, source=source)


def policy_text(path: Path | None) -> tuple[str, str]:
    """The text of a policy file and how errors name it; None: the packaged one."""
    if path is None:
        source = "streams/privacy/policy.toml (packaged)"
        return resources.files("streams.privacy").joinpath("policy.toml").read_text("utf-8"), source
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"policy file {path} cannot be read: {exc}") from None


def parse_policy(text: str, *, source: str = "<policy>") -> RetentionPolicy:
    """Parse policy TOML; any problem is a ConfigurationError naming ``source`` and the key."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"policy file {source} is not valid TOML: {exc}") from None
    return _Reader(source).policy(document)


class _Reader:
    """Checks one policy document; every error message names the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ConfigurationError:
        return ConfigurationError(f"policy file {self.source}: {key} {problem}")

    def policy(self, document: dict[str, Any]) -> RetentionPolicy:
        known = {
            "version",
            "traffic_class",
            "default_region",
            "classes",
            "event_types",
            "regions",
            POLICY_KEY,
        }
        for key in document:
            if key not in known:
                raise self.fail(key, f"is not a policy key (expected one of {sorted(known)})")
        version = self.string(document, "version", "version")
        classes = self.classes(self.table(document, "classes", "classes"))
        traffic_class = self.string(document, "traffic_class", "traffic_class")
        if traffic_class not in classes:
            raise self.fail("traffic_class", f"names unknown class {traffic_class!r}")
        if classes[traffic_class].account_bound:
            raise self.fail("traffic_class", "must name a class with a fixed period")
        event_types = self.table(document, "event_types", "event_types")
        event_classes = self.event_classes(event_types, classes)
        default_region = self.name(document, "default_region", "default_region")
        regions = self.regions(self.table(document, "regions", "regions"))
        custom_events = parse_custom_events(
            document.get(POLICY_KEY, {}), source=self.source, classes=frozenset(classes)
        )
        return RetentionPolicy(
            version=version,
            classes=MappingProxyType(classes),
            event_classes=MappingProxyType(event_classes),
            traffic_class=traffic_class,
            regions=MappingProxyType(regions),
            default_region=default_region,
            custom_events=custom_events,
        )

    def classes(self, table: dict[str, Any]) -> dict[str, RetentionClass]:
        if not table:
            raise self.fail("classes", "must define at least one class")
        classes = {}
        for name, spec in table.items():
            key = f"classes.{name}"
            if not _NAME.match(name):
                raise self.fail(key, "must be a lower-case name (a-z, 0-9, _)")
            if not isinstance(spec, dict):
                raise self.fail(key, "must be a table")
            unknown = set(spec) - {"description", "days", "account_bound", "keep_despite_opt_out"}
            if unknown:
                raise self.fail(f"{key}.{sorted(unknown)[0]}", "is not a class setting")
            days = spec.get("days")
            # bool is an int in Python: `days = true` must not mean one day.
            if not isinstance(days, int) or isinstance(days, bool) or days <= 0:
                raise self.fail(f"{key}.days", f"must be a positive integer, got {days!r}")
            classes[name] = RetentionClass(
                name=name,
                description=self.text(spec, "description", f"{key}.description"),
                days=days,
                account_bound=self.flag(spec, "account_bound", key),
                keep_despite_opt_out=self.flag(spec, "keep_despite_opt_out", key),
            )
        return classes

    def event_classes(
        self, table: dict[str, Any], classes: Mapping[str, RetentionClass]
    ) -> dict[str, str]:
        for event_type, class_name in table.items():
            key = f"event_types.{event_type}"
            if event_type not in EVENT_TYPES:
                raise self.fail(key, f"is not an event type (expected {sorted(EVENT_TYPES)})")
            if class_name not in classes:
                raise self.fail(key, f"names unknown class {class_name!r}")
        missing = sorted(set(EVENT_TYPES) - set(table))
        if missing:
            raise self.fail("event_types", f"has no class for event types {missing}")
        return {event_type: str(class_name) for event_type, class_name in table.items()}

    def regions(self, table: dict[str, Any]) -> dict[str, str]:
        regions: dict[str, str] = {}
        for region, countries in table.items():
            key = f"regions.{region}"
            if not _NAME.match(region):
                raise self.fail(key, "must be a lower-case name (a-z, 0-9, _)")
            if not isinstance(countries, list):
                raise self.fail(key, "must be a list of ISO 3166-1 alpha-2 codes")
            for country in countries:
                if not isinstance(country, str) or not _COUNTRY.match(country):
                    raise self.fail(key, f"holds {country!r}, not an upper-case ISO2 code")
                if country == UNKNOWN_COUNTRY:
                    raise self.fail(key, "must not list ZZ (unknown goes to default_region)")
                if country in regions:
                    raise self.fail(key, f"lists {country}, already in region {regions[country]!r}")
                regions[country] = region
        return regions

    def table(self, document: dict[str, Any], name: str, key: str) -> dict[str, Any]:
        value = document.get(name)
        if not isinstance(value, dict):
            raise self.fail(key, "is missing or not a table")
        return value

    def string(self, document: dict[str, Any], name: str, key: str) -> str:
        value = document.get(name)
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def text(self, document: dict[str, Any], name: str, key: str) -> str:
        value = document.get(name, "")
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        return value

    def name(self, document: dict[str, Any], name: str, key: str) -> str:
        value = self.string(document, name, key)
        if not _NAME.match(value):
            raise self.fail(key, "must be a lower-case name (a-z, 0-9, _)")
        return value

    def flag(self, spec: dict[str, Any], name: str, key: str) -> bool:
        value = spec.get(name, False)
        if not isinstance(value, bool):
            raise self.fail(f"{key}.{name}", f"must be true or false, got {value!r}")
        return value


def _require_aware(instant: datetime, name: str) -> None:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {instant!r}")
