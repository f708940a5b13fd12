"""The commands end to end through click (no Kafka): publish, sql, pricing, analytics."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from aggregations.commands import (
    analytics_command,
    pricing_command,
    publish_command,
    sql_command,
)
from aggregations.testing import fact, facts_table, write_committed_facts

DAY = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    rows = [
        fact(
            DAY + timedelta(hours=h),
            type=t,
            subject_key=f"p{p}",
            bytes=2_000_000_000,
            session_seconds=60.0 * p,
            account_id=f"acct-{p % 2}",
        )
        for p in range(24)
        for h in (3, 4)
        for t in ("login", "logout", "download")
    ]
    rows.append(fact(DAY + timedelta(days=1, hours=6), subject_key="x"))
    write_committed_facts(tmp_path, facts_table(rows), first_offset=0)
    monkeypatch.setenv("SIEVE_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("SIEVE_K_ANONYMITY", "10")
    monkeypatch.delenv("SIEVE_PRICE_PLAN_FILE", raising=False)
    result = CliRunner().invoke(publish_command, [])
    assert result.exit_code == 0, result.output
    return tmp_path


def test_publish_reports_and_second_run_writes_nothing(data_root: Path) -> None:
    result = CliRunner().invoke(publish_command, ["--no-catalog"])
    assert result.exit_code == 0, result.output
    assert "nothing new to publish" in result.output
    assert (data_root / "catalog.duckdb").exists()  # from the fixture's first run


def test_sql_formats(data_root: Path) -> None:
    query = "SELECT date, sum(downloads) AS downloads FROM metering_daily GROUP BY date"
    as_json = CliRunner().invoke(sql_command, [query, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == [{"date": "2026-11-01", "downloads": 48}]
    as_csv = CliRunner().invoke(sql_command, [query, "--format", "csv"])
    assert list(csv.reader(io.StringIO(as_csv.output))) == [
        ["date", "downloads"],
        ["2026-11-01", "48"],
    ]
    table = CliRunner().invoke(sql_command, [query])
    assert "2026-11-01" in table.output and "48" in table.output


def test_sql_cannot_read_facts(data_root: Path) -> None:
    result = CliRunner().invoke(
        sql_command, [f"SELECT * FROM read_parquet('{data_root}/facts/**/*.parquet')"]
    )
    assert result.exit_code != 0 and "disabled by configuration" in result.output


def test_pricing_with_the_packaged_plan(data_root: Path) -> None:
    # November is not closed (metering is published through Nov 1): a draft, marked so.
    refused = CliRunner().invoke(pricing_command, ["--period", "2026-11"])
    assert refused.exit_code != 0 and "not closed" in str(refused.exception)
    result = CliRunner().invoke(
        pricing_command,
        ["--period", "2026-11", "--account", "acct-0", "--format", "json", "--draft"],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert (document["status"], document["currency"]) == ("draft", "EUR")
    lines = document["lines"]
    assert {line["account_id"] for line in lines} == {"acct-0"}
    # acct-0: 12 people x 2 hours x 2 GB = 48 GB: 10 included, 38 * 0.08 = 3.04
    (download,) = [line for line in lines if line["metric"] == "download_bytes"]
    assert (download["quantity"], download["billable"], download["amount"]) == ("48", "38", "3.04")
    bad = CliRunner().invoke(pricing_command, ["--period", "2026-13"])
    assert bad.exit_code != 0 and "YYYY-MM" in bad.output


def test_analytics_reports(data_root: Path) -> None:
    listing = CliRunner().invoke(analytics_command, ["--format", "csv"])
    assert "daily-active-people" in listing.output
    people = CliRunner().invoke(
        analytics_command, ["daily-active-people", "--until", "2026-11-02", "--format", "json"]
    )
    assert json.loads(people.output) == [{"date": "2026-11-01", "active_people": 24, "events": 144}]
    sessions = CliRunner().invoke(
        analytics_command, ["sessions", "--until", "2026-11-02", "--format", "json"]
    )
    (day,) = json.loads(sessions.output)
    # 48 logouts of 0..23 minutes (each twice): median 11.5 minutes.
    assert (day["sessions"], day["median_session_seconds"]) == (48, 690.0)
    unknown = CliRunner().invoke(analytics_command, ["nope"])
    assert unknown.exit_code != 0 and "unknown report" in unknown.output
