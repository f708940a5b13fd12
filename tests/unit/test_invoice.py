"""Invoices a finance team can read (issue 12, item 1): units, allowance and use on every
line, totals and currency in every format, 80 columns, closed months, drafts and errors."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from rich.console import Console

from aggregations.manifest import Manifest, metering_key, metering_path, write_manifest
from aggregations.meters import default_meters
from aggregations.pricing import (
    Invoice,
    NoMeteringError,
    PeriodNotClosedError,
    invoice,
    load_plan,
    price_period,
    published_watermark,
)
from aggregations.render import INVOICE_CSV_COLUMNS, Format, invoice_document, render_invoice
from aggregations.schemas import METERING
from aggregations.storage import resolve_root, write_parquet_atomic

METRICS = tuple(m.name for m in default_meters())

GRACE = timedelta(hours=1)
PLAN = load_plan(None)  # the packaged plan: what a user sees first


def _day(account: str, day: date, scale: int = 1, **metrics: int) -> dict[str, object]:
    row: dict[str, object] = {"date": day, "account_id": account, **{m: 0 for m in METRICS}}
    row.update(
        requests=40_149 * scale,
        page_views=12_000 * scale,
        sessions=3_400 * scale,
        upload_bytes=61_100_399_754 * scale,
        download_bytes=150_500_000_000 * scale,
        active_users=120 * scale,
    )
    row.update(metrics)
    row["session_seconds"] = Decimal("12.5")
    return row


def _bill(status: str = "final") -> Invoice:
    rows = [
        _day("acct-1", date(2026, 10, 3)),
        _day("acct-0002-with-a-long-name", date(2026, 10, 4), scale=300),
    ]
    return invoice(
        pa.Table.from_pylist(rows),
        PLAN,
        "2026-10",
        status="draft" if status == "draft" else "final",
        covered_through=date(2026, 10, 31),
    )


def _printed(
    bill: Invoice, fmt: Format, capsys: pytest.CaptureFixture[str], width: int = 80
) -> str:
    """What ``sieve pricing`` prints: tables through the console, CSV and JSON to stdout."""
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False, color_system=None)
    capsys.readouterr()
    render_invoice(bill, fmt, console)
    return out.getvalue() + capsys.readouterr().out


# --- every format ------------------------------------------------------------------------------


def test_json_carries_units_allowance_use_totals_and_currency(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bill = _bill()
    document = json.loads(_printed(bill, "json", capsys))
    assert (document["period"], document["status"], document["currency"]) == (
        "2026-10",
        "final",
        "EUR",
    )
    requests = next(
        line
        for line in document["lines"]
        if line["metric"] == "requests" and line["account_id"] == "acct-1"
    )
    # 40,149 requests priced per 1,000: 41 units; the plan allows 100.
    assert {k: requests[k] for k in ("unit", "metered", "used", "allowance", "amount")} == {
        "unit": "1,000 requests",
        "metered": "40149",
        "used": "41",
        "allowance": "100",
        "amount": "0.00",
    }
    totals = {t["account_id"]: Decimal(t["amount"]) for t in document["totals"]}
    assert all(t["currency"] == "EUR" for t in document["totals"])
    for account, total in totals.items():
        lines = [Decimal(x["amount"]) for x in document["lines"] if x["account_id"] == account]
        assert sum(lines) == total
    assert Decimal(document["total"]) == sum(totals.values()) == bill.total
    assert document == invoice_document(bill)


def test_csv_carries_totals_currency_and_status_on_every_row(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bill = _bill()
    rows = list(csv.DictReader(io.StringIO(_printed(bill, "csv", capsys))))
    assert list(rows[0]) == INVOICE_CSV_COLUMNS
    assert {row["currency"] for row in rows} == {"EUR"}
    assert {row["status"] for row in rows} == {"final"}
    lines = [row for row in rows if row["kind"] == "line"]
    assert len(lines) == len(bill.lines)
    assert all(row["unit"] and row["used"] and row["allowance"] for row in lines)
    account_totals = {
        r["account_id"]: Decimal(r["amount"]) for r in rows if r["kind"] == "account_total"
    }
    assert account_totals == {t.account_id: t.amount for t in bill.totals}
    (grand,) = [row for row in rows if row["kind"] == "total"]
    assert Decimal(grand["amount"]) == sum(account_totals.values())
    assert rows[-1] is grand


def test_the_table_reads_in_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    text = _printed(_bill(), "table", capsys, width=80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text  # nothing cut: a long unit label wraps instead
    for header in ("item", "unit", "used", "allowance", "billable", "price", "amount"):
        assert header in text
    assert "1,000 requests" in text and "(100-)" in text  # unit, and the tier's band
    assert "12,045" in text  # used, in billing units, thousands separated
    assert "EUR" in text and "total" in text
    # Every line's amount is printed, and so is each account's total.
    bill = _bill()
    for total in bill.totals:
        assert f"{total.amount:,f}" in text
    assert f"EUR {bill.total:,f}" in text


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_a_draft_is_marked_in_every_format(fmt: Format, capsys: pytest.CaptureFixture[str]) -> None:
    final, draft = _printed(_bill(), fmt, capsys), _printed(_bill("draft"), fmt, capsys)
    assert "draft" not in final.lower()
    assert "draft" in draft.lower()
    if fmt == "json":
        assert json.loads(draft)["status"] == "draft"
    if fmt == "csv":
        assert {row["status"] for row in csv.DictReader(io.StringIO(draft))} == {"draft"}


# --- closed months, drafts and errors ----------------------------------------------------------


def _catalog(rows: list[dict[str, object]]) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    table = (
        pa.Table.from_pylist(rows)
        if rows
        else pa.Table.from_pylist([_day("x", date(2000, 1, 1))]).slice(0, 0)
    )
    connection.register("metering_daily", table)
    return connection


OCTOBER = [_day("acct-1", date(2026, 10, d)) for d in (1, 15, 31)]
CLOSED = datetime(2026, 11, 1, 1, tzinfo=UTC) + GRACE  # October 31 + 1 day + grace
OPEN = datetime(2026, 10, 20, 5, tzinfo=UTC)


def test_a_closed_month_is_final() -> None:
    bill = price_period(_catalog(OCTOBER), PLAN, "2026-10", watermark=CLOSED, grace=GRACE)
    assert bill.status == "final" and bill.covered_through == date(2026, 10, 31)
    assert bill.totals[0].account_id == "acct-1"


def test_a_month_that_is_not_closed_is_refused_with_the_reason_or_priced_as_a_draft() -> None:
    with pytest.raises(PeriodNotClosedError, match=r"2026-10 is not closed.*through 2026-10-19"):
        price_period(_catalog(OCTOBER), PLAN, "2026-10", watermark=OPEN, grace=GRACE)
    draft = price_period(
        _catalog(OCTOBER), PLAN, "2026-10", watermark=OPEN, grace=GRACE, draft=True
    )
    assert draft.status == "draft" and draft.covered_through == date(2026, 10, 19)
    # A month far ahead is not closed either, and nothing published is said so.
    with pytest.raises(PeriodNotClosedError, match="for no day yet"):
        price_period(_catalog([]), PLAN, "2031-01", watermark=None, grace=GRACE)


def test_an_unknown_account_and_an_empty_period_are_errors_that_say_so() -> None:
    catalog = _catalog(OCTOBER)
    with pytest.raises(NoMeteringError, match="unknown account 'nope'"):
        price_period(catalog, PLAN, "2026-10", watermark=CLOSED, grace=GRACE, account_id="nope")
    with pytest.raises(NoMeteringError, match="no metering published in 2026-09"):
        price_period(catalog, PLAN, "2026-09", watermark=CLOSED, grace=GRACE)
    with pytest.raises(NoMeteringError, match="for account 'acct-1' in 2026-09"):
        price_period(catalog, PLAN, "2026-09", watermark=CLOSED, grace=GRACE, account_id="acct-1")
    with pytest.raises(NoMeteringError):  # a draft of nothing is still nothing
        price_period(catalog, PLAN, "2026-12", watermark=CLOSED, grace=GRACE, draft=True)


# --- the command ---------------------------------------------------------------------------------


def _publish(root: Path, rows: list[dict[str, object]], mark: datetime) -> None:
    """Metering as `sieve publish` leaves it: long rows in a file the manifest lists, with
    the run's watermark and meters."""
    meters = default_meters()
    long = [
        {
            "grain": "day",
            "date": row["date"],
            "hour": None,
            "account_id": row["account_id"],
            "meter": meter.name,
            "dimension": None,
            "dimension_value": None,
            "value": Decimal(str(row[meter.name])),
            "is_correction": False,
            "publish_run": f"r-{mark:%d%H}",
            "watermark": mark,
            "published_at": mark,
        }
        for row in rows
        for meter in meters
    ]
    data = resolve_root(str(root))
    name = metering_path("day", date(2026, 10, 1), f"r-{mark:%d%H}")
    write_parquet_atomic(data, name, pa.Table.from_pylist(long, schema=METERING))
    manifest = Manifest(
        watermark=mark,
        metering={metering_key("day", date(2026, 10, 1)): name},
        meters=[m.to_record() for m in meters],
        definitions={m.name: m.definition for m in meters},
    )
    write_manifest(data, manifest)


