"""Custom events as the policy declares them: which properties each may carry, and as what.

A ``custom`` event (``schemas.events.Custom``) is named by the product, not by Sieve, so its
properties are whatever the product's code sends. The policy file's ``[custom_events]``
table (``streams/privacy/policy.toml``) lists, per event name, each property the event may
carry and what it is:

* ``dimension``: a value analytics may group by (kept in the facts);
* ``metric``: a number meters may count or sum (kept in the facts);
* ``identifiable``: personal data, kept only in the encrypted identifiable record, with the
  event's retention class;
* ``dropped``: known and deliberately never kept.

Any property not declared is dropped too, and counted: it never reaches Kafka, so it can
never reach an output. Pure: reads and checks the table, filters properties.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Final

from streams.errors import ConfigurationError

POLICY_KEY: Final = "custom_events"
_PROPERTY_NAME: Final = re.compile(r"^[A-Za-z0-9_.:-][A-Za-z0-9_ .:-]{0,63}\Z")
_EVENT_NAME: Final = re.compile(r"^[^\x00-\x1f\x7f-\x9f]{1,128}\Z")


class PropertyKind(StrEnum):
    DIMENSION = "dimension"
    METRIC = "metric"
    IDENTIFIABLE = "identifiable"
    DROPPED = "dropped"


KEPT: Final = frozenset({PropertyKind.DIMENSION, PropertyKind.METRIC, PropertyKind.IDENTIFIABLE})


@dataclass(frozen=True, slots=True)
class CustomEventDeclaration:
    """One custom event name: its properties' kinds and (optionally) its retention class."""

    name: str
    properties: Mapping[str, PropertyKind]
    retention_class: str | None = None


@dataclass(frozen=True, slots=True)
class FilteredProperties:
    """What :meth:`CustomEvents.filter` kept, and how many it dropped, by reason."""

    kept: dict[str, object]
    undeclared: int = 0
    declared_dropped: int = 0
    # Kept properties whose value does not fit their kind: (name, kind) pairs, no values.
    misfits: tuple[tuple[str, PropertyKind], ...] = ()


@dataclass(frozen=True, slots=True)
class CustomEvents:
    """Every declared custom event, by name. An undeclared name keeps no property."""

    declarations: Mapping[str, CustomEventDeclaration] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def declared(self, name: str) -> Mapping[str, PropertyKind]:
        declaration = self.declarations.get(name)
        return declaration.properties if declaration is not None else MappingProxyType({})

    def filter(self, name: str, properties: Mapping[str, object]) -> FilteredProperties:
        """The properties of a ``name`` event the policy lets through; the rest counted.

        A metric must be a number (not a boolean) and a dimension or identifiable value a
        scalar; a kept property holding something else is a misfit the caller reports.
        """
        kinds = self.declared(name)
        kept: dict[str, object] = {}
        undeclared = dropped = 0
        misfits: list[tuple[str, PropertyKind]] = []
        for key, value in properties.items():
            kind = kinds.get(key)
            if kind is None:
                undeclared += 1
            elif kind is PropertyKind.DROPPED:
                dropped += 1
            elif value is None:
                continue  # Segment SDKs send nulls for unset properties: nothing to keep
            elif not _fits(kind, value):
                misfits.append((key, kind))
            else:
                kept[key] = value
        return FilteredProperties(kept, undeclared, dropped, tuple(misfits))


def _fits(kind: PropertyKind, value: object) -> bool:
    if kind is PropertyKind.METRIC:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str | int | float | bool)


def load_custom_events(path: Path | None = None) -> CustomEvents:
    """The ``[custom_events]`` of a policy file; None reads the packaged ``policy.toml``."""
    from streams.privacy.retention import policy_text  # one reader of the file

    text, source = policy_text(path)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"policy file {source} is not valid TOML: {exc}") from None
    return parse_custom_events(document.get(POLICY_KEY, {}), source=source)


def parse_custom_events(
    table: object, *, source: str = "<policy>", classes: frozenset[str] | None = None
) -> CustomEvents:
    """Check the ``[custom_events]`` table; errors name the file and the key."""

    def fail(key: str, problem: str) -> ConfigurationError:
        return ConfigurationError(f"policy file {source}: {key} {problem}")

    if not isinstance(table, dict):
        raise fail(POLICY_KEY, "must be a table")
    declarations: dict[str, CustomEventDeclaration] = {}
    for name, spec in table.items():
        key = f"{POLICY_KEY}.{name!r}"
        if not _EVENT_NAME.match(name):
            raise fail(key, "must be 1 to 128 characters without control characters")
        if not isinstance(spec, dict):
            raise fail(key, "must be a table")
        unknown = set(spec) - {"properties", "retention_class", "description"}
        if unknown:
            raise fail(f"{key}.{sorted(unknown)[0]}", "is not a custom event setting")
        retention_class = spec.get("retention_class")
        if retention_class is not None and (
            not isinstance(retention_class, str)
            or (classes is not None and retention_class not in classes)
        ):
            raise fail(f"{key}.retention_class", f"names no class {retention_class!r}")
        properties = spec.get("properties", {})
        if not isinstance(properties, dict):
            raise fail(f"{key}.properties", "must be a table of property = kind")
        kinds: dict[str, PropertyKind] = {}
        for prop, kind in properties.items():
            if not _PROPERTY_NAME.match(prop):
                raise fail(
                    f"{key}.properties.{prop!r}", "is not a property name the contract allows"
                )
            try:
                kinds[prop] = PropertyKind(kind)
            except ValueError:
                allowed = ", ".join(k.value for k in PropertyKind)
                raise fail(f"{key}.properties.{prop!r}", f"must be one of {allowed}") from None
        declarations[name] = CustomEventDeclaration(name, MappingProxyType(kinds), retention_class)
    return CustomEvents(MappingProxyType(declarations))


@dataclass(frozen=True, slots=True)
class CustomParts:
    """Where the properties of one custom event go (the worker's split): the facts get the
    declared name, dimensions and metrics; the identifiable record the identifiable ones."""

    declared_name: str | None
    dimensions: list[tuple[str, str]]
    metrics: list[tuple[str, float]]
    identifiable: dict[str, object]
    retention_class: str | None
    # Properties kept nowhere: undeclared, declared dropped, or not of their declared kind
    # (possible only for events that did not come through the collector).
    dropped: int


def parts_of(custom: CustomEvents, name: str, properties: Mapping[str, object]) -> CustomParts:
    """Apply the declarations to one custom event's properties (again: the collector did,
    but a producer writing to Kafka directly did not)."""
    declaration = custom.declarations.get(name)
    filtered = custom.filter(name, properties)
    kinds = custom.declared(name)
    dimensions: list[tuple[str, str]] = []
    metrics: list[tuple[str, float]] = []
    identifiable: dict[str, object] = {}
    for key, value in filtered.kept.items():
        kind = kinds[key]
        if kind is PropertyKind.METRIC:
            metrics.append((key, float(value)))  # type: ignore[arg-type]  # _fits: a number
        elif kind is PropertyKind.DIMENSION:
            dimensions.append((key, _as_text(value)))
        else:
            identifiable[key] = value
    return CustomParts(
        declared_name=name if declaration is not None else None,
        dimensions=dimensions,
        metrics=metrics,
        identifiable=identifiable,
        retention_class=declaration.retention_class if declaration is not None else None,
        dropped=filtered.undeclared + filtered.declared_dropped + len(filtered.misfits),
    )


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else repr(value)
