"""The month rollups of daily metering: what ``metering_daily`` (and so pricing) reads.

The day files (``published/metering/grain=day/...``) are long rows: one per account, meter
and breakdown value, base rows and correction rows. Pivoting a month of them into one row
per account and day is most of what pricing a month cost (about 0.2 s for 1,000 accounts).
So a publish run also writes, per month it touched, the pivot itself:
``published/metering/totals/month=<YYYY-MM>/<run>.parquet``, one row per day and account
with

- a column per meter: the sum of the window's total rows (base + every correction), so the
  exact current value; null when the window has no row of that meter (a meter declared
  later, or one no longer declared);
- ``corrections``: how many runs corrected the window (any meter), and ``updated_at``.

A rollup is derived from day files only, and only from the day files the same manifest
lists: a run rewrites a month's rollup whenever it rewrites one of the month's day files
(the other days' rows come from the previous rollup, their day files being unchanged), and
it is listed in the manifest with them (key ``totals/<YYYY-MM>``), so readers see the day
files and the rollup of one run. A month with day files and no rollup (published by an
earlier Sieve) is pivoted from all its day files the next time a run touches it; until
then the catalog pivots its day files itself (:mod:`aggregations.catalog`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import date
from typing import Final

import duckdb
import pyarrow as pa

from aggregations.schemas import METERING_DIR

TOTALS: Final = "totals"


def month_of(day: date) -> str:
    return f"{day:%Y-%m}"


def totals_key(month: str) -> str:
    return f"{TOTALS}/{month}"


def totals_path(month: str, run: str) -> str:
    return f"{METERING_DIR}/{TOTALS}/month={month}/{run}.parquet"


def totals_files(metering: Mapping[str, str]) -> dict[str, str]:
    """Month -> its rollup, from the manifest's metering files."""
    prefix = f"{TOTALS}/"
    return {key[len(prefix) :]: path for key, path in metering.items() if key.startswith(prefix)}


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def pivot_sql(source: str, meters: Sequence[str], types: Mapping[str, str]) -> str:
    """One row per day and account of the day rows of ``source`` (METERING rows), a column
    per meter (module docstring), in the declared meters' ``types`` (others stay decimal).
    Rows are filtered by the caller's ``$days``."""
    columns = "".join(
        f"CAST(sum(value) FILTER (WHERE meter = {_literal(m)}) AS {types[m]}) AS {_identifier(m)}, "
        if m in types
        else f"sum(value) FILTER (WHERE meter = {_literal(m)}) AS {_identifier(m)}, "
        for m in meters
    )
    return f"""
        SELECT date, account_id, {columns}
               CAST(count(DISTINCT publish_run) FILTER (WHERE is_correction) AS BIGINT)
                   AS corrections,
               max(published_at) AS updated_at
        FROM {source}
        WHERE grain = 'day' AND dimension IS NULL AND list_contains($days, date)
        GROUP BY date, account_id
    """  # noqa: S608 - identifiers and literals quoted; source is the caller's constant


def rewrite_months(
    connection: duckdb.DuckDBPyConnection,
    days: Collection[date],
    metering: Mapping[str, str],
    types: Mapping[str, str],
    location: Callable[[str], str],
) -> dict[str, pa.Table]:
    """The new rollup of every month of ``days`` (the days whose day file a run rewrote).

    Called once per run, after all its day files are written (not once per chunk of days:
    a month spans chunks, and rewriting it per chunk rewrote it up to a dozen times). The
    rewritten days are pivoted from their new day files, read back from disk, so a run of
    any length holds none of them in memory.

    ``metering``: the manifest's files with the run's new ones; ``types``: the declared
    meters' SQL types, stored as such (a reader then casts nothing: casting the long rows'
    decimals was most of what a read cost); ``location``: a relative path -> what DuckDB
    reads."""
    if not days:
        return {}
    changed_files = [location(metering[f"day/{day.isoformat()}"]) for day in sorted(days)]
    connection.read_parquet(changed_files, hive_partitioning=False).create_view(
        "rewritten_days", replace=True
    )
    present = connection.execute(
        "SELECT DISTINCT meter FROM rewritten_days WHERE grain = 'day'"
    ).fetchall()
    columns = sorted({m for (m,) in present} | set(types))
    previous = totals_files(metering)
    months: dict[str, list[date]] = {}
    for day in sorted(days):
        months.setdefault(month_of(day), []).append(day)
    result = {}
    for month, changed in months.items():
        old = previous.get(month)
        if old is None:
            # No rollup yet: the month's day files whole (the run's new ones included).
            listed = {
                date.fromisoformat(key.split("/", 1)[1]): path
                for key, path in metering.items()
                if key.startswith(f"day/{month}-")
            }
            source = connection.read_parquet(
                [location(path) for _, path in sorted(listed.items())], hive_partitioning=False
            )
            source.create_view("month_days", replace=True)
            query = pivot_sql("month_days", columns, types)
            params: dict[str, object] = {"days": sorted(listed)}
        else:
            kept = connection.read_parquet([location(old)], hive_partitioning=False)
            kept.create_view("kept_totals", replace=True)
            query = f"""
                SELECT * FROM kept_totals WHERE NOT list_contains($days, date)
                UNION ALL BY NAME
                {pivot_sql("rewritten_days", columns, types)}
            """  # noqa: S608 - constants
            params = {"days": changed}
        result[month] = connection.sql(
            f"SELECT * FROM ({query}) ORDER BY date, account_id",  # noqa: S608 - constants
            params=params,
        ).to_arrow_table()
    return result
