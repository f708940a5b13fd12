"""``sieve sql`` roles and sandbox on real published files (issue 8 roles, issue 14 item 5).

The analyst role (the default) reads the differentially private analytics and nothing else;
billing reads exact metering. Whatever the SQL: no write anywhere (the ``COPY ... TO``
attack that raised an invoice from 0.00 to 19,998.62), no ``ATTACH``, ``CREATE``,
``INSTALL``/``LOAD`` or ``SET``, no temporary directory, and no file outside the role's
published folders (facts, identifiable data, commit markers, the privacy ledger, the
catalog files, the other role's data, anything outside the data root).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from aggregations.commands import sql_command
from aggregations.dp.ledger import LEDGER_DIR
from aggregations.publish import publish
from tests.fixtures.facts import DEFAULT_PRIVACY, fact, facts_table, write_committed_facts

DAY = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    rows = [
        fact(DAY + timedelta(hours=3), type="download", bytes=10, subject_key=f"p{p}")
        for p in range(30)
    ]
    rows.append(fact(DAY + timedelta(days=1, hours=6), subject_key="x"))
    write_committed_facts(data, facts_table(rows), first_offset=0)
    publish(str(data), DAY + timedelta(days=5), timedelta(hours=1), DEFAULT_PRIVACY)
    # Something identifiable-looking next to the facts, and a file outside the root.
    (data / "identifiable" / "x").mkdir(parents=True)
    (data / "identifiable" / "x" / "a.csv").write_text("user_id\nalice\n")
    (tmp_path / "outside.csv").write_text("secret\n1\n")
    monkeypatch.setenv("SIEVE_DATA_ROOT", str(data))
    # DuckDB's default temporary directory is .tmp under the working directory.
    monkeypatch.chdir(tmp_path)
    return data


def _sql(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(sql_command, list(args))
    return result.exit_code, result.output


def _published_files(root: Path) -> set[Path]:
    return set((root / "published").rglob("*"))


def test_analyst_reads_analytics_and_not_metering(root: Path) -> None:
    code, out = _sql("SELECT count(*) AS n FROM analytics_daily", "--format", "json")
    assert code == 0 and json.loads(out)[0]["n"] > 0
    for query in (
        "SELECT * FROM metering_daily",
        "SELECT * FROM metering_hourly",
        f"SELECT * FROM read_parquet('{root}/published/metering_daily/*.parquet')",
        f"SELECT * FROM '{root}/published/analytics/../metering_daily/_schema.parquet'",
    ):
        code, out = _sql(query)
        assert code != 0, query
        assert "metering" in out or "disabled by configuration" in out, out


def test_billing_reads_metering_and_not_analytics(root: Path) -> None:
    code, out = _sql(
        "SELECT sum(downloads) AS n FROM metering_daily", "--role", "billing", "--format", "json"
    )
    assert code == 0 and json.loads(out) == [{"n": 30}]
    code, _ = _sql(
        f"SELECT * FROM read_parquet('{root}/published/analytics/**/*.parquet')",
        "--role",
        "billing",
    )
    assert code != 0


@pytest.mark.parametrize("role", ["analyst", "billing"])
def test_the_copy_attack_writes_nothing(root: Path, role: str) -> None:
    before = _published_files(root)
    for target in ("metering_daily", "analytics"):
        attack = (
            "COPY (SELECT * REPLACE (1000000000 AS requests) FROM metering_daily)"
            f" TO '{root}/published/{target}/zz.parquet'"
        )
        code, out = _sql(attack, "--role", role)
        assert code != 0 and "refused" in out and "COPY" in out
    assert _published_files(root) == before


@pytest.mark.parametrize(
    "statement",
    [
        "ATTACH '{root}/published/analytics/x.duckdb' AS x",
        "CREATE TABLE t AS SELECT 1",
        "CREATE VIEW metering_daily AS SELECT 1",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET temp_directory = '{root}/published/analytics'",
        "PRAGMA version",
        "CALL pragma_version()",
        "EXPORT DATABASE '{root}/published/analytics/export'",
        "SELECT 1; COPY (SELECT 1) TO '{root}/published/analytics/two.csv'",
    ],
)
def test_no_statement_but_a_query_runs(root: Path, statement: str) -> None:
    before = _published_files(root)
    code, out = _sql(statement.format(root=root))
    assert code != 0 and "refused" in out, out
    assert _published_files(root) == before


@pytest.mark.parametrize(
    "where",
    [
        "facts/**/*.parquet",
        "_commits/**/*.json",
        "identifiable/x/a.csv",
        f"{LEDGER_DIR}/**/*.parquet",
        "catalog-billing.duckdb",
        "../outside.csv",
    ],
)
def test_nothing_outside_the_roles_folders_is_readable(root: Path, where: str) -> None:
    for role in ("analyst", "billing"):
        code, out = _sql(f"SELECT * FROM read_text('{root}/{where}')", "--role", role)
        assert code != 0 and "disabled by configuration" in out, (where, out)
    code, out = _sql("SELECT * FROM read_text('/etc/hostname')")
    assert code != 0 and "disabled by configuration" in out


def test_no_temporary_directory(root: Path) -> None:
    code, out = _sql(
        "SELECT current_setting('temp_directory') AS t, current_setting('enable_external_access')"
        " AS e, current_setting('lock_configuration') AS l",
        "--format",
        "json",
    )
    assert code == 0 and json.loads(out) == [{"t": "", "e": False, "l": True}]
    # A query that sorts a lot still leaves nothing in the working directory.
    code, _ = _sql("SELECT * FROM range(2000000) ORDER BY random() LIMIT 1")
    assert code == 0 and not Path(".tmp").exists() and os.listdir(".") == ["data", "outside.csv"]
