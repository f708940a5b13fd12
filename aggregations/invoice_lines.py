"""Invoice lines: column-wise for the plans whose lines are whole billing units, and line
by line (the reference) for the others.

Why column-wise: a month of a thousand accounts is six thousand lines, and pricing them
line by line costs a dozen :class:`~decimal.Decimal` operations each (a division, quantizes,
mins and maxes), more than reading the month's usage. :func:`metric_lines` prices one plan
metric for every account at once in integer numpy arrays (int64, or Python integers in
object arrays when a product could overflow), builds each distinct Decimal once, and the
lines with one ``map`` per band. Not Arrow or DuckDB decimal columns: the lines are Python
Decimals in the end, and converting a decimal column to Python costs more per value (about
3 us) than the whole line costs here.

Exactly the reference's lines, representation included (CSV and JSON print
``format(value, "f")``): when usage is rounded to whole units (``quantity_rounding``
``"up"`` or ``"half_even"``) and the allowance and tier bounds are whole numbers written
without a fraction or an exponent, every quantity the reference computes is an integer
with exponent 0 and every amount has the quantum's exponent, so integers carry them
exactly. A metric priced otherwise (``"exact"`` quantities, a bound such as ``"100.5"``) and
any negative usage of the metric are priced by the reference, :func:`reference_lines`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from itertools import repeat
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt

from aggregations.price_plan import MetricPrice, PricePlan, QuantityRounding

_ONE: Final = Decimal(1)
_ZERO: Final = Decimal(0)


class InvoiceLine(msgspec.Struct, frozen=True):
    """One priced line (a msgspec struct: a month of a thousand accounts builds thousands,
    and a frozen dataclass costs several times more to build)."""

    account_id: str
    metric: str
    unit: str  # the plan's billing unit: "1,000 requests", "GB"
    # The band of the usage this line prices, in billing units: "0-100", "100-" or "" (flat).
    band: str
    metered: Decimal  # the period's usage as metered (requests, bytes, ...)
    used: Decimal  # the same in billing units, rounded as the plan says
    allowance: Decimal  # the plan's included units per period (of the metric)
    quantity: Decimal  # used units that fall in this band
    included: Decimal  # of which free (the part of the allowance used here)
    billable: Decimal  # quantity - included
    unit_price: Decimal
    amount: Decimal  # billable * unit_price, rounded half-even to the quantum


# --- the reference: line by line in Decimal -----------------------------------------------------


def to_units(metered: Decimal, price: MetricPrice, rounding: QuantityRounding) -> Decimal:
    """Metered usage in billing units, rounded as the plan says (pure)."""
    units = metered / price.unit_size
    if rounding == "exact":
        return units
    return units.quantize(_ONE, rounding=ROUND_CEILING if rounding == "up" else ROUND_HALF_EVEN)


def band_label(low: Decimal, high: Decimal | None) -> str:
    return f"{low.normalize():f}-{'' if high is None else f'{high.normalize():f}'}"


def reference_lines(
    account: str, price: MetricPrice, metered: Decimal, plan: PricePlan
) -> list[InvoiceLine]:
    """One account's lines of one metric, in Decimal arithmetic: the definition the
    column-wise pass must equal (and the pricing of what it does not cover)."""
    used = to_units(metered, price, plan.quantity_rounding)
    lines = []
    low = Decimal(0)
    for index, tier in enumerate(price.tiers):
        high = tier.up_to
        in_band = max(Decimal(0), (used if high is None else min(used, high)) - low)
        if index > 0 and in_band == 0:
            break
        free = max(Decimal(0), min(used, price.included) - low) if index == 0 else Decimal(0)
        free = min(free, in_band)
        billable = in_band - free
        amount = (billable * tier.unit_price).quantize(
            plan.amount_quantum, rounding=ROUND_HALF_EVEN
        )
        lines.append(
            InvoiceLine(
                account_id=account,
                metric=price.metric,
                unit=price.unit,
                band="" if len(price.tiers) == 1 else band_label(low, high),
                metered=metered,
                used=used,
                allowance=price.included,
                quantity=in_band,
                included=free,
                billable=billable,
                unit_price=tier.unit_price,
                amount=amount,
            )
        )
        if high is None:
            break
        low = high
    return lines


# --- column-wise ---------------------------------------------------------------------------------


def whole_units(price: MetricPrice, plan: PricePlan) -> bool:
    """Whether every line of ``price`` is whole billing units (see the module's docstring)."""
    bounds = [price.included, *(t.up_to for t in price.tiers if t.up_to is not None)]
    return plan.quantity_rounding != "exact" and all(map(_plain_integer, bounds))


def _plain_integer(value: Decimal) -> bool:
    sign, _, exponent = value.as_tuple()
    return exponent == 0 and sign == 0


@dataclass(frozen=True)
class _Band:
    low: int
    high: int | None
    label: str
    unit_price: Decimal
    # The amount in quanta is billable * numerator / denominator, rounded half-even.
    numerator: int
    denominator: int


def _bands(price: MetricPrice, quantum_exponent: int) -> list[_Band]:
    out = []
    low = _ZERO
    for tier in price.tiers:
        numerator, denominator = tier.unit_price.as_integer_ratio()
        if quantum_exponent < 0:
            numerator *= 10**-quantum_exponent
        else:
            denominator *= 10**quantum_exponent
        label = "" if len(price.tiers) == 1 else band_label(low, tier.up_to)
        high = None if tier.up_to is None else int(tier.up_to)
        out.append(_Band(int(low), high, label, tier.unit_price, numerator, denominator))
        if tier.up_to is None:
            break
        low = tier.up_to
    return out


def round_half_even(numerator: int, denominator: int) -> int:
    """numerator / denominator (numerator >= 0, denominator > 0) to the nearest integer,
    ties to the even one, as ``Decimal.quantize(..., ROUND_HALF_EVEN)``."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2):
        quotient += 1
    return quotient


def whole_units_of(metered: Decimal, price: MetricPrice, rounding: QuantityRounding) -> int:
    """:func:`to_units` of usage >= 0 rounded to a whole unit, exactly, in integers."""
    numerator, denominator = metered.as_integer_ratio()
    size_numerator, size_denominator = price.unit_size.as_integer_ratio()
    numerator *= size_denominator
    denominator *= size_numerator
    if rounding == "up":
        return -(-numerator // denominator)
    return round_half_even(numerator, denominator)


class _Integers(dict[int, Decimal]):
    """Each integer's Decimal, built once: a month's lines repeat the same few quantities
    (zeros, allowances, band widths) thousands of times."""

    def __missing__(self, key: int) -> Decimal:
        value = self[key] = Decimal(key)
        return value


class _Amounts(dict[int, Decimal]):
    """A number of quanta as ``quantize`` returns it: with the quantum's exponent whatever
    the value (a product by 1E<exponent> has that exponent, and is exact below 28 digits)."""

    def __init__(self, exponent: int) -> None:
        super().__init__()
        self.unit = Decimal(f"1E{exponent}")

    def __missing__(self, key: int) -> Decimal:
        value = self[key] = Decimal(key) * self.unit
        return value


# Every product stays below it in int64 (checked before each vectorised step).
_LIMIT: Final = 2**62


@dataclass(frozen=True)
class MetricLines:
    """One metric's lines for every account, in no particular order: ``account[k]`` and
    ``band[k]`` say where ``lines[k]`` goes; ``quanta[k]`` is its amount in quanta (None when
    the reference priced them)."""

    lines: list[InvoiceLine]
    account: npt.NDArray[np.int64]
    band: npt.NDArray[np.int64]
    quanta: npt.NDArray[np.int64] | None


def metric_lines(
    accounts: Sequence[str],
    metered: Sequence[Decimal],
    price: MetricPrice,
    plan: PricePlan,
    integers: npt.NDArray[np.int64] | None = None,
) -> MetricLines:
    """Every account's lines of one metric (``metered[i]`` is ``accounts[i]``'s usage), equal
    to :func:`reference_lines` of each, representation included.

    ``integers``: the same usage as int64 when the meter is an integer: the arithmetic is
    then vectorised in numpy (unless a product could overflow int64).
    """
    if not whole_units(price, plan) or (len(metered) and min(metered) < 0):
        return _by_reference(accounts, metered, price, plan)
    exponent = plan.amount_quantum.as_tuple().exponent
    assert isinstance(exponent, int)  # finite: the plan's loader checks the quantum
    bands = _bands(price, exponent)
    rounding = plan.quantity_rounding
    used = None if integers is None else _vectorised_units(integers, price, rounding)
    if used is None:
        used = np.array([whole_units_of(v, price, rounding) for v in metered], dtype=object)
    numbers, amounts = _Integers(), _Amounts(exponent)
    used_units = [numbers[u] for u in used.tolist()]
    lines: list[InvoiceLine] = []
    account_parts, band_parts, quanta_parts = [], [], []
    for index, (band, column) in enumerate(
        zip(bands, _band_columns(used, bands, price), strict=True)
    ):
        # Every account has a line of the first band; of the others, those that reach it.
        chosen = np.flatnonzero(column.quantity > 0) if index else np.arange(len(accounts))
        pick = chosen.tolist()
        lines.extend(
            map(
                InvoiceLine,
                [accounts[i] for i in pick],
                repeat(price.metric),
                repeat(price.unit),
                repeat(band.label),
                [metered[i] for i in pick],
                [used_units[i] for i in pick],
                repeat(price.included),
                map(numbers.__getitem__, column.quantity[chosen].tolist()),
                map(numbers.__getitem__, column.included[chosen].tolist()),
                map(numbers.__getitem__, column.billable[chosen].tolist()),
                repeat(band.unit_price),
                map(amounts.__getitem__, column.quanta[chosen].tolist()),
            )
        )
        account_parts.append(chosen)
        band_parts.append(np.full(len(chosen), index))
        quanta_parts.append(column.quanta[chosen])
    quanta = np.concatenate(quanta_parts)
    return MetricLines(
        lines,
        np.concatenate(account_parts),
        np.concatenate(band_parts),
        quanta if quanta.dtype == np.int64 else None,
    )


def _by_reference(
    accounts: Sequence[str], metered: Sequence[Decimal], price: MetricPrice, plan: PricePlan
) -> MetricLines:
    lines: list[InvoiceLine] = []
    account: list[int] = []
    band: list[int] = []
    for i, (account_id, value) in enumerate(zip(accounts, metered, strict=True)):
        of_account = reference_lines(account_id, price, value, plan)
        lines.extend(of_account)
        account.extend(repeat(i, len(of_account)))
        band.extend(range(len(of_account)))
    return MetricLines(lines, np.array(account, np.int64), np.array(band, np.int64), None)


def _vectorised_units(
    values: npt.NDArray[np.int64], price: MetricPrice, rounding: QuantityRounding
) -> npt.NDArray[np.int64] | None:
    """:func:`whole_units_of` of every value at once; None where int64 could overflow."""
    size, scale = price.unit_size.as_integer_ratio()  # usage / size * scale
    if not len(values) or max(size, scale, int(values.max()) * scale) >= _LIMIT:
        return None
    scaled = values * scale
    if rounding == "up":
        return -(-scaled // size)
    return _half_even(scaled, size)


def _half_even(numerator: npt.NDArray[Any], denominator: int) -> npt.NDArray[Any]:
    """:func:`round_half_even` of every numerator (>= 0) at once (int64 or object)."""
    quotient = numerator // denominator  # not np.divmod: it has no object loop
    remainder = numerator - quotient * denominator
    twice = 2 * remainder
    ties = (twice == denominator) & (quotient % 2 == 1)
    return quotient + ((twice > denominator) | ties).astype(np.int64)


@dataclass(frozen=True)
class _Columns:
    """One band's quantities for every account."""

    quantity: npt.NDArray[Any]
    included: npt.NDArray[Any]
    billable: npt.NDArray[Any]
    quanta: npt.NDArray[Any]


def _band_columns(
    used: npt.NDArray[Any], bands: Sequence[_Band], price: MetricPrice
) -> list[_Columns]:
    """Each band's quantities for every account, in int64 when nothing can overflow (else
    Python integers in object arrays: the same arithmetic, exact at any size)."""
    included = int(price.included)
    limits = [included, *(b.high or 0 for b in bands)]
    limits += [max(b.numerator, b.denominator) for b in bands]
    fits = used.dtype != object and max(limits) < _LIMIT
    if not fits:
        used = used.astype(object)
    columns = []
    for index, band in enumerate(bands):
        capped = used if band.high is None else np.minimum(used, band.high)
        quantity = np.maximum(capped - band.low, 0)
        free = np.minimum(np.minimum(used, included), quantity) if index == 0 else quantity * 0
        billable = quantity - free
        if fits and len(billable) and int(billable.max()) * band.numerator >= _LIMIT:
            billable = billable.astype(object)
        quanta = _half_even(billable * band.numerator, band.denominator)
        columns.append(_Columns(quantity, free, billable, quanta))
    return columns
