"""Invoice lines priced column-wise (aggregations.invoice_lines) equal the line-by-line
Decimal reference (pricing.invoice_line_by_line) for any plan and usage, every field and
its printed form; and the boundaries of rounding and tiers, computed by hand."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregations.invoice_lines import InvoiceLine
from aggregations.price_plan import MetricPrice, PricePlan, Tier
from aggregations.pricing import Invoice, invoice, invoice_line_by_line

INTEGER_METERS = ("m0", "m1", "m2")
DECIMAL_METER = "f0"  # fractional usage: seconds at the millisecond, bytes by a ratio
METERS = (*INTEGER_METERS, DECIMAL_METER)
DECIMAL_TYPE = pa.decimal128(18, 3)
# A day of a meter: zero, small, around a unit, and huge (a month of them fits int64).
_HUGE = 2**63 // 64
day_values = st.one_of(
    st.just(0),
    st.integers(0, 2_000),
    st.integers(999_000_000, 1_001_000_000),
    st.integers(0, _HUGE),
    st.integers(-1_000, -1),  # a correction larger than the base: negative usage
)
fractional = st.decimals(0, Decimal(10**14), places=3)


def decimals(low: int, high: int, places: int) -> st.SearchStrategy[Decimal]:
    return st.decimals(low, high, places=places, allow_nan=False, allow_infinity=False)


whole_or_not = st.one_of(
    st.integers(0, 10_000).map(Decimal),  # whole: priced column-wise
    decimals(0, 10_000, 1),  # "100.5": priced by the reference
)
prices = st.one_of(
    decimals(0, 10, 4),
    st.sampled_from([Decimal("0.125"), Decimal("0.005"), Decimal("123456789.123456789")]),
)
unit_sizes = st.sampled_from(
    [Decimal(1), Decimal(1000), Decimal(10**9), Decimal(3600), Decimal("0.5"), Decimal("2.5")]
)


@st.composite
def metric_prices(draw: st.DrawFn, metric: str) -> MetricPrice:
    included = draw(whole_or_not)
    bounds = sorted(set(draw(st.lists(whole_or_not, max_size=3))))
    bounds = [b for b in bounds if b > included]
    tiers = [Tier(b, draw(prices)) for b in bounds] + [Tier(None, draw(prices))]
    aggregate = draw(st.sampled_from(["sum", "max"]))
    return MetricPrice(
        metric, f"{metric} units", draw(unit_sizes), aggregate, included, tuple(tiers)
    )


@st.composite
def plans(draw: st.DrawFn) -> PricePlan:
    metrics = draw(st.lists(st.sampled_from(METERS), min_size=1, max_size=4, unique=True))
    return PricePlan(
        "EUR",
        draw(st.sampled_from([Decimal("0.01"), Decimal("1"), Decimal("0.001"), Decimal("1E+1")])),
        tuple(draw(metric_prices(m)) for m in metrics),
        draw(st.sampled_from(["up", "half_even", "exact"])),
    )


@st.composite
def usages(draw: st.DrawFn) -> pa.Table:
    days = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["A", "B", "c", "é", "acct-10", "acct-9"]),
                *(day_values for _ in INTEGER_METERS),
                fractional,
            ),
            min_size=1,
            max_size=30,
        )
    )
    columns: dict[str, Any] = {"account_id": pa.array([d[0] for d in days])}
    for index, name in enumerate(INTEGER_METERS, start=1):
        columns[name] = pa.array([d[index] for d in days], pa.int64())
    columns[DECIMAL_METER] = pa.array([d[-1] for d in days], DECIMAL_TYPE)
    return pa.table(columns)


def printed(bill: Invoice) -> list[list[str]]:
    """Every value of every line and total as CSV and JSON print it, and its exponent."""
    rows = [
        [v if isinstance(v, str) else f"{v:f} {v.as_tuple()}" for v in _fields(line)]
        for line in bill.lines
    ]
    rows += [[t.account_id, f"{t.amount:f} {t.amount.as_tuple()}"] for t in bill.totals]
    return rows


def _fields(line: InvoiceLine) -> list[Any]:
    return [getattr(line, name) for name in line.__struct_fields__]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(usages(), plans())
def test_column_wise_lines_equal_the_reference(usage: pa.Table, plan: PricePlan) -> None:
    ours = invoice(usage, plan, "2026-11")
    reference = invoice_line_by_line(usage, plan, "2026-11")
    assert ours == reference
    assert printed(ours) == printed(reference)
    assert ours.total == reference.total


def _flat(included: str, price: str, size: int = 1000, *tiers: Tier) -> MetricPrice:
    return MetricPrice(
        "m0", "1,000 requests", Decimal(size), "sum", Decimal(included),
        tiers or (Tier(None, Decimal(price)),),
    )  # fmt: skip


def _lines(values: list[int], price: MetricPrice, rounding: str = "up") -> list[InvoiceLine]:
    plan = PricePlan("EUR", Decimal("0.01"), (price,), rounding)  # type: ignore[arg-type]
    usage = pa.table({"account_id": ["A"] * len(values), "m0": pa.array(values, pa.int64())})
    bill = invoice(usage, plan, "2026-11")
    assert bill == invoice_line_by_line(usage, plan, "2026-11")
    return list(bill.lines)


@pytest.mark.parametrize(
    ("requests", "rounding", "units"),
    [
        (40_000, "up", 40),  # a whole number of units: not one more
        (40_001, "up", 41),  # one request into the next unit: one unit more
        (39_999, "up", 40),
        (0, "up", 0),
        (40_500, "half_even", 40),  # a tie goes to the even unit
        (41_500, "half_even", 42),
        (40_501, "half_even", 41),
        (40_499, "half_even", 40),
    ],
)
def test_usage_rounds_to_the_right_unit(requests: int, rounding: str, units: int) -> None:
    # Split over two days: the period's sum is what is rounded, not each day.
    (line,) = _lines([requests // 2, requests - requests // 2], _flat("0", "1"), rounding)
    assert (line.used, line.billable, line.amount) == (units, units, Decimal(units))
    assert f"{line.amount:f}" == f"{units}.00"


def test_allowance_and_tiers_cut_at_their_bounds() -> None:
    tiers = (Tier(Decimal(100), Decimal("0.5")), Tier(Decimal(300), Decimal("0.25")))
    tiered = _flat("10", "0", 1000, *tiers, Tier(None, Decimal("0.125")))

    def bands(units: int) -> list[tuple[str, int, int, int, Decimal]]:
        return [
            (line.band, int(line.quantity), int(line.included), int(line.billable), line.amount)
            for line in _lines([units * 1000], tiered)
        ]

    # 10 units: all free, one line; 11: one billable unit.
    assert bands(10) == [("0-100", 10, 10, 0, Decimal("0.00"))]
    assert bands(11) == [("0-100", 11, 10, 1, Decimal("0.50"))]
    # Exactly the first bound: no line for the next band; one more: a line of one unit.
    assert bands(100) == [("0-100", 100, 10, 90, Decimal("45.00"))]
    assert bands(101) == [
        ("0-100", 100, 10, 90, Decimal("45.00")),
        ("100-300", 1, 0, 1, Decimal("0.25")),
    ]
    assert bands(301) == [
        ("0-100", 100, 10, 90, Decimal("45.00")),
        ("100-300", 200, 0, 200, Decimal("50.00")),
        ("300-", 1, 0, 1, Decimal("0.12")),  # 0.125: half-even to the cent
    ]
    assert bands(303)[-1][-1] == Decimal("0.38")  # 0.375 -> 0.38 (even)


def test_an_unsigned_sum_past_int64_is_priced_exactly() -> None:
    price = _flat("0", "0.01")
    plan = PricePlan("EUR", Decimal("0.01"), (price,))
    usage = pa.table({"account_id": ["A", "A"], "m0": pa.array([2**63 - 5] * 2, pa.uint64())})
    (line,) = invoice(usage, plan, "2026-11").lines
    assert line.metered == 2 * (2**63 - 5) and line.used == -(-int(line.metered) // 1000)
    assert invoice(usage, plan, "2026-11") == invoice_line_by_line(usage, plan, "2026-11")
