"""Meters declared in a file (issue 13 item 2): the packaged file is today's nine metrics, a
meter is checked against the facts schema when it loads, and a meter added by TOML alone is
metered, corrected and priced like the packaged ones."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from click.testing import CliRunner

from aggregations.catalog import open_catalog
from aggregations.commands import pricing_command, publish_command
from aggregations.meters import Meter, MetersError, default_meters, parse_meters
from aggregations.publish import publish
from schemas.arrow import FACTS
from tests.fixtures.facts import DEFAULT_PRIVACY, fact, facts_table, write_committed_facts

PACKAGED = resources.files("aggregations").joinpath("meters.toml").read_text("utf-8")
OCTOBER = datetime(2026, 10, 14, 9, tzinfo=UTC)
GRACE = timedelta(hours=1)
NOW = datetime(2026, 11, 5, tzinfo=UTC)


def test_the_packaged_meters_are_the_nine_metrics_of_metering() -> None:
    meters = {m.name: m for m in default_meters()}
    assert list(meters) == [
        "requests",
        "page_views",
        "sessions",
        "session_seconds",
        "uploads",
        "upload_bytes",
        "downloads",
        "download_bytes",
        "active_users",
    ]
    described = {
        name: (m.events, m.aggregation, m.column, m.sql_type) for name, m in meters.items()
    }
    assert described["sessions"] == (("login",), "count", None, "BIGINT")
    assert described["session_seconds"] == (("logout",), "sum", "session_seconds", "DECIMAL(18, 3)")
    assert described["download_bytes"] == (("download",), "sum", "bytes", "BIGINT")
    assert described["active_users"] == ((), "unique_count", "subject_key", "BIGINT")
    assert (meters["requests"].invoice_unit, meters["requests"].invoice_unit_size) == (
        "1,000 requests",
        Decimal(1000),
    )


@pytest.mark.parametrize(
    ("body", "key", "line", "reason"),
    [
        (
            'event = "upload"\naggregation = "sum"\nproperty = "size"\n',
            "meters.m.property",
            4,
            "'size' is not a column of the facts",
        ),
        (
            'event = "upload"\naggregation = "sum"\nproperty = "country"\n',
            "meters.m.property",
            4,
            "a sum needs a numeric column; country is string",
        ),
        ('event = "purchase"\naggregation = "count"\n', "meters.m.event", 2, "unknown event type"),
        ('event = "upload"\naggregation = "median"\n', "meters.m.aggregation", 3, "one of count"),
        (
            'event = "upload"\naggregation = "count"\nproperty = "bytes"\n',
            "meters.m.property",
            4,
            "has no property",
        ),
        (
            'event = "upload"\naggregation = "sum"\nproperty = "bytes"\ndecimals = 2\n',
            "meters.m.decimals",
            5,
            "fractional property",
        ),
        (
            'event = "*"\naggregation = "count"\ngroup_by = ["subject_key"]\n',
            "meters.m.group_by",
            4,
            "not a dimension",
        ),
        (
            'event = "upload"\naggregation = "count"\ncolour = "red"\n',
            "meters.m.colour",
            4,
            "unknown key",
        ),
        (
            'event = "upload"\naggregation = "count"\ninvoice_unit_size = "0"\n',
            "meters.m.invoice_unit_size",
            4,
            "greater than 0",
        ),
        ('aggregation = "count"\n', "meters.m.event", 1, "missing"),
    ],
)
def test_a_bad_meter_is_named_with_its_key_and_line(
    body: str, key: str, line: int, reason: str
) -> None:
    with pytest.raises(MetersError) as caught:
        parse_meters("[meters.m]\n" + body, "meters.toml")
    error = caught.value
    assert (error.key, error.line) == (key, line), str(error)
    assert reason in error.reason
    assert str(error).startswith("meters file meters.toml: ")


def test_a_meter_name_must_be_a_column_name() -> None:
    for bad in ("Requests", "hour", "two words", "1st"):
        with pytest.raises(MetersError, match="a meter name is lower case"):
            parse_meters(f'[meters."{bad}"]\nevent = "request"\naggregation = "count"\n')


def test_meters_are_checked_against_the_facts_schema_they_are_given() -> None:
    text = '[meters.revenue]\nevent = "payment"\naggregation = "sum"\nproperty = "amount"\n'
    with pytest.raises(MetersError, match=r"meters\.revenue\.property: 'amount' is not a column"):
        parse_meters(text)
    # Facts that grow a metric property (custom events) validate the same file.
    grown = FACTS.append(pa.field("amount", pa.float64()))
    (revenue,) = parse_meters(text, facts=grown)
    assert (revenue.column, revenue.decimals, revenue.sql_type) == ("amount", 3, "DECIMAL(18, 3)")


def test_a_whole_number_sum_of_a_float_property_rounds_each_value_whatever_the_order() -> None:
    # Summed as floats, 1e16 + 1 - 1e16 is 0 or 1 depending on the order of the rows.
    text = (
        '[meters.revenue]\nevent = "payment"\naggregation = "sum"\nproperty = "amount"\n'
        "decimals = 0\n"
    )
    (revenue,) = parse_meters(text, facts=FACTS.append(pa.field("amount", pa.float64())))
    assert revenue.sql_type == "BIGINT"
    assert Meter.from_record(revenue.to_record()) == revenue
    orders = ([1e16, 1.0, -1e16], [1e16, -1e16, 1.0], [1.0, 1e16, -1e16])
    assert {_sum_of(revenue, amounts) for amounts in orders} == {Decimal(1)}
    # Each value is rounded before the sum: 0.6 three times is 3, not round(1.8) = 2.
    assert _sum_of(revenue, [0.6, 0.6, 0.6]) == Decimal(3)


def _sum_of(meter: Meter, amounts: list[float]) -> object:
    connection = duckdb.connect()
    payments = pa.table({"type": ["payment"] * len(amounts), "amount": amounts})
    connection.register("payments", payments)
    (value,) = connection.sql(f"SELECT {meter.value_sql()} FROM payments").fetchall()
    return value[0]


# --- a meter by TOML alone -----------------------------------------------------------------------

NEW_METERS = """
[meters.payments]
description = "payment transactions"
event = "payment"
aggregation = "count"
unit = "payment"

