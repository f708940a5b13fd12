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
from decimal import Decimal
from typing import Final, Literal

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from aggregations.invoice_lines import (
    InvoiceLine,
    MetricLines,
    metric_lines,
    reference_lines,
    to_units,
)
from aggregations.manifest import read_manifest
from aggregations.price_plan import (
    DEFAULT_PLAN,
    MetricPrice,
    PricePlan,
    PricePlanError,
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
    "invoice_line_by_line",
    "load_plan",
    "parse_plan",
    "period_bounds",
    "period_usage",
    "price_period",
    "published_watermark",
    "to_units",
]

_PERIOD: Final = re.compile(r"^(\d{4})-(\d{2})$")
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
    *,
    ordered: bool = True,
) -> pa.Table:
    """The ``metering_daily`` rows (current values of ``meters``) of the period, from the
    catalog, by account and date unless ``ordered`` is false (an invoice folds them per
    account whatever their order, and sorting a month of a thousand accounts doubles the
    read). A meter the views do not have (never published) is an error that says so."""
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
        {"ORDER BY account_id, date" if ordered else ""}
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
    metrics = [price.metric for price in plan.metrics]
    usage = period_usage(connection, period, metrics, account_id, ordered=False)
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

    ``usage`` holds ``metering_daily`` rows of the period (see :func:`period_usage`). Each
    metric is priced for every account in one pass (:func:`metric_lines`): the same lines
    as :func:`invoice_line_by_line`, the definition.
    """
    folded = _folded(usage, plan)
    accounts = folded.column("account_id").to_pylist()
    priced = []
    for price in plan.metrics:
        column = folded.column(price.metric)
        metered = _exact(column, price.aggregate)
        priced.append(
            metric_lines(accounts, metered, price, plan, _integers(column, price.aggregate))
        )
    every = [line for of_metric in priced for line in of_metric.lines]
    account = np.concatenate([p.account for p in priced])
    metric = np.concatenate([np.full(len(p.lines), i) for i, p in enumerate(priced)])
    band = np.concatenate([p.band for p in priced])
    order = np.lexsort((band, metric, account))  # the last key sorts first
    lines = tuple(every[k] for k in order.tolist())
    amounts = _account_totals(lines, accounts, account[order], priced, plan.amount_quantum)
    totals = tuple(
        InvoiceTotal(a, plan.currency, amount) for a, amount in zip(accounts, amounts, strict=True)
    )
    return Invoice(period, plan.currency, lines, totals, status, covered_through)


def _account_totals(
    lines: tuple[InvoiceLine, ...],
    accounts: list[str],
    account: npt.NDArray[np.int64],
    priced: list[MetricLines],
    quantum: Decimal,
) -> list[Decimal]:
    """Each account's total: the sum of its lines' amounts from Decimal(0), in integer
    quanta when every line has them (exactly that sum, with its exponent)."""
    quanta = [p.quanta for p in priced]
    exponent = quantum.as_tuple().exponent
    if all(q is not None for q in quanta) and isinstance(exponent, int):
        every = np.concatenate([q for q in quanta if q is not None])
        if not len(every) or int(every.sum()) < 2**62:
            sums = np.zeros(len(accounts), np.int64)
            np.add.at(sums, np.concatenate([p.account for p in priced]), every)
            # Decimal(0) + amounts of exponent e has exponent min(0, e).
            if exponent <= 0:
                return [Decimal(f"{s}E{exponent}") for s in sums.tolist()]
            return [Decimal(s * 10**exponent) for s in sums.tolist()]
    totals = [Decimal(0)] * len(accounts)
    for line, index in zip(lines, account.tolist(), strict=True):
        totals[index] += line.amount
    return totals


def invoice_line_by_line(
    usage: pa.Table,
    plan: PricePlan,
    period: str,
    *,
    status: InvoiceStatus = "final",
    covered_through: date | None = None,
) -> Invoice:
    """:func:`invoice` priced line by line in Decimal arithmetic (pure): the reference its
    tests and the benchmark compare it with."""
    metered = _metered(usage, plan)
    lines: list[InvoiceLine] = []
    totals: list[InvoiceTotal] = []
    for account in sorted(metered):
        of_account: list[InvoiceLine] = []
        for price in plan.metrics:
            of_account.extend(reference_lines(account, price, metered[account][price.metric], plan))
        lines.extend(of_account)
        total = sum((line.amount for line in of_account), Decimal(0))
        totals.append(InvoiceTotal(account, plan.currency, total))
    return Invoice(period, plan.currency, tuple(lines), tuple(totals), status, covered_through)


def _folded(usage: pa.Table, plan: PricePlan) -> pa.Table:
    """Per account (in ``sorted`` order), per plan metric: the period's usage as metered.

    Folded in Arrow (a month of a thousand accounts is 30,000 rows; as Python Decimals,
    half a second): meters are integers or decimals, whose sums Arrow computes exactly once
    decimals are widened to 38 digits. Columns ``account_id`` and the plan's metrics.
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
    # Byte order of UTF-8 is code point order: the order ``sorted`` gives the accounts.
    folded = folded.sort_by("account_id")
    names = [f"{price.metric}_{price.aggregate}" for price in plan.metrics]
    return pa.table(
        [folded.column("account_id"), *(folded.column(name) for name in names)],
        names=["account_id", *(price.metric for price in plan.metrics)],
    )


def _exact(column: pa.ChunkedArray, aggregate: str) -> list[Decimal]:
    values = [Decimal(value) for value in column.to_pylist()]
    # A max never goes below zero, as the fold from Decimal(0) it replaces.
    return [max(value, _ZERO) for value in values] if aggregate == "max" else values


def _integers(column: pa.ChunkedArray, aggregate: str) -> npt.NDArray[np.int64] | None:
    """A signed integer meter's values as int64 (the vectorised pricing's input), else None
    (an unsigned sum past 2**63 would wrap in int64: priced from its Decimals instead)."""
    if not pa.types.is_signed_integer(column.type):
        return None
    values = column.to_numpy().astype(np.int64)
    return np.maximum(values, 0) if aggregate == "max" else values


def _metered(usage: pa.Table, plan: PricePlan) -> dict[str, dict[str, Decimal]]:
    """Per account, per plan metric: the period's usage as metered (exact)."""
    folded = _folded(usage, plan)
    by_metric = [_exact(folded.column(p.metric), p.aggregate) for p in plan.metrics]
    return {
        account: {
            price.metric: values[i] for price, values in zip(plan.metrics, by_metric, strict=True)
        }
        for i, account in enumerate(folded.column("account_id").to_pylist())
    }


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
