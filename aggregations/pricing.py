"""Pricing: a price plan (:mod:`aggregations.price_plan`) applied to exact metering.

Quantities: an account's usage of a metric over the period (the sum of its days, or its peak
day) is divided by the plan's ``unit_size`` and rounded to whole billing units as the plan
says (``quantity_rounding``; up by default, so 40,149 requests priced per 1,000 are 41
units). Allowances and tiers apply to those units.

Amounts: each line's billable units times its unit price, rounded half-even to the plan's
``amount_quantum`` (the cent, "0.01", by default); an account's total is the sum of its
rounded lines and the invoice's total the sum of the accounts' totals, so a printed invoice
always adds up.

Tiers are graduated: the usage of the period is cut at each tier's ``up_to`` and each part
is priced at its own tier's price; the first ``included`` units of the first tier are free.

Closed periods: metering publishes a day once its windows have closed (see
:mod:`aggregations.windows`). A month is closed when its last day is; an invoice of a month
that is not closed would miss days, so :func:`price_period` refuses one unless asked for a
draft, and a draft says so in every format.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from typing import Final, Literal

import duckdb
import msgspec
import pyarrow as pa

from aggregations.manifest import read_manifest
from aggregations.price_plan import (
    DEFAULT_PLAN,
    MetricPrice,
    PricePlan,
    PricePlanError,
    QuantityRounding,
    Tier,
    load_plan,
    parse_plan,
)
from aggregations.storage import resolve_root
from aggregations.windows import day_closed, last_closed_day
from streams.errors import SieveError

__all__ = [
    "DEFAULT_PLAN",
    "Invoice",
    "InvoiceLine",
    "InvoiceTotal",
    "MeterNotPublishedError",
    "MetricPrice",
    "NoMeteringError",
    "PeriodNotClosedError",
    "PricePlan",
    "PricePlanError",
    "Tier",
    "invoice",
    "load_plan",
    "parse_plan",
    "period_bounds",
    "period_usage",
    "price_period",
    "published_watermark",
]

_PERIOD: Final = re.compile(r"^(\d{4})-(\d{2})$")
_ONE: Final = Decimal(1)
_ZERO: Final = Decimal(0)

InvoiceStatus = Literal["final", "draft"]


class PeriodNotClosedError(SieveError):
    """The month still has days whose metering is not published; ``--draft`` prices it."""

    exit_code = 3


class NoMeteringError(SieveError):
    """Nothing to invoice: an unknown account, or a period without published metering."""

    exit_code = 4


class MeterNotPublishedError(SieveError):
    """The plan prices a meter that no publish run has metered yet."""

    exit_code = 4


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


@dataclass(frozen=True)
class InvoiceTotal:
    account_id: str
    currency: str
    amount: Decimal


@dataclass(frozen=True)
class Invoice:
    period: str
    currency: str
    lines: tuple[InvoiceLine, ...]
    totals: tuple[InvoiceTotal, ...]
    # "draft": the month was not closed when priced; its later days may be missing.
    status: InvoiceStatus = "final"
    # The last day whose metering is published (None: unknown, or nothing published).
    covered_through: date | None = None

    @property
    def total(self) -> Decimal:
        return sum((total.amount for total in self.totals), Decimal(0))


# --- periods ----------------------------------------------------------------------------------


def period_bounds(period: str) -> tuple[date, date]:
    """``"2026-11"`` -> (2026-11-01, 2026-12-01): the half-open range of the month's days."""
    match = _PERIOD.match(period)
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ValueError(f"period must be a month as YYYY-MM, not {period!r}")
    year, month = int(match.group(1)), int(match.group(2))
    start = date(year, month, 1)
    end = date(year + month // 12, month % 12 + 1, 1)
    return start, end


def published_watermark(data_root: str) -> datetime | None:
    """The watermark the last publish run closed windows with (None: nothing published),
    from the publish manifest."""
    return read_manifest(resolve_root(data_root)).watermark


def covered_through(mark: datetime | None, grace: timedelta) -> date | None:
    """The last closed day under the watermark ``mark`` (pure)."""
    return None if mark is None else last_closed_day(mark, grace)


# --- usage and invoices -------------------------------------------------------------------------


def period_usage(
    connection: duckdb.DuckDBPyConnection,
    period: str,
    meters: Sequence[str],
    account_id: str | None = None,
) -> pa.Table:
    """The ``metering_daily`` rows (current values of ``meters``) of the period, from the
    catalog. A meter the views do not have (never published) is an error that says so."""
    start, end = period_bounds(period)
    published = {row[0] for row in connection.execute("DESCRIBE metering_daily").fetchall()}
    missing = [meter for meter in meters if meter not in published]
    if missing:
        raise MeterNotPublishedError(
            f"the price plan prices {', '.join(missing)}, which no publish run has metered:"
            " declare it in the meters file (SIEVE_METERS_FILE) and run `sieve publish`"
        )
    columns = ", ".join(meters)
    return connection.sql(
        f"""
        SELECT date, account_id, {columns} FROM metering_daily
        WHERE date >= ? AND date < ? AND (CAST(? AS VARCHAR) IS NULL OR account_id = ?)
        ORDER BY account_id, date
        """,  # noqa: S608 - constant column list; the bounds and account are parameters
        params=[start, end, account_id, account_id],
    ).to_arrow_table()


def price_period(
    connection: duckdb.DuckDBPyConnection,
    plan: PricePlan,
    period: str,
    *,
    watermark: datetime | None,
    grace: timedelta,
    account_id: str | None = None,
    draft: bool = False,
) -> Invoice:
    """The invoice of ``period`` (one account, or all), from the catalog's metering.

    ``watermark``: the published one (:func:`published_watermark`). Raises
    :class:`PeriodNotClosedError` for a month that is not closed unless ``draft``, and
    :class:`NoMeteringError` for an account or a period with no published metering.
    """
    start, end = period_bounds(period)
    through = covered_through(watermark, grace)
    closed = watermark is not None and day_closed(end - timedelta(days=1), watermark, grace)
    if not closed and not draft:
        published = f"through {through}" if through is not None else "for no day yet"
        raise PeriodNotClosedError(
            f"{period} is not closed: metering is published {published} (a day closes"
            f" {_duration(grace)} after its end, once later events arrive or `sieve publish"
            " --close-through` says the input is complete); --draft prices what there is"
        )
    usage = period_usage(connection, period, [price.metric for price in plan.metrics], account_id)
    if account_id is not None and usage.num_rows == 0 and not _known(connection, account_id):
        raise NoMeteringError(f"unknown account {account_id!r}: no metering published for it")
    if usage.num_rows == 0:
        who = f" for account {account_id!r}" if account_id is not None else ""
        raise NoMeteringError(
            f"no metering published{who} in {period} ({start} to {end - timedelta(days=1)})"
        )
    status: InvoiceStatus = "final" if closed else "draft"
    return invoice(usage, plan, period, status=status, covered_through=through)


def invoice(
    usage: pa.Table,
    plan: PricePlan,
    period: str,
    *,
    status: InvoiceStatus = "final",
    covered_through: date | None = None,
) -> Invoice:
    """Invoice lines (per account, per plan metric, per reached tier) and totals (pure).

    ``usage`` holds ``metering_daily`` rows of the period (see :func:`period_usage`).
    """
    metered = _metered(usage, plan)
    lines: list[InvoiceLine] = []
    totals: list[InvoiceTotal] = []
    for account in sorted(metered):
        of_account: list[InvoiceLine] = []
        for price in plan.metrics:
            of_account.extend(_lines(account, price, metered[account][price.metric], plan))
        lines.extend(of_account)
        total = sum((line.amount for line in of_account), Decimal(0))
        totals.append(InvoiceTotal(account, plan.currency, total))
    return Invoice(period, plan.currency, tuple(lines), tuple(totals), status, covered_through)


def to_units(metered: Decimal, price: MetricPrice, rounding: QuantityRounding) -> Decimal:
    """Metered usage in billing units, rounded as the plan says (pure)."""
    units = metered / price.unit_size
    if rounding == "exact":
        return units
    return units.quantize(_ONE, rounding=ROUND_CEILING if rounding == "up" else ROUND_HALF_EVEN)


def _metered(usage: pa.Table, plan: PricePlan) -> dict[str, dict[str, Decimal]]:
    """Per account, per plan metric: the period's usage as metered (exact).

    Folded per account in Arrow first (a month of a thousand accounts is 30,000 rows; as
    Python Decimals, half a second): meters are integers or decimals, whose sums Arrow
    computes exactly once decimals are widened to 38 digits, so only one value per account
    and metric becomes a Decimal.
    """
    columns: dict[str, pa.ChunkedArray] = {"account_id": usage.column("account_id")}
    for price in plan.metrics:
        column = usage.column(price.metric)
        if pa.types.is_decimal(column.type):
            column = column.cast(pa.decimal128(38, column.type.scale))
        elif not pa.types.is_integer(column.type):
            raise TypeError(f"meter {price.metric} is {column.type}: not an exact type")
        columns[price.metric] = column
    folded = (
        pa.table(columns)
        .group_by("account_id")
        .aggregate([(price.metric, price.aggregate) for price in plan.metrics])
    )
    out: dict[str, dict[str, Decimal]] = {}
    for row in folded.to_pylist():
        out[row["account_id"]] = {
            # A max never goes below zero, as the fold from Decimal(0) it replaces.
            price.metric: max(Decimal(row[f"{price.metric}_{price.aggregate}"]), _ZERO)
            if price.aggregate == "max"
            else Decimal(row[f"{price.metric}_{price.aggregate}"])
            for price in plan.metrics
        }
    return out


def _band(low: Decimal, high: Decimal | None) -> str:
    return f"{low.normalize():f}-{'' if high is None else f'{high.normalize():f}'}"


def _lines(
    account: str, price: MetricPrice, metered: Decimal, plan: PricePlan
) -> list[InvoiceLine]:
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
                band="" if len(price.tiers) == 1 else _band(low, high),
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


def _known(connection: duckdb.DuckDBPyConnection, account_id: str) -> bool:
    # fetchall, not fetchone: DuckDB keeps a half-read result open on the connection.
    ((count,),) = connection.execute(
        "SELECT count(*) FROM metering_daily WHERE account_id = ?", [account_id]
    ).fetchall()
    return bool(count)


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"
