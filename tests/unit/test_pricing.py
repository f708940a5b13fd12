"""Pricing: exact to the cent with hand-computed usage, tiers, and clear plan errors."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregations.meters import default_meters, parse_meters
from aggregations.pricing import (
    PricePlan,
    PricePlanError,
    _metered,
    invoice,
    load_plan,
    parse_plan,
    period_bounds,
)

METRICS = tuple(m.name for m in default_meters())
# Units come from the meters (the packaged ones: requests per 1,000, bytes per GB).
PLAN = """\
currency = "EUR"

[metrics.requests]
included = "10"
unit_price = "0.015"

[metrics.download_bytes]
included = "10"
tiers = [
  { up_to = "100", unit_price = "0.08" },
  { unit_price = "0.05" },
]

[metrics.active_users]
aggregate = "max"
included = "2"
unit_price = "0.125"
"""


def _usage(rows: list[dict[str, object]]) -> pa.Table:
    full = [{"date": date(2026, 11, 1), **{m: 0 for m in METRICS}, **r} for r in rows]
    for row in full:
        row["session_seconds"] = Decimal(str(row["session_seconds"]))
    return pa.Table.from_pylist(full)


def test_invoice_exact_to_the_cent_with_tiers() -> None:
    # Unrounded quantities (quantity_rounding = "exact"): the cents alone are rounded.
    usage = _usage(
        [
            {
                "account_id": "A",
                "requests": 12_345,
                "download_bytes": 100_000_000_000,
                "active_users": 3,
            },
            {
                "account_id": "A",
                "date": date(2026, 11, 2),
                "requests": 3_000,
                "download_bytes": 50_500_000_000,
                "active_users": 7,
            },
            {"account_id": "B", "download_bytes": 5_000_000_000, "active_users": 1},
        ]
    )
    result = invoice(usage, parse_plan('quantity_rounding = "exact"\n' + PLAN), "2026-11")
    lines = {(l.account_id, l.metric, l.band): l for l in result.lines}  # noqa: E741
    # requests: 15.345 thousand, 10 included: 5.345 * 0.015 = 0.080175 -> 0.08
    req = lines[("A", "requests", "")]
    assert (req.quantity, req.included, req.billable, req.amount) == (
        Decimal("15.345"),
        Decimal("10"),
        Decimal("5.345"),
        Decimal("0.08"),
    )
    # downloads: 150.5 GB; 0-100 band: 10 free, 90 * 0.08 = 7.20; 100- band: 50.5 * 0.05
    # = 2.525, half-even -> 2.52 (half-up would say 2.53).
    low, high = lines[("A", "download_bytes", "0-100")], lines[("A", "download_bytes", "100-")]
    assert (low.quantity, low.included, low.billable, low.amount) == (
        Decimal("100"),
        Decimal("10"),
        Decimal("90"),
        Decimal("7.20"),
    )
    assert (high.quantity, high.billable, high.unit_price, high.amount) == (
        Decimal("50.5"),
        Decimal("50.5"),
        Decimal("0.05"),
        Decimal("2.52"),
    )
    # active users: the peak day (7), 2 included: 5 * 0.125 = 0.625 -> 0.62 (half-even)
    assert lines[("A", "active_users", "")].amount == Decimal("0.62")
    totals = {t.account_id: t.amount for t in result.totals}
    assert totals == {"A": Decimal("10.42"), "B": Decimal("0.00")}
    # B: 5 GB, all included, and no line for an unreached tier.
    assert ("B", "download_bytes", "100-") not in lines
    assert lines[("B", "download_bytes", "0-100")].billable == 0
    assert all(isinstance(l.amount, Decimal) for l in result.lines)  # noqa: E741


def test_totals_are_sums_of_rounded_lines() -> None:
    usage = _usage([{"account_id": "A", "requests": 10_333, "active_users": 3}])
    result = invoice(usage, parse_plan(PLAN), "2026-11")
    assert result.totals[0].amount == sum(l.amount for l in result.lines)  # noqa: E741


def test_packaged_plan_loads() -> None:
    plan = load_plan(None)
    assert plan.currency == "EUR"
    assert {m.metric for m in plan.metrics} <= set(METRICS)


@pytest.mark.parametrize(
    ("text", "line", "key", "reason"),
    [
        (
            'currency = "EUR"\n[metrics.requests]\nunit_price = 0.1\n',
            3,
            "metrics.requests.unit_price",
            "decimal string",
        ),
        ('currency = "EUR"\n[metrics.requests]\nunit_price = "0.1\n', 3, "(syntax)", ""),
        (
            'currency = "EUR"\n\n[metrics.pageviews]\nunit_price = "1"\n',
            3,
            "metrics.pageviews",
            "not a declared meter",
        ),
        ('currency = "EURO"\n[metrics.requests]\nunit_price = "1"\n', 1, "currency", "ISO 4217"),
        (
            'currency = "EUR"\n[metrics.requests]\nincluded = "5"\n'
            'tiers = [ { up_to = "3", unit_price = "1" }, { unit_price = "1" } ]\n',
            4,
            "metrics.requests.tiers[0].up_to",
            "greater than 5",
        ),
        (
            'currency = "EUR"\n[metrics.requests]\ntiers = [ { up_to = "3", unit_price = "1" } ]\n',
            3,
            "metrics.requests.tiers[0].up_to",
            "last tier",
        ),
        (
            'currency = "EUR"\n[metrics.requests]\nunit_price = "abc"\n',
            3,
            "metrics.requests.unit_price",
            "not a decimal",
        ),
        (
            'currency = "EUR"\n[metrics.requests]\nunit_price = "-1"\n',
            3,
            "metrics.requests.unit_price",
            ">= 0",
        ),
        (
            'currency = "EUR"\n[metrics.requests]\nunit_price = "1"\ncolour = "red"\n',
            4,
            "metrics.requests.colour",
            "unknown key",
        ),
        (
            'currency = "EUR"\n[metrics.requests]\nincluded = "1"\n',
            2,
            "metrics.requests",
            "exactly one",
        ),
        (
            'currency = "EUR"\n[metrics.requests]\nunit = "x"\nunit_price = "1"\n',
            3,
            "metrics.requests.unit",
            "declared once, with the meter: invoice_unit of [meters.requests]",
        ),
        (
            'currency = "EUR"\n[metrics.requests]\nunit_size = "10"\nunit_price = "1"\n',
            3,
            "metrics.requests.unit_size",
            "invoice_unit_size",
        ),
    ],
)
def test_malformed_plans_name_line_and_key(
    text: str, line: int | None, key: str, reason: str
) -> None:
    with pytest.raises(PricePlanError) as caught:
        parse_plan(text, "plan.toml")
    error = caught.value
    assert (error.key, error.line) == (key, line)
    assert reason in error.reason
    assert str(error).startswith("price plan plan.toml: ")


def test_a_plan_prices_the_meters_it_is_given() -> None:
    meters = parse_meters(
        '[meters.api_calls]\nevent = "request"\naggregation = "count"\n'
        'invoice_unit = "10 calls"\ninvoice_unit_size = "10"\n'
    )
    plan = parse_plan('currency = "EUR"\n[metrics.api_calls]\nunit_price = "1"\n', meters=meters)
    (price,) = plan.metrics
    assert (price.metric, price.unit, price.unit_size) == ("api_calls", "10 calls", Decimal(10))
    with pytest.raises(PricePlanError, match="not a declared meter; the meters file declares:"):
        parse_plan(PLAN, meters=meters)


def test_unknown_metric_points_at_its_table_header() -> None:
    text = 'currency = "EUR"\n\n[metrics.pageviews]\nunit_price = "1"\n'
    with pytest.raises(PricePlanError) as caught:
        parse_plan(text)
    assert "metrics.pageviews" in str(caught.value)


def test_unreadable_plan_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="cannot read"):
        load_plan(tmp_path / "missing.toml")


def test_period_bounds() -> None:
    assert period_bounds("2026-12") == (date(2026, 12, 1), date(2027, 1, 1))
    for bad in ("2026-13", "2026-1", "nov"):
        with pytest.raises(ValueError):
            period_bounds(bad)


# --- units, rounding, allowance and use on every line ------------------------------------------


def test_quantities_are_rounded_up_to_whole_billing_units_by_default() -> None:
    usage = _usage(
        [
            {"account_id": "A", "requests": 12_345, "download_bytes": 150_500_000_000},
            {"account_id": "A", "date": date(2026, 11, 2), "requests": 3_000, "active_users": 7},
        ]
    )
    result = invoice(usage, parse_plan(PLAN), "2026-11")
    lines = {(l.account_id, l.metric, l.band): l for l in result.lines}  # noqa: E741
    req = lines[("A", "requests", "")]
    # 15,345 requests priced per 1,000: 16 units (a started unit counts), 10 included.
    assert (req.unit, req.metered, req.used, req.allowance) == (
        "1,000 requests",
        Decimal(15_345),
        Decimal(16),
        Decimal(10),
    )
    assert (req.billable, req.amount) == (Decimal(6), Decimal("0.09"))  # 6 * 0.015 = 0.09
    # 150.5 GB: 151 units; the 100- band holds 51 of them, and every band line shows the
    # metric's use and allowance.
    high = lines[("A", "download_bytes", "100-")]
    assert (high.unit, high.used, high.allowance, high.quantity, high.amount) == (
        "GB",
        Decimal(151),
        Decimal(10),
        Decimal(51),
        Decimal("2.55"),
    )
    # The unit is the meter's invoice unit (the meters file), never the plan's.
    assert lines[("A", "active_users", "")].unit == "peak daily active user"
    assert all(line.used == line.used.to_integral_value() for line in result.lines)


@pytest.mark.parametrize(
    ("rounding", "expected"),
    [("up", Decimal(41)), ("half_even", Decimal(40)), ("exact", Decimal("40.149"))],
)
def test_quantity_rounding_modes(rounding: str, expected: Decimal) -> None:
    from aggregations.pricing import to_units

    plan = parse_plan(f'quantity_rounding = "{rounding}"\n' + PLAN)
    requests = next(m for m in plan.metrics if m.metric == "requests")
    assert to_units(Decimal(40_149), requests, plan.quantity_rounding) == expected
    assert to_units(Decimal(40_000), requests, plan.quantity_rounding) == Decimal(40)


def test_an_unknown_quantity_rounding_names_its_line() -> None:
    with pytest.raises(PricePlanError) as caught:
        parse_plan('quantity_rounding = "down"\n' + PLAN, "plan.toml")
    assert (caught.value.key, caught.value.line) == ("quantity_rounding", 1)


def _folded_row_by_row(usage: pa.Table, plan: PricePlan) -> dict[str, dict[str, Decimal]]:
    """The definition: every day's value as a Decimal, summed (or maxed) per account."""
    out: dict[str, dict[str, Decimal]] = {}
    for row in usage.to_pylist():
        account = out.setdefault(row["account_id"], {p.metric: Decimal(0) for p in plan.metrics})
        for price in plan.metrics:
            value = Decimal(row[price.metric])
            current = account[price.metric]
            account[price.metric] = (
                current + value if price.aggregate == "sum" else max(current, value)
            )
    return out


_BIG = 10**17  # near DECIMAL(18, 6)'s and BIGINT's limits: a month of them overflows neither


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "B", "C"]),
            st.integers(0, _BIG),
            st.integers(0, _BIG),
            st.integers(0, 10_000),
            st.decimals(0, Decimal(_BIG) / 10**6, places=6),
        ),
        max_size=40,
    )
)
def test_usage_folded_per_account_in_arrow_equals_the_decimal_fold(
    days: list[tuple[str, int, int, int, Decimal]],
) -> None:
    plan = parse_plan(PLAN + '\n[metrics.session_seconds]\nincluded = "0"\nunit_price = "0.001"\n')
    rows = [
        {
            "account_id": account,
            "requests": requests,
            "download_bytes": downloaded,
            "active_users": users,
            "session_seconds": seconds,
        }
        for account, requests, downloaded, users, seconds in days
    ]
    usage = _usage(rows or [{"account_id": "A"}]).slice(0, len(rows))
    decimal = pa.field("session_seconds", pa.decimal128(18, 6))  # the meter's published type
    index = usage.schema.get_field_index("session_seconds")
    usage = usage.cast(usage.schema.set(index, decimal))
    assert _metered(usage, plan) == _folded_row_by_row(usage, plan)