def _sieve_pricing(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SIEVE_")},
        "SIEVE_DATA_ROOT": str(root),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "pricing", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sieve_pricing_exit_codes(tmp_path: Path) -> None:
    _publish(tmp_path, OCTOBER[:2], OPEN)
    assert published_watermark(str(tmp_path)) == OPEN

    refused = _sieve_pricing(tmp_path, "--period", "2026-10")
    assert refused.returncode == 3
    assert "2026-10 is not closed" in refused.stderr and "--draft" in refused.stderr
    assert refused.stdout == ""

    draft = _sieve_pricing(tmp_path, "--period", "2026-10", "--draft", "--format", "json")
    assert draft.returncode == 0, draft.stderr
    assert json.loads(draft.stdout)["status"] == "draft"

    unknown = _sieve_pricing(tmp_path, "--period", "2026-10", "--draft", "--account", "nope")
    assert unknown.returncode == 4 and "unknown account 'nope'" in unknown.stderr

    _publish(tmp_path, OCTOBER, CLOSED)
    final = _sieve_pricing(tmp_path, "--period", "2026-10")
    assert final.returncode == 0, final.stderr
    assert "Invoice 2026-10: acct-1 (EUR)" in final.stdout and "DRAFT" not in final.stdout
    empty = _sieve_pricing(tmp_path, "--period", "2026-09")
    assert empty.returncode == 4 and "no metering published in 2026-09" in empty.stderr
