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
from tests.fixtures.facts import fact, facts_table, write_committed_facts

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
    monkeypatch.delenv("SIEVE_PRICE_PLAN_FILE", raising=False)
    result = CliRunner().invoke(publish_command, [])
    assert result.exit_code == 0, result.output
    return tmp_path


def test_publish_reports_and_second_run_writes_nothing(data_root: Path) -> None:
    result = CliRunner().invoke(publish_command, ["--no-catalog"])
    assert result.exit_code == 0, result.output
    assert "nothing new to publish" in result.output
    # From the fixture's first run: one catalog file per role.
    assert (data_root / "catalog-analyst.duckdb").exists()
    assert (data_root / "catalog-billing.duckdb").exists()


def test_publish_says_what_the_analytics_spent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_committed_facts(
        tmp_path,
        facts_table(
            [fact(DAY + timedelta(hours=3), subject_key=f"p{p}") for p in range(5)]
            + [fact(DAY + timedelta(days=1, hours=6), subject_key="x")]
        ),
        first_offset=0,
    )
    monkeypatch.setenv("SIEVE_DATA_ROOT", str(tmp_path))
    result = CliRunner().invoke(publish_command, ["--no-catalog"])
    assert result.exit_code == 0, result.output
    assert "privacy: epsilon per person-day spent up to 0.9" in result.output
    assert "of 1 (delta 1e-06)" in result.output
    # Halving the budget afterwards: the late slot (closed through 3 November) is refused,
    # the command says why and exits non-zero.
    monkeypatch.setenv("SIEVE_DP_EPSILON", "0.5")
    refused = CliRunner().invoke(publish_command, ["--no-catalog", "--close-through", "2026-11-03"])
    assert refused.exit_code == 1
    assert "REFUSED 2026-11-01 batch 1: over budget" in refused.output


def test_sql_formats(data_root: Path) -> None:
    query = "SELECT date, sum(downloads) AS downloads FROM metering_daily GROUP BY date"
    billing = ["--role", "billing"]
    as_json = CliRunner().invoke(sql_command, [query, *billing, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == [{"date": "2026-11-01", "downloads": 48}]
    as_csv = CliRunner().invoke(sql_command, [query, *billing, "--format", "csv"])
    assert list(csv.reader(io.StringIO(as_csv.output))) == [
        ["date", "downloads"],
        ["2026-11-01", "48"],
    ]
    table = CliRunner().invoke(sql_command, [query, *billing])
    assert "2026-11-01" in table.output and "48" in table.output


def test_sql_is_the_analyst_role_by_default(data_root: Path) -> None:
    metering = CliRunner().invoke(sql_command, ["SELECT * FROM metering_daily"])
    assert metering.exit_code != 0 and "metering_daily" in metering.output
    analytics = CliRunner().invoke(
        sql_command,
        [
            "SELECT dimension, events_low <= events AND events <= events_high AS ok"
            " FROM analytics_daily WHERE dimension = 'total'",
            "--format",
            "json",
        ],
    )
    assert json.loads(analytics.output) == [{"dimension": "total", "ok": True}]


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
    (day,) = json.loads(people.output)
    # Noisy: the numbers are not asserted, their shape and their intervals are.
    assert day["date"] == "2026-11-01"
    assert day["active_people_low"] <= day["active_people"] <= day["active_people_high"]
    assert day["events_low"] <= day["events"] <= day["events_high"]
    assert day["active_people_high"] > day["active_people_low"]  # a real interval
    sessions = CliRunner().invoke(
        analytics_command, ["sessions", "--until", "2026-11-02", "--format", "json"]
    )
    (day,) = json.loads(sessions.output)
    assert set(day) == {
        "date",
        "logins",
        "logins_low",
        "logins_high",
        "logouts",
        "logouts_low",
        "logouts_high",
    }
    unknown = CliRunner().invoke(analytics_command, ["nope"])
    assert unknown.exit_code != 0 and "unknown report" in unknown.output
