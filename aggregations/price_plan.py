"""The price plan: a TOML file of per-meter allowances and prices, all decimals.

A plan says, per meter (declared in the meters file, :mod:`aggregations.meters`, which also
gives its invoice unit and the metered quantity in one such unit): whether the period's
usage is the ``sum`` of its days or the ``max`` (peak day), the ``included`` allowance and a
flat ``unit_price`` or graduated ``tiers``, in invoice units. ``quantity_rounding`` says how
usage is rounded to whole invoice units: ``"up"`` (the default: a started unit is a unit),
``"half_even"``, or ``"exact"`` (no rounding). Every problem is a :class:`PricePlanError`
naming the line and key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

from aggregations.meters import Meter, default_meters
from aggregations.tomlfile import line_of, loads
from streams.errors import ConfigurationError

DEFAULT_PLAN: Final = "price_plan.toml"
_CURRENCY = re.compile(r"^[A-Z]{3}$")
QuantityRounding = Literal["up", "half_even", "exact"]
QUANTITY_ROUNDINGS: Final = ("up", "half_even", "exact")


class PricePlanError(ConfigurationError):
    """The price plan file is malformed; ``path``, ``line`` and ``key`` say where."""

    def __init__(self, path: str, key: str, reason: str, line: int | None = None) -> None:
        self.path = path
        self.key = key
        self.line = line
        self.reason = reason
        where = f"line {line}, " if line is not None else ""
        super().__init__(f"price plan {path}: {where}{key}: {reason}")


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None  # None: unbounded (the last tier)
    unit_price: Decimal


@dataclass(frozen=True)
class MetricPrice:
    metric: str
    unit: str
    unit_size: Decimal
    aggregate: Literal["sum", "max"]
    included: Decimal
    tiers: tuple[Tier, ...]  # a flat price is one unbounded tier


@dataclass(frozen=True)
class PricePlan:
    currency: str
    amount_quantum: Decimal
    metrics: tuple[MetricPrice, ...]
    quantity_rounding: QuantityRounding = "up"


# --- loading -------------------------------------------------------------------------------


_TOP_LEVEL_KEYS: Final = ("currency", "amount_quantum", "quantity_rounding", "metrics")
# Keys an earlier plan had per metric, now declared once with the meter.
_MOVED: Final = {"unit": "invoice_unit", "unit_size": "invoice_unit_size"}


class _Reader:
    def __init__(self, path: str, text: str, meters: Sequence[Meter]) -> None:
        self.path = path
        self.text = text
        self.meters = {meter.name: meter for meter in meters}

    def fail(self, table: str | None, key: str, reason: str) -> PricePlanError:
        full = f"{table}.{key}" if table else key
        base_key = key.split("[", 1)[0]
        return PricePlanError(self.path, full, reason, line_of(self.text, table, base_key))

    def fail_table(self, table: str, reason: str) -> PricePlanError:
        """An error about a whole table: points at its header line."""
        return PricePlanError(self.path, table, reason, line_of(self.text, table, "\0"))

    def decimal(
        self,
        raw: dict[str, Any],
        table: str | None,
        key: str,
        *,
        default: str | None = None,
        label: str | None = None,
    ) -> Decimal:
        name = label or key
        if key not in raw:
            if default is None:
                raise self.fail(table, name, 'missing (a decimal string such as "0.08")')
            return Decimal(default)
        value = raw[key]
        if not isinstance(value, str):
            raise self.fail(
                table,
                name,
                f'must be a decimal string such as "0.08", not {value!r}'
                " (a TOML float cannot hold most prices exactly)",
            )
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise self.fail(table, name, f"{value!r} is not a decimal number") from None
        if not number.is_finite() or number < 0:
            raise self.fail(table, name, f"must be a finite number >= 0, not {value!r}")
        return number

    def metric(self, name: str, raw: Any) -> MetricPrice:
        table = f"metrics.{name}"
        meter = self.meters.get(name)
        if meter is None:
            raise self.fail_table(
                table, f"not a declared meter; the meters file declares: {', '.join(self.meters)}"
            )
        if not isinstance(raw, dict):
            raise self.fail_table(table, "must be a table")
        for key in raw:
            if key in _MOVED:
                raise self.fail(
                    table,
                    key,
                    f"declared once, with the meter: {_MOVED[key]} of [meters.{name}] in the"
                    f" meters file (here {meter.invoice_unit!r}, size {meter.invoice_unit_size})",
                )
        allowed = {"aggregate", "included", "unit_price", "tiers"}
        for key in raw:
            if key not in allowed:
                raise self.fail(table, key, f"unknown key; allowed: {', '.join(sorted(allowed))}")
        unit, unit_size = meter.invoice_unit, meter.invoice_unit_size
        aggregate = raw.get("aggregate", "sum")
        if aggregate not in ("sum", "max"):
            raise self.fail(table, "aggregate", f'must be "sum" or "max", not {aggregate!r}')
        included = self.decimal(raw, table, "included", default="0")
        if ("unit_price" in raw) == ("tiers" in raw):
            raise self.fail_table(table, "give exactly one of unit_price or tiers")
        if "unit_price" in raw:
            tiers: tuple[Tier, ...] = (Tier(None, self.decimal(raw, table, "unit_price")),)
        else:
            tiers = self.tiers(table, raw["tiers"], included)
        return MetricPrice(name, unit, unit_size, aggregate, included, tiers)

    def tiers(self, table: str, raw: Any, included: Decimal) -> tuple[Tier, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.fail(table, "tiers", "must be a non-empty array of tables")
        tiers = []
        previous = included
        for index, entry in enumerate(raw):
            label = f"tiers[{index}]"
            if not isinstance(entry, dict):
                raise self.fail(table, label, "must be a table { up_to = ..., unit_price = ... }")
            for key in entry:
                if key not in ("up_to", "unit_price"):
                    raise self.fail(
                        table, f"{label}.{key}", "unknown key; allowed: up_to, unit_price"
                    )
            price = self.decimal(entry, table, "unit_price", label=f"{label}.unit_price")
            last = index == len(raw) - 1
            if last:
                if "up_to" in entry:
                    raise self.fail(table, f"{label}.up_to", "the last tier has no up_to")
                tiers.append(Tier(None, price))
                continue
            up_to = self.decimal(entry, table, "up_to", label=f"{label}.up_to")
            if up_to <= previous:
                raise self.fail(
                    table,
                    f"{label}.up_to",
                    f"must be greater than {previous} (the included quantity or previous up_to)",
                )
            previous = up_to
            tiers.append(Tier(up_to, price))
        return tuple(tiers)


def parse_plan(text: str, path: str = "<plan>", meters: Sequence[Meter] | None = None) -> PricePlan:
    """Parse and check a plan against the declared meters (the packaged ones by default);
    every problem raises PricePlanError naming line and key."""
    raw, reason, line = loads(text)
    if raw is None:
        raise PricePlanError(path, "(syntax)", reason, line)
    reader = _Reader(path, text, default_meters() if meters is None else meters)
    for key in raw:
        if key not in _TOP_LEVEL_KEYS:
            raise reader.fail(None, key, f"unknown key; allowed: {', '.join(_TOP_LEVEL_KEYS)}")
    currency = raw.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise reader.fail(
            None, "currency", f'must be an ISO 4217 code such as "EUR", not {currency!r}'
        )
    quantum = reader.decimal(raw, None, "amount_quantum", default="0.01")
    if quantum == 0:
        raise reader.fail(None, "amount_quantum", "must be greater than 0")
    rounding = raw.get("quantity_rounding", "up")
    if rounding not in QUANTITY_ROUNDINGS:
        raise reader.fail(
            None,
            "quantity_rounding",
            f"must be one of {', '.join(map(repr, QUANTITY_ROUNDINGS))}, not {rounding!r}",
        )
    metrics = raw.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise reader.fail(None, "metrics", "missing: add at least one [metrics.<name>] table")
    return PricePlan(
        currency,
        quantum,
        tuple(reader.metric(name, metrics[name]) for name in metrics),
        rounding,
    )


def load_plan(path: Path | None, meters: Sequence[Meter] | None = None) -> PricePlan:
    """The plan in ``path``, or the packaged default plan when ``path`` is None, checked
    against ``meters`` (the packaged meters by default)."""
    if path is None:
        text = resources.files("aggregations").joinpath(DEFAULT_PLAN).read_text("utf-8")
        return parse_plan(text, f"(packaged) {DEFAULT_PLAN}", meters)
    try:
        text = path.read_text("utf-8")
    except OSError as error:
        raise ConfigurationError(f"price plan {path}: cannot read it ({error.strerror})") from None
    return parse_plan(text, str(path), meters)
