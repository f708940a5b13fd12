"""The DuckDB catalogs over real published files: exact current metering for billing,
noisy analytics with their intervals for analysts, and only the role's published data."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from aggregations.catalog import SPECS, default_catalog_path, open_catalog
from aggregations.pricing import invoice, parse_plan, period_usage
from aggregations.publish import ensure_layout, publish
from aggregations.storage import resolve_root
from tests.fixtures.facts import DEFAULT_PRIVACY, fact, facts_table, write_committed_facts

DAY = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 10, tzinfo=UTC)
GRACE = timedelta(hours=1)


def _traffic() -> list[dict[str, object]]:
    rows = [
        fact(
            DAY + timedelta(hours=h),
            type=t,
            subject_key=f"p{p}",
            bytes=1_000_000_000,
            country="FR" if p < 15 else "LU",
            account_id="acct-1",
        )
        for p in range(17)
        for h in (1, 2)
        for t in ("download", "login")
    ]
    return [*rows, fact(DAY + timedelta(days=1, hours=5), subject_key="x")]


@pytest.fixture
def published(tmp_path: Path) -> Path:
    write_committed_facts(tmp_path, facts_table(_traffic()), first_offset=0)
    publish(str(tmp_path), NOW, GRACE, DEFAULT_PRIVACY)
    late = [
        fact(
            DAY + timedelta(hours=1),
            type="download",
            subject_key="late",
            bytes=5,
            event_key="late-1",
        )
    ]
    write_committed_facts(tmp_path, facts_table(late), first_offset=1000)
    publish(str(tmp_path), NOW, GRACE, DEFAULT_PRIVACY)
    return tmp_path


def test_metering_views_show_the_exact_current_value(published: Path) -> None:
    catalog = open_catalog(str(published), role="billing")
    hour1 = catalog.execute(
        "SELECT downloads, download_bytes, active_users, corrections FROM metering_hourly"
        " WHERE hour = ? AND account_id = 'acct-1'",
        [DAY + timedelta(hours=1)],
    ).fetchall()
    assert hour1 == [(18, 17_000_000_005, 18, 1)]
    daily = catalog.execute(
        "SELECT date, sessions, download_bytes, active_users FROM metering_daily"
    ).fetchall()
    assert daily == [(date(2026, 11, 1), 34, 34_000_000_005, 18)]
    fixes = catalog.execute(
        "SELECT grain, downloads, download_bytes, active_users FROM metering_corrections"
        " ORDER BY grain"
    ).fetchall()
    assert fixes == [("day", 1, 5, 1), ("hour", 1, 5, 1)]


def test_analytics_views_sum_batches_with_their_noise(published: Path) -> None:
    # The input is complete through 3 November: 1 November's late slot falls due.
    publish(str(published), NOW, GRACE, DEFAULT_PRIVACY, close_through=DAY + timedelta(days=2))
    catalog = open_catalog(str(published), role="analyst")
    cells = catalog.sql(
        "SELECT batch, events, events_sd FROM analytics_cells"
        " WHERE grain = 'day' AND dimension = 'total' AND date = DATE '2026-11-01'"
        " ORDER BY batch"
    ).fetchall()
    # Batch 0 at the close; the late fact waited for the late slot.
    assert [batch for batch, _, _ in cells] == [0, 1]
    ((events, sd, low, high, batches),) = catalog.sql(
        "SELECT events, events_sd, events_low, events_high, batches FROM analytics_daily"
        " WHERE date = DATE '2026-11-01' AND dimension = 'total'"
    ).fetchall()
    assert batches == 2 and events == sum(e for _, e, _ in cells)
    # Noise variances add; the interval is +- 1.96 sd, clipped at 0.
    assert sd == pytest.approx(sum(s * s for _, _, s in cells) ** 0.5, abs=0.05)
    assert low == max(0, round(events - 1.96 * sd)) and high == round(events + 1.96 * sd)
    hours = catalog.sql(
        "SELECT count(*), min(batches) FROM analytics_hourly WHERE date = DATE '2026-11-01'"
    ).fetchall()
    assert hours == [(24, 2)]


def test_each_role_sees_its_views_only(published: Path) -> None:
    for role, spec in SPECS.items():
        catalog = open_catalog(str(published), role=role, lock_down=True)
        names = {
            row[0]
            for row in catalog.sql("SELECT table_name FROM information_schema.tables").fetchall()
        }
        assert names == set(spec.views)


def test_lock_down_reads_nothing_else(published: Path) -> None:
    catalog = open_catalog(str(published), role="billing", lock_down=True)
    facts_glob = f"{published}/facts/**/*.parquet"
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        catalog.execute("SELECT count(*) FROM read_parquet(?)", [facts_glob]).fetchall()
    with pytest.raises(duckdb.Error):
        catalog.execute("SET enable_external_access = true")


def test_persistent_catalog_file_works_from_a_plain_duckdb(
    published: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = default_catalog_path(str(published), "billing")
    open_catalog(str(published), path, role="billing").close()
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    billing = duckdb.connect(str(path), read_only=True)
    assert billing.sql("SELECT sum(downloads) FROM metering_hourly").fetchall() == [(35,)]
    analyst_path = default_catalog_path(str(published), "analyst")
    open_catalog(str(published), analyst_path, role="analyst").close()
    analyst = duckdb.connect(str(analyst_path), read_only=True)
    assert analyst.sql("SELECT count(*) FROM analytics_daily").fetchall()[0][0] > 0
    with pytest.raises(duckdb.CatalogException):
        analyst.sql("SELECT * FROM metering_hourly")


def test_views_bind_before_the_first_publish(tmp_path: Path) -> None:
    ensure_layout(resolve_root(str(tmp_path)))
    for role, spec in SPECS.items():
        catalog = open_catalog(str(tmp_path), role=role)
        for view in spec.views:
            assert catalog.sql(f"SELECT count(*) FROM {view}").fetchall() == [(0,)]


def test_invoice_from_the_catalog(published: Path) -> None:
    plan = parse_plan(
        'currency = "EUR"\n[metrics.download_bytes]\n'
        'included = "10"\ntiers = [ { up_to = "20", unit_price = "0.08" },'
        ' { unit_price = "0.05" } ]\n'
    )
    metered = ["download_bytes"]
    usage = period_usage(open_catalog(str(published), role="billing"), "2026-11", metered, "acct-1")
    result = invoice(usage, plan, "2026-11")
    # 34.000000005 GB: 35 GB (a started unit counts): 10 free + 10 * 0.08 = 0.80; 15 * 0.05
    assert [line.used for line in result.lines] == [Decimal(35), Decimal(35)]
    assert [line.amount for line in result.lines] == [Decimal("0.80"), Decimal("0.75")]
    assert result.totals[0].amount == Decimal("1.55")
    december = period_usage(open_catalog(str(published), role="billing"), "2026-12", metered)
    assert december.num_rows == 0
