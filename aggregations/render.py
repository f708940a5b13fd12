"""Printing query results: a rich table for people, CSV or JSON for programs."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

import click
import pyarrow as pa
from rich import box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from aggregations.pricing import Invoice, InvoiceLine

Format = Literal["table", "csv", "json"]
FORMATS: Final = ("table", "csv", "json")


def _plain(value: Any) -> Any:
    """A JSON-safe value: decimals and instants as exact strings."""
    if isinstance(value, Decimal):
        # format(.., "f"): str() would print a zero with many places as "0E-9".
        return format(value, "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def to_csv(columns: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[_plain(v) for v in row] for row in rows])
    return out.getvalue()


def to_json(columns: list[str], rows: list[list[Any]]) -> str:
    return json.dumps(
        [{c: _plain(v) for c, v in zip(columns, row, strict=True)} for row in rows], indent=2
    )


def render(
    columns: list[str],
    rows: list[list[Any]],
    fmt: Format,
    console: Console,
    title: str | None = None,
) -> None:
    """Print rows. CSV and JSON go to stdout as plain text (no wrapping, no colour)."""
    if fmt == "csv":
        click.echo(to_csv(columns, rows), nl=False)
    elif fmt == "json":
        click.echo(to_json(columns, rows))
    else:
        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*("" if v is None else str(_plain(v)) for v in row))
        console.print(table)


def table_rows(table: pa.Table) -> tuple[list[str], list[list[Any]]]:
    columns = table.column_names
    return columns, [[row[c] for c in columns] for row in table.to_pylist()]


# What every invoice line carries in CSV and JSON (the table shows a subset, see below).
INVOICE_COLUMNS: Final = [
    "account_id",
    "metric",
    "unit",
    "band",
    "metered",
    "used",
    "allowance",
    "quantity",
    "included",
    "billable",
    "unit_price",
    "amount",
]
# CSV: every row says which invoice it belongs to and what kind of row it is.
INVOICE_CSV_COLUMNS: Final = ["period", "status", "kind", *INVOICE_COLUMNS, "currency"]


def invoice_document(bill: Invoice) -> dict[str, Any]:
    """The invoice as ``sieve pricing --format json`` writes it: decimals as exact strings."""
    return {
        "period": bill.period,
        "status": bill.status,
        "currency": bill.currency,
        "covered_through": _plain(bill.covered_through),
        "lines": [{c: _plain(getattr(line, c)) for c in INVOICE_COLUMNS} for line in bill.lines],
        "totals": [
            {"account_id": t.account_id, "amount": _plain(t.amount), "currency": t.currency}
            for t in bill.totals
        ],
        "total": _plain(bill.total),
    }


def invoice_csv_rows(bill: Invoice) -> list[list[Any]]:
    """Lines, each account's total after its lines, then the invoice's total (kind column)."""
    head = [bill.period, bill.status]
    blank = [""] * (len(INVOICE_COLUMNS) - 2)
    rows: list[list[Any]] = []
    lines = lines_by_account(bill)
    for total in bill.totals:
        for line in lines.get(total.account_id, ()):
            values = [getattr(line, c) for c in INVOICE_COLUMNS]
            rows.append([*head, "line", *values, bill.currency])
        rows.append([*head, "account_total", total.account_id, *blank, total.amount, bill.currency])
    rows.append([*head, "total", "", *blank, bill.total, bill.currency])
    return rows


def lines_by_account(bill: Invoice) -> dict[str, list[InvoiceLine]]:
    """Each account's lines, in invoice order (a thousand accounts: no scan per account)."""
    grouped: dict[str, list[InvoiceLine]] = {}
    for line in bill.lines:
        grouped.setdefault(line.account_id, []).append(line)
    return grouped


def render_invoice(bill: Invoice, fmt: Format, console: Console) -> None:
    """What ``sieve pricing`` prints: every format carries the lines with their units,
    allowance and use, the totals, the currency and whether the invoice is a draft."""
    if fmt == "json":
        click.echo(json.dumps(invoice_document(bill), indent=2))
    elif fmt == "csv":
        click.echo(to_csv(INVOICE_CSV_COLUMNS, invoice_csv_rows(bill)), nl=False)
    else:
        for table in invoice_tables(bill):
            console.print(table)


def invoice_tables(bill: Invoice) -> list[Table]:
    """One table per account, then the total; narrow enough for an 80-column terminal with
    the packaged plan (long unit labels wrap inside their column)."""
    draft = " DRAFT" if bill.status == "draft" else ""
    through = (
        f", metering through {bill.covered_through}" if bill.covered_through is not None else ""
    )
    tables = []
    lines = lines_by_account(bill)
    for total in bill.totals:
        table = Table(
            title=f"Invoice{draft} {bill.period}: {total.account_id} ({bill.currency})",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
            show_footer=True,
        )
        table.add_column("item", footer="total", no_wrap=True)
        # The one column that wraps: a long unit label takes two lines, never an ellipsis.
        table.add_column("unit", ratio=1, min_width=10, overflow="fold")
        for name in ("used", "allowance", "billable", "price"):
            table.add_column(name, justify="right", no_wrap=True)
        table.add_column("amount", justify="right", no_wrap=True, footer=_money(total.amount))
        for line in lines.get(total.account_id, ()):
            band = f" ({line.band})" if line.band else ""
            table.add_row(
                line.metric,
                f"{line.unit}{band}",
                _quantity(line.used),
                _quantity(line.allowance),
                _quantity(line.billable),
                f"{line.unit_price:f}",
                _money(line.amount),
            )
        tables.append(table)
    summary = Table(box=None, pad_edge=False, show_header=False, title_justify="left")
    summary.add_column(justify="left")
    summary.add_column(justify="right")
    summary.add_row(
        f"Total{draft} {bill.period}, {len(bill.totals)} accounts{through}",
        f"{bill.currency} {_money(bill.total)}",
    )
    if draft:
        summary.add_row("DRAFT: the month is not closed; later days are missing", "")
    tables.append(summary)
    return tables


def _quantity(value: Decimal) -> str:
    """Thousands separated; whole numbers without a fraction (quantities are rounded)."""
    if value == value.to_integral_value():
        return f"{int(value):,}"
    return f"{value.normalize():,f}"


def _money(value: Decimal) -> str:
    return f"{value:,f}"
