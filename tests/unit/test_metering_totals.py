"""The month rollups that ``metering_daily`` and pricing read (aggregations.metering_totals):
after any sequence of runs with late events (corrections) across a month's end, they give
the usage the day files give and the usage the facts give, so the invoices too; a data root
published before rollups keeps its answers and gets its rollups from the next run."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from aggregations import publish_run
from aggregations.catalog import open_catalog
from aggregations.manifest import metering_files, read_manifest, write_manifest
from aggregations.metering_totals import totals_files
from aggregations.meters import default_meters
from aggregations.pricing import invoice, load_plan, period_usage
from aggregations.publish import publish
from aggregations.storage import resolve_root
from schemas.commits import committed_files
from tests.fixtures.facts import DEFAULT_PRIVACY, fact, facts_table, write_committed_facts

GRACE = timedelta(hours=1)
START = datetime(2026, 10, 29, tzinfo=UTC)
METERS = default_meters()
NAMES = [m.name for m in METERS]
TYPES = ("request", "page_view", "upload", "download", "login", "logout", "payment")


def _random_facts(rng: random.Random, count: int, days: int) -> list[dict[str, Any]]:
    return [
        fact(
            START + timedelta(hours=rng.randrange(days * 24)),
            account_id=f"acct-{rng.randrange(4)}",
            type=rng.choice(TYPES),
            subject_key=rng.choice([None, *(f"p{i}" for i in range(6))]),
            bytes=rng.randrange(0, 5000),
        )
        for _ in range(count)
    ]


def _usage_from_day_files(root: Path) -> dict[tuple[date, str], dict[str, Decimal]]:
    """Sum of every total row of the listed day files (base + corrections), per window."""
    files = [str(root / p) for p in metering_files(read_manifest(resolve_root(str(root))), "day")]
    rows = duckdb.sql(
        "SELECT date, account_id, meter, sum(value) FROM read_parquet($files)"
        " WHERE dimension IS NULL GROUP BY ALL",
        params={"files": files},
    ).fetchall()
    usage: dict[tuple[date, str], dict[str, Decimal]] = {}
    for day, account, meter, value in rows:
        usage.setdefault((day, account), dict.fromkeys(NAMES, Decimal(0)))[meter] = value
    return usage


def _usage_from_facts(root: Path) -> dict[tuple[date, str], dict[str, Decimal]]:
    """The meters' own SQL over every committed fact (what an invoice must equal)."""
    relative = committed_files(resolve_root(str(root)).fs, str(root), "facts")
    values = ", ".join(f"CAST({m.value_sql()} AS DECIMAL(38, 6)) AS {m.name}" for m in METERS)
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    table = connection.sql(
        f"SELECT CAST(occurred_hour AS DATE) AS date, account_id, {values}"
        " FROM read_parquet($files, hive_partitioning = false) GROUP BY ALL",
        params={"files": [str(root / p) for p in relative]},
    ).fetchall()
    return {(row[0], row[1]): dict(zip(NAMES, row[2:], strict=True)) for row in table}


def _metering_daily(root: Path) -> dict[tuple[date, str], dict[str, Decimal]]:
    catalog = open_catalog(str(root), role="billing")
    try:
        rows = catalog.sql(f"SELECT date, account_id, {', '.join(NAMES)} FROM metering_daily")
        return {
            (row[0], row[1]): {n: Decimal(v) for n, v in zip(NAMES, row[2:], strict=True)}
            for row in rows.fetchall()
        }
    finally:
        catalog.close()


def _invoices(root: Path, usage: dict[tuple[date, str], dict[str, Decimal]]) -> list[Any]:
    """The invoices of both months from the catalog, and from ``usage`` (same plan)."""
    plan = load_plan(None)
    catalog = open_catalog(str(root), role="billing")
    try:
        ours, theirs = [], []
        for period in ("2026-10", "2026-11"):
            published = period_usage(catalog, period, NAMES)
            ours.append(invoice(published, plan, period))
            start = date.fromisoformat(f"{period}-01")
            rows = sorted(
                (key, values) for key, values in usage.items() if key[0].month == start.month
            )
            expected = (
                pa.Table.from_pylist(
                    [{"date": d, "account_id": a, **values} for (d, a), values in rows],
                    schema=published.schema,
                )
                if rows
                else published.slice(0, 0)
            )
            theirs.append(invoice(expected, plan, period))
        return [ours, theirs]
    finally:
        catalog.close()


@pytest.mark.parametrize(("seed", "day_chunks"), [(1, False), (2, False), (3, False), (4, True)])
def test_rollups_give_the_usage_of_the_day_files_and_of_the_facts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, day_chunks: bool
) -> None:
    """``day_chunks``: a chunk of one day each (a budget of one fact), so a month's days are
    metered in several chunks and its rollup, written once per run, covers them all."""
    if day_chunks:
        monkeypatch.setattr(publish_run, "BYTES_PER_FACT", 10**12)
    rng = random.Random(seed)
    facts = _random_facts(rng, 400, days=5)
    # Four ranges, the later ones with late events for days published already: corrections.
    cuts = sorted(rng.sample(range(1, len(facts)), 3))
    parts = [facts[a:b] for a, b in zip([0, *cuts], [*cuts, len(facts)], strict=True)]
    offset = 0
    now = START + timedelta(days=2)
    for part in parts:
        write_committed_facts(tmp_path, facts_table(part), first_offset=offset)
        offset += len(part)
        publish(str(tmp_path), now, GRACE, DEFAULT_PRIVACY)
        now += timedelta(days=1)
    publish(
        str(tmp_path),
        START + timedelta(days=9),
        GRACE,
        DEFAULT_PRIVACY,
        close_through=START + timedelta(days=5),
    )
    manifest = read_manifest(resolve_root(str(tmp_path)))
    assert set(totals_files(manifest.metering)) == {"2026-10", "2026-11"}
    published = _metering_daily(tmp_path)
    assert published == _usage_from_day_files(tmp_path)
    assert published == _usage_from_facts(tmp_path)
    ours, theirs = _invoices(tmp_path, _usage_from_facts(tmp_path))
    assert ours == theirs


def test_a_root_without_rollups_keeps_its_answers_and_gets_them_from_the_next_run(
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    first = _random_facts(rng, 300, days=4)
    write_committed_facts(tmp_path, facts_table(first), first_offset=0)
    closed = START + timedelta(days=4)  # every day of the facts
    publish(str(tmp_path), START + timedelta(days=6), GRACE, DEFAULT_PRIVACY, close_through=closed)
    expected = _metering_daily(tmp_path)
    # An earlier Sieve's manifest: day files, no rollups.
    root = resolve_root(str(tmp_path))
    manifest = read_manifest(root)
    manifest.metering = {k: v for k, v in manifest.metering.items() if not k.startswith("totals/")}
    write_manifest(root, manifest)
    assert _metering_daily(tmp_path) == expected
    # A late event of November: the next run writes November's rollup from all its day
    # files; October (untouched) is still read from its day files.
    late = [fact(START + timedelta(days=3, hours=5), account_id="acct-1", type="upload", bytes=9)]
    write_committed_facts(tmp_path, facts_table(late), first_offset=len(first))
    publish(str(tmp_path), START + timedelta(days=6), GRACE, DEFAULT_PRIVACY, close_through=closed)
    assert set(totals_files(read_manifest(root).metering)) == {"2026-11"}
    published = _metering_daily(tmp_path)
    assert published != expected
    assert published == _usage_from_day_files(tmp_path) == _usage_from_facts(tmp_path)