[meters.largest_upload]
event = "upload"
aggregation = "max"
property = "bytes"
unit = "byte"
invoice_unit = "MB"
invoice_unit_size = "1000000"

[meters.requests_by_country]
event = "request"
aggregation = "count"
group_by = ["country", "device_class"]
"""
NEW_PLAN = """
currency = "EUR"
quantity_rounding = "up"

[metrics.payments]
unit_price = "0.25"

[metrics.largest_upload]
aggregate = "max"
unit_price = "0.01"
"""


def _october(rows: list[dict[str, object]], offset: int, root: Path) -> None:
    write_committed_facts(root, facts_table(rows), first_offset=offset)


def _published(root: Path, sql: str) -> list[tuple[object, ...]]:
    return open_catalog(str(root), role="billing").sql(sql).fetchall()


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    meters, plan = tmp_path / "meters.toml", tmp_path / "plan.toml"
    meters.write_text(PACKAGED + NEW_METERS)
    plan.write_text(NEW_PLAN)
    data = tmp_path / "data"
    monkeypatch.setenv("SIEVE_DATA_ROOT", str(data))
    monkeypatch.setenv("SIEVE_METERS_FILE", str(meters))
    monkeypatch.setenv("SIEVE_PRICE_PLAN_FILE", str(plan))
    return data


def test_a_meter_added_by_toml_alone_is_metered_and_priced_with_late_events(files: Path) -> None:
    on_time = [
        fact(OCTOBER, type="payment", event_key="pay-1"),
        fact(OCTOBER, type="payment", event_key="pay-2", country="DE"),
        fact(OCTOBER + timedelta(days=1), type="payment", event_key="pay-3"),
        fact(OCTOBER, type="upload", bytes=2_000_000, event_key="up-1"),
        fact(OCTOBER + timedelta(days=2), type="upload", bytes=5_000_000, event_key="up-2"),
        fact(OCTOBER, type="request", country="DE", device_class="mobile", event_key="rq-1"),
        fact(OCTOBER, type="request", country="FR", event_key="rq-2"),
        fact(OCTOBER, type="request", country="FR", event_key="rq-3"),
    ]
    _october(on_time, 0, files)
    first = CliRunner().invoke(publish_command, ["--no-catalog", "--close-through", "2026-11-01"])
    assert first.exit_code == 0, first.output
    assert _published(files, "SELECT sum(payments), max(largest_upload) FROM metering_daily") == [
        (3, 5_000_000)
    ]
    # Late: a fourth payment and a bigger upload, both on 14 October, a closed day.
    late = [
        fact(OCTOBER, type="payment", event_key="pay-4"),
        fact(OCTOBER, type="upload", bytes=7_500_000, event_key="up-3"),
        fact(OCTOBER, type="request", country="DE", device_class="mobile", event_key="rq-4"),
    ]
    _october(late, 100, files)
    second = CliRunner().invoke(publish_command, ["--no-catalog"])
    assert second.exit_code == 0, second.output
    fixes = _published(
        files,
        "SELECT payments, largest_upload FROM metering_corrections WHERE grain = 'day'",
    )
    # Deltas of 14 October: one more payment; its largest upload went from 2 MB to 7.5 MB.
    assert fixes == [(1, 5_500_000)]
    priced = CliRunner().invoke(pricing_command, ["--period", "2026-10", "--format", "json"])
    assert priced.exit_code == 0, priced.output
    lines = {line["metric"]: line for line in json.loads(priced.output)["lines"]}
    # 4 payments at 0.25; the peak day's largest upload, 7.5 MB, is 8 started MB at 0.01.
    assert (lines["payments"]["metered"], lines["payments"]["amount"]) == ("4", "1.00")
    largest = lines["largest_upload"]
    assert (largest["unit"], largest["metered"], largest["used"], largest["amount"]) == (
        "MB",
        "7500000",
        "8",
        "0.08",
    )
    # The breakdown: per country and per device class, beside the total.
    by = _published(
        files,
        "SELECT dimension, dimension_value, value FROM metering_values"
        " WHERE meter = 'requests_by_country' AND grain = 'day' ORDER BY ALL",
    )
    assert by == [
        ("country", "DE", 2),
        ("country", "FR", 2),
        ("device_class", "desktop", 2),
        ("device_class", "mobile", 2),
        (None, None, 4),
    ]


def test_a_meter_added_later_is_metered_over_the_history_and_a_changed_one_corrected(
    tmp_path: Path,
) -> None:
    rows = [
        fact(OCTOBER, type="payment", event_key="pay-1"),
        fact(OCTOBER + timedelta(days=1), type="payment", event_key="pay-2"),
        fact(OCTOBER + timedelta(days=1), type="upload", event_key="up-1"),
        fact(OCTOBER + timedelta(days=3), event_key="closer"),
    ]
    write_committed_facts(tmp_path, facts_table(rows), first_offset=0)
    packaged = default_meters()
    publish(str(tmp_path), NOW, GRACE, DEFAULT_PRIVACY, meters=packaged)
    payments = parse_meters('[meters.payments]\nevent = "payment"\naggregation = "count"\n')
    added = publish(str(tmp_path), NOW, GRACE, DEFAULT_PRIVACY, meters=(*packaged, *payments))
    assert added.remetered == ("payments",) and added.facts == 0
    assert added.daily_corrections == 0  # the new meter's values are base rows, not fixes
    daily = "SELECT date, payments FROM metering_daily ORDER BY date"
    assert [n for _, n in _published(tmp_path, daily)] == [1, 1]  # the closer's day is open
    # Its definition changes: every day is metered again, the differences are corrections.
    changed = parse_meters(
        '[meters.payments]\nevent = ["payment", "upload"]\naggregation = "count"\n'
    )
    report = publish(str(tmp_path), NOW, GRACE, DEFAULT_PRIVACY, meters=(*packaged, *changed))
    assert report.remetered == ("payments",) and report.daily_corrections == 1
    assert [n for _, n in _published(tmp_path, daily)] == [1, 2]
    again = publish(str(tmp_path), NOW, GRACE, DEFAULT_PRIVACY, meters=(*packaged, *changed))
    assert again.remetered == () and again.rows_written == 0
