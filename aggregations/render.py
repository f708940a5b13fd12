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
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from aggregations.pricing import Invoice

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


INVOICE_COLUMNS: Final = [
    "account_id",
    "metric",
    "band",
    "quantity",
    "included",
    "billable",
    "unit_price",
    "amount",
]


def render_invoice(bill: Invoice, fmt: Format, console: Console) -> None:
    """Invoice lines (and, as a table, the totals per account): what `sieve pricing` prints."""
    rows: list[list[Any]] = [[getattr(line, c) for c in INVOICE_COLUMNS] for line in bill.lines]
    if fmt != "table":
        render(INVOICE_COLUMNS, rows, fmt, console)
        return
    render(
        INVOICE_COLUMNS, rows, fmt, console, title=f"Invoice lines {bill.period} ({bill.currency})"
    )
    totals = [[t.account_id, t.currency, t.amount] for t in bill.totals]
    render(["account_id", "currency", "total"], totals, fmt, console, title="Totals")
