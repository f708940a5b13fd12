"""Meters: what metering counts, declared in a TOML file (issue 13 item 2, issue 11 item 3).

A meter is declared once, with everything that is known about it: the events it counts
over, an aggregation over a property (a column of the facts), the dimensions its usage may
be broken down by, its type, and the unit invoices print. Metering, late corrections, the
billing catalog's views and pricing all work from these declarations, so a new meter needs
no code: a table in the meters file (``SIEVE_METERS_FILE``; the packaged
``aggregations/meters.toml`` reproduces Sieve's nine metrics) and, to invoice it, a line in
the price plan.

Aggregations (per account and UTC hour, and per account and UTC day):

- ``count``: events;
- ``sum`` / ``max``: of a numeric property. A float property is summed at ``decimals``
  places, each value rounded first (a float sum depends on the order DuckDB's threads add
  in, and a last-bit difference would publish a spurious correction), so sums are exact;
- ``unique_count``: distinct non-null values of a property (``subject_key``: active users).
  The daily value is a distinct count over the day, never a sum of hours.

A custom event the policy declares is named ``custom:<name>`` in ``event`` (``"custom"``
alone is every custom event), and its declared metric ``<p>`` is the property
``metrics.<p>`` (the facts' ``metrics`` map; null where an event does not carry it).

A meter is checked against the facts schema when it is loaded (:func:`parse_meters`): a
property or dimension that is not a column of the facts, or of the wrong type, is an error
naming the meter and the column. Identifiers (``event_key``, ``subject_key``, ...) can be
counted distinct but never grouped by: a breakdown by person would publish one person's
exact activity.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal, get_args

import pyarrow as pa

from aggregations.tomlfile import line_of, loads
from schemas.arrow import FACTS
from schemas.events import EVENT_TYPES
from streams.errors import ConfigurationError

Aggregation = Literal["count", "sum", "max", "unique_count"]
AGGREGATIONS: Final[tuple[Aggregation, ...]] = get_args(Aggregation)
DEFAULT_METERS: Final = "meters.toml"
ANY_EVENT: Final = "*"
# Places a decimal meter may keep: published values are DECIMAL(38, 6).
MAX_DECIMALS: Final = 6
# Columns that identify an event or a person, or are the window itself: never a breakdown.
NOT_DIMENSIONS: Final = frozenset(
    {"event_key", "subject_key", "key_id", "account_id", "occurred_hour"}
)
# Column names the billing views use for themselves: a meter cannot take them.
RESERVED: Final = frozenset(
    {"hour", "date", "grain", "account_id", "corrections", "updated_at", "publish_run",
     "watermark", "published_at", "meter", "dimension", "dimension_value", "value"}
)  # fmt: skip
_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_KEYS: Final = frozenset(
    {"description", "event", "aggregation", "property", "decimals", "group_by", "unit",
     "invoice_unit", "invoice_unit_size"}
)  # fmt: skip


class MetersError(ConfigurationError):
    """The meters file is malformed; ``path``, ``line`` and ``key`` say where."""

    def __init__(self, path: str, key: str, reason: str, line: int | None = None) -> None:
        self.path, self.key, self.reason, self.line = path, key, reason, line
        where = f"line {line}, " if line is not None else ""
        super().__init__(f"meters file {path}: {where}{key}: {reason}")


@dataclass(frozen=True)
class Meter:
    """One declared meter (see the module docstring)."""

    name: str
    events: tuple[str, ...]  # event types counted over; () means every event
    aggregation: Aggregation
    column: str | None  # the facts column its `property` names (None for count)
    decimals: int  # 0: integer values; else a decimal with this many places
    group_by: tuple[str, ...]  # facts columns the usage may be broken down by
    unit: str  # what one metered value is ("request", "byte")
    invoice_unit: str  # what invoices count and price ("1,000 requests", "GB")
    invoice_unit_size: Decimal  # metered values in one invoice unit
    description: str = ""
    # A sum or max of a fractional property: each value is rounded to ``decimals`` places
    # first, also at 0 places, so that the sum is exact whatever the order of the rows.
    fractional: bool = False

    @property
    def sql_type(self) -> str:
        """The meter's type in the billing views (and its declared type)."""
        return "BIGINT" if self.decimals == 0 else f"DECIMAL(18, {self.decimals})"

    @property
    def definition(self) -> str:
        """A digest of what the meter counts (not of its labels): a published meter whose
        definition changes is metered again over the whole history."""
        what = [list(self.events), self.aggregation, self.column, self.decimals]
        what.append(list(self.group_by))
        if self.fractional and self.decimals == 0:
            # Once summed as floats: such a meter's published values are metered again. No
            # other meter's digest changes (decimals > 0 has always meant fractional).
            what.append("rounded")
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]

    def value_sql(self) -> str:
        """The aggregate of one group of ``facts`` rows, as DECIMAL(38, 6)."""
        where = f" FILTER (WHERE {self.filter_sql()})" if self.events else ""
        if self.aggregation == "count":
            value = f"count(*){where}"
        elif self.aggregation == "unique_count":
            value = f"count(DISTINCT {self.column_sql()}){where}"
        else:
            value = f"coalesce({self.aggregation}({self.operand_sql()}){where}, 0)"
        return f"CAST({value} AS DECIMAL(38, {MAX_DECIMALS}))"

    def filter_sql(self) -> str:
        """SQL true for the facts rows the meter counts over ("TRUE": every event)."""
        return _event_filter(self.events) if self.events else "TRUE"

    def column_sql(self) -> str:
        """SQL reading the meter's property (what a sum, max or unique_count reads)."""
        return _column_sql(self.column)

    def operand_sql(self) -> str:
        """What a sum or max aggregates: the property, rounded to ``decimals`` first."""
        column = self.column_sql()
        if self.decimals == 0 and not self.fractional:
            return column  # an integer property: exact as it is
        return f"CAST({column} AS DECIMAL(18, {self.decimals}))"

    def to_record(self) -> dict[str, Any]:
        """The meter as plain data (the publish manifest keeps what it published)."""
        return {
            "name": self.name,
            "events": list(self.events),
            "aggregation": self.aggregation,
            "property": self.column,
            "decimals": self.decimals,
            "group_by": list(self.group_by),
            "unit": self.unit,
            "invoice_unit": self.invoice_unit,
            "invoice_unit_size": format(self.invoice_unit_size, "f"),
            "description": self.description,
            "fractional": self.fractional,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Meter:
        return cls(
            name=record["name"],
            events=tuple(record["events"]),
            aggregation=record["aggregation"],
            column=record["property"],
            decimals=int(record["decimals"]),
            group_by=tuple(record["group_by"]),
            unit=record["unit"],
            invoice_unit=record["invoice_unit"],
            invoice_unit_size=Decimal(record["invoice_unit_size"]),
            description=record.get("description", ""),
            # Older manifests: places after the point have always meant a fractional property.
            fractional=bool(record.get("fractional", int(record["decimals"]) > 0)),
        )


CUSTOM_PREFIX: Final = "custom:"
METRICS_PREFIX: Final = "metrics."


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _event_filter(events: tuple[str, ...]) -> str:
    types = [e for e in events if not e.startswith(CUSTOM_PREFIX)]
    names = [e.removeprefix(CUSTOM_PREFIX) for e in events if e.startswith(CUSTOM_PREFIX)]
    terms = [f"type IN ({', '.join(_literal(e) for e in types)})"] if types else []
    if names:
        listed = ", ".join(_literal(n) for n in names)
        terms.append(f"(type = 'custom' AND event_name IN ({listed}))")
    return " OR ".join(terms)


def _column_sql(column: str | None) -> str:
    if column is not None and column.startswith(METRICS_PREFIX):
        return f"metrics[{_literal(column.removeprefix(METRICS_PREFIX))}]"
    return f'"{column}"'


# --- loading -------------------------------------------------------------------------------


def _is_fractional(aggregation: str, field: pa.Field | None) -> bool:
    """A sum or max of a float or decimal property."""
    if aggregation not in ("sum", "max") or field is None:
        return False
    return pa.types.is_floating(field.type) or pa.types.is_decimal(field.type)


class _Reader:
    def __init__(self, path: str, text: str, facts: pa.Schema, event_types: frozenset[str]):
        self.path, self.text, self.facts, self.event_types = path, text, facts, event_types

    def fail(self, meter: str, key: str, reason: str) -> MetersError:
        table = f"meters.{meter}"
        return MetersError(self.path, f"{table}.{key}", reason, line_of(self.text, table, key))

    def string(self, name: str, raw: dict[str, Any], key: str, default: str) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(name, key, f"must be a non-empty string, not {value!r}")
        return value

    def column(self, name: str, key: str, column: Any) -> pa.Field:
        if not isinstance(column, str) or column not in self.facts.names:
            raise self.fail(
                name,
                key,
                f"{column!r} is not a column of the facts (columns: {', '.join(self.facts.names)})",
            )
        return self.facts.field(column)

    def events(self, name: str, raw: Any) -> tuple[str, ...]:
        listed = [raw] if isinstance(raw, str) else raw
        if (
            not isinstance(listed, list)
            or not listed
            or not all(isinstance(e, str) for e in listed)
        ):
            raise self.fail(name, "event", 'must be an event type, a list of them, or "*"')
        if ANY_EVENT in listed:
            if len(listed) > 1:
                raise self.fail(name, "event", '"*" (every event) stands alone')
            return ()
        custom = {e for e in listed if e.startswith(CUSTOM_PREFIX) and len(e) > len(CUSTOM_PREFIX)}
        unknown = sorted(set(listed) - self.event_types - custom)
        if unknown:
            known = ", ".join(sorted(self.event_types))
            raise self.fail(name, "event", f"unknown event type {unknown[0]!r} (known: {known})")
        return tuple(sorted(set(listed)))

    def decimals(
        self, name: str, raw: dict[str, Any], aggregation: str, field: pa.Field | None
    ) -> int:
        declared = field is not None and pa.types.is_decimal(field.type)
        fractional = _is_fractional(aggregation, field)
        if "decimals" not in raw:
            if fractional and declared:
                return min(field.type.scale, MAX_DECIMALS)  # type: ignore[union-attr]
            return 3 if fractional else 0
        value = raw["decimals"]
        if not fractional:
            raise self.fail(
                name, "decimals", "only a sum or max of a fractional property has decimals"
            )
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_DECIMALS:
            raise self.fail(
                name, "decimals", f"must be an integer from 0 to {MAX_DECIMALS}, not {value!r}"
            )
        return value

    def meter(self, name: str, raw: Any) -> Meter:
        if not _NAME.match(name) or name in RESERVED:
            raise MetersError(
                self.path,
                f"meters.{name}",
                "a meter name is lower case letters, digits and _ (a SQL column), starts with"
                f" a letter, and is none of {', '.join(sorted(RESERVED))}",
                line_of(self.text, f"meters.{name}", "\0"),
            )
        if not isinstance(raw, dict):
            raise self.fail(name, "(table)", "must be a table")
        for key in raw:
            if key not in _KEYS:
                raise self.fail(name, key, f"unknown key; allowed: {', '.join(sorted(_KEYS))}")
        if "event" not in raw:
            raise self.fail(name, "event", 'missing: an event type, a list of them, or "*"')
        events = self.events(name, raw["event"])
        aggregation = raw.get("aggregation")
        if aggregation not in AGGREGATIONS:
            raise self.fail(
                name,
                "aggregation",
                f"must be one of {', '.join(AGGREGATIONS)}, not {aggregation!r}",
            )
        field = self.property(name, raw, aggregation)
        group_by = self.group_by(name, raw.get("group_by", []))
        unit = self.string(name, raw, "unit", "event" if aggregation == "count" else name)
        size = self.size(name, raw)
        return Meter(
            name=name,
            events=events,
            aggregation=aggregation,
            column=None if field is None else field.name,
            decimals=self.decimals(name, raw, aggregation, field),
            group_by=group_by,
            unit=unit,
            invoice_unit=self.string(name, raw, "invoice_unit", unit),
            invoice_unit_size=size,
            description=self.string(name, raw, "description", name) if "description" in raw else "",
            fractional=_is_fractional(aggregation, field),
        )

    def property(self, name: str, raw: dict[str, Any], aggregation: str) -> pa.Field | None:
        if aggregation == "count":
            if "property" in raw:
                raise self.fail(name, "property", "a count counts events: it has no property")
            return None
        if "property" not in raw:
            raise self.fail(name, "property", f"missing: the facts column a {aggregation} reads")
        declared = raw["property"]
        if isinstance(declared, str) and declared.startswith(METRICS_PREFIX):
            # A custom event's metric: a number in the facts' metrics map.
            field = pa.field(declared, self.column(name, "property", "metrics").type.item_type)
        else:
            field = self.column(name, "property", declared)
        numeric = (
            pa.types.is_integer(field.type)
            or pa.types.is_floating(field.type)
            or pa.types.is_decimal(field.type)
        )
        if aggregation in ("sum", "max") and not numeric:
            raise self.fail(
                name,
                "property",
                f"a {aggregation} needs a numeric column; {field.name} is {field.type}",
            )
        return field

    def group_by(self, name: str, raw: Any) -> tuple[str, ...]:
        if not isinstance(raw, list):
            raise self.fail(name, "group_by", "must be a list of facts columns")
        for column in raw:
            field = self.column(name, "group_by", column)
            if field.name in NOT_DIMENSIONS:
                raise self.fail(
                    name,
                    "group_by",
                    f"{field.name} identifies an event, a person or a window: not a dimension",
                )
            if not (
                pa.types.is_string(field.type)
                or pa.types.is_boolean(field.type)
                or pa.types.is_integer(field.type)
            ):
                raise self.fail(
                    name,
                    "group_by",
                    f"{field.name} is {field.type}: a dimension is text, a flag or an integer",
                )
        if len(set(raw)) != len(raw):
            raise self.fail(name, "group_by", "a column is listed twice")
        return tuple(raw)

    def size(self, name: str, raw: dict[str, Any]) -> Decimal:
        value = raw.get("invoice_unit_size", "1")
        if not isinstance(value, str):
            raise self.fail(
                name, "invoice_unit_size", f'must be a decimal string such as "1000", not {value!r}'
            )
        try:
            size = Decimal(value)
        except InvalidOperation:
            raise self.fail(
                name, "invoice_unit_size", f"{value!r} is not a decimal number"
            ) from None
        if not size.is_finite() or size <= 0:
            raise self.fail(
                name, "invoice_unit_size", f"must be a number greater than 0, not {value!r}"
            )
        return size


def parse_meters(
    text: str,
    path: str = "<meters>",
    facts: pa.Schema = FACTS,
    event_types: Iterable[str] = EVENT_TYPES,
) -> tuple[Meter, ...]:
    """Parse and check a meters file against the facts schema (``facts``) and the event
    types; every problem raises :class:`MetersError` naming the meter, the key and the line."""
    document, reason, line = loads(text)
    if document is None:
        raise MetersError(path, "(syntax)", reason, line)
    for key in document:
        if key != "meters":
            raise MetersError(
                path,
                key,
                "unknown key; the file holds [meters.<name>] tables",
                line_of(text, None, key),
            )
    tables = document.get("meters")
    if not isinstance(tables, dict) or not tables:
        raise MetersError(path, "meters", "missing: declare at least one [meters.<name>] table")
    reader = _Reader(path, text, facts, frozenset(event_types))
    return tuple(reader.meter(name, raw) for name, raw in tables.items())


def load_meters(path: Path | None, facts: pa.Schema = FACTS) -> tuple[Meter, ...]:
    """The meters in ``path``, or the packaged default meters when ``path`` is None."""
    if path is None:
        text = resources.files("aggregations").joinpath(DEFAULT_METERS).read_text("utf-8")
        return parse_meters(text, f"(packaged) {DEFAULT_METERS}", facts)
    try:
        text = path.read_text("utf-8")
    except OSError as error:
        raise ConfigurationError(f"meters file {path}: cannot read it ({error.strerror})") from None
    return parse_meters(text, str(path), facts)


def default_meters() -> tuple[Meter, ...]:
    return load_meters(None)
